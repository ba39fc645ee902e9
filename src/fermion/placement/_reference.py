"""The reference the optimizer is checked and benchmarked against: exhaustive search over every
assignment of replicas to (offering, spot) variants. Exact and exponential: for small cases only."""

from __future__ import annotations

import itertools

from ._catalog import Offering
from ._optimizer import CloudState, PlacementRequest


def brute_force(req: PlacementRequest, offers: list[Offering], states: dict[str, CloudState]) -> float | None:
    """The best total score over every assignment of replicas to (offering, spot) variants."""
    c, obj = req.constraints, req.objective
    spot_cap = int(c.spot_share * req.replicas + 1e-9)
    variants = []
    for o in offers:
        st = states.get(o.cloud, CloudState())
        if not st.healthy or (c.allowed_clouds and o.cloud not in c.allowed_clouds) or o.cloud in c.denied_clouds:
            continue
        if o.vcpus < req.cpus or o.memory_gb < req.memory_gb:
            continue
        lat = st.observed_latency_ms if st.observed_latency_ms is not None else o.latency_ms
        for spot, price in ((False, o.price), (True, o.spot_price)):
            if price is None or (spot and spot_cap == 0):
                continue
            pen = lat / 100 + 10 * st.failure_rate + (obj.spot_penalty if spot else 0)
            variants.append((o.cloud, spot, obj.alpha * pen + obj.beta * price))
    best = None
    for combo in itertools.combinations_with_replacement(range(len(variants)), req.replicas):
        per_cloud: dict[str, int] = {}
        spots = 0
        for i in combo:
            per_cloud[variants[i][0]] = per_cloud.get(variants[i][0], 0) + 1
            spots += variants[i][1]
        if spots > spot_cap or len(per_cloud) < c.min_clouds:
            continue
        if any(c.max_per_cloud is not None and k > c.max_per_cloud for k in per_cloud.values()):
            continue
        if any((m := states.get(cl, CloudState()).max_replicas) is not None and k > m for cl, k in per_cloud.items()):
            continue
        total = sum(variants[i][2] for i in combo)
        best = total if best is None else min(best, total)
    return best
