"""The placement optimizer: minimise ``alpha * performance_penalty + beta * cost`` per replica,
under resources, capacity, quotas, spread and spot constraints, exactly, and say why.

Within one (cloud, on-demand|spot) group every replica meets the same constraints, so only
the best-scored offerings of a group that can hold the whole request matter; that pruning
keeps the exact ILP tiny however large the catalog. Without a minimum spread or a binding
spot cap the problem is a partition matroid and a greedy fill is optimal (the fast path).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from ._catalog import Offering


class Constraints(BaseModel):
    model_config = ConfigDict(extra="forbid")
    allowed_clouds: list[str] = Field(default_factory=list)
    denied_clouds: list[str] = Field(default_factory=list)
    allowed_regions: list[str] = Field(default_factory=list)
    min_clouds: int = Field(1, ge=1)
    max_per_cloud: int | None = Field(None, ge=1)
    spot_share: float = Field(0.0, ge=0, le=1, description="at most this share of replicas on spot")


class Objective(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(1.0, ge=0, description="weight of the performance penalty (per 100 ms of latency)")
    beta: float = Field(1.0, ge=0, description="weight of cost (per $/hour)")
    spot_penalty: float = Field(0.05, ge=0, description="added penalty of a spot replica (preemption risk)")
    hours: float = Field(1.0, gt=0, description="the run time one-time costs (moving data in) are spread over")


class PlacementRequest(BaseModel):
    """What to place: replicas of one shape."""

    model_config = ConfigDict(extra="forbid")
    cpus: float = Field(1, gt=0)
    memory_gb: float = Field(1, gt=0)
    accelerator: str | None = None
    accelerator_count: int = Field(0, ge=0)
    replicas: int = Field(1, ge=1, le=100_000)
    constraints: Constraints = Field(default_factory=Constraints)
    objective: Objective = Field(default_factory=Objective)


class CloudState(BaseModel):
    """What the optimizer knows of one cloud right now."""

    healthy: bool = True
    max_replicas: int | None = None  # free capacity or quota, in replicas of this request
    observed_latency_ms: float | None = None  # measured by the gateway; overrides catalog defaults
    failure_rate: float = 0.0  # measured share of failed requests / attempts
    one_time_cost: float = Field(0.0, ge=0)  # $ once per replica placed here, e.g. egress to bring its data
    one_time_note: str = ""  # what that cost is, for the plan's explanation


class Placement(BaseModel):
    cloud: str
    region: str
    instance_type: str
    spot: bool
    count: int
    price_per_hour: float  # per replica
    performance_penalty: float
    score: float  # per replica
    one_time_cost: float = 0.0  # per replica, spread over objective.hours in its score
    note: str = ""  # what the one-time cost pays for


class Rejection(BaseModel):
    cloud: str
    reason: str


class Plan(BaseModel):
    feasible: bool
    placements: list[Placement] = Field(default_factory=list)
    cost_per_hour: float = 0.0
    score: float = 0.0
    rejected: list[Rejection] = Field(default_factory=list)
    infeasible_reason: str | None = None
    method: str = ""
    solve_ms: float = 0.0

    def clouds(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.placements:
            out[p.cloud] = out.get(p.cloud, 0) + p.count
        return out

    def explain(self) -> str:
        """The choice in words: each placement with its price, penalty and score, then each cloud
        turned down and why."""
        if not self.feasible:
            lines = [f"infeasible: {self.infeasible_reason}"]
        else:
            lines = [f"{p.count} on {p.cloud}/{p.region} {p.instance_type}{' (spot)' if p.spot else ''}: "
                     f"${p.price_per_hour:.4f}/h each, performance penalty {p.performance_penalty:.3f}, "
                     f"score {p.score:.4f} each" + (f"; once ${p.one_time_cost:.4f} ({p.note})" if p.note else "")
                     for p in self.placements]
            lines.append(f"total ${self.cost_per_hour:.4f}/h, score {self.score:.4f} ({self.method}, "
                         f"{self.solve_ms:.1f} ms)")
        lines += [f"not {r.cloud}: {r.reason}" for r in self.rejected]
        return "\n".join(lines)


@dataclass
class _Variant:
    offering: Offering
    spot: bool
    price: float
    penalty: float
    score: float
    cap: int
    once: float = 0.0  # $ once, per replica
    note: str = ""

    @property
    def cloud(self) -> str:
        return self.offering.cloud


def _fits(o: Offering, req: PlacementRequest) -> bool:
    if o.vcpus + 1e-9 < req.cpus or o.memory_gb + 1e-9 < req.memory_gb:
        return False
    if req.accelerator:
        return (o.accelerator or "").lower() == req.accelerator.lower() and o.accelerator_count >= max(
            1, req.accelerator_count
        )
    return True


def optimize(
    request: PlacementRequest, offerings: list[Offering], clouds: dict[str, CloudState] | None = None,
    *, prune: bool = True,
) -> Plan:
    """The best placement of ``request.replicas`` replicas over ``offerings``, or why there is none.
    ``prune=False`` (for benchmarks) gives the ILP every offering instead of the best per group."""
    import scipy.optimize  # noqa: F401 - imported before the clock starts: a one-off cost per process

    start = time.perf_counter()
    plan = _solve(request, offerings, clouds or {}, prune)
    plan.solve_ms = (time.perf_counter() - start) * 1000
    return plan


def _solve(req: PlacementRequest, offerings: list[Offering], states: dict[str, CloudState], prune: bool) -> Plan:
    c, obj = req.constraints, req.objective
    rejected: dict[str, str] = {}
    n = req.replicas
    spot_cap = math.floor(c.spot_share * n + 1e-9)
    groups: dict[tuple[str, bool], list[_Variant]] = {}
    for o in offerings:
        state = states.get(o.cloud, CloudState())
        if c.allowed_clouds and o.cloud not in c.allowed_clouds or o.cloud in c.denied_clouds:
            rejected.setdefault(o.cloud, "denied by the constraints")
            continue
        if not state.healthy:
            rejected.setdefault(o.cloud, "unhealthy")
            continue
        if c.allowed_regions and o.region not in c.allowed_regions:
            continue
        if not _fits(o, req):
            continue
        latency = state.observed_latency_ms if state.observed_latency_ms is not None else o.latency_ms
        penalty = latency / 100 + 10 * state.failure_rate
        for spot, price in ((False, o.price), (True, o.spot_price)):
            if price is None or (spot and spot_cap == 0):
                continue
            pen = penalty + (obj.spot_penalty if spot else 0.0)
            hourly = price + state.one_time_cost / obj.hours  # data moved in costs as if spread over the run
            v = _Variant(o, spot, price, pen, obj.alpha * pen + obj.beta * hourly, n, state.one_time_cost,
                         state.one_time_note)
            groups.setdefault((o.cloud, spot), []).append(v)

    cloud_cap: dict[str, int] = {}
    for cloud in {k[0] for k in groups}:
        caps = [n]
        if c.max_per_cloud is not None:
            caps.append(c.max_per_cloud)
        state = states.get(cloud, CloudState())
        if state.max_replicas is not None:
            caps.append(max(0, state.max_replicas))
        cloud_cap[cloud] = min(caps)
        if cloud_cap[cloud] == 0:
            rejected[cloud] = "no room left (free capacity, quota or spread cap)"
    # keep, per group, the best variants (one suffices: every variant's cap is the whole request)
    variants = [v for key, vs in groups.items() if cloud_cap.get(key[0], 0) > 0
                for v in ([min(vs, key=lambda v: (v.score, v.offering.key))] if prune else vs)]
    usable = {v.cloud for v in variants}
    for o in offerings:
        if o.cloud not in usable and o.cloud not in rejected:
            rejected[o.cloud] = "no offering fits the request" if not any(
                _fits(x, req) for x in offerings if x.cloud == o.cloud) else "no usable offering"

    def infeasible(reason: str) -> Plan:
        return Plan(feasible=False, infeasible_reason=reason, method="checks",
                    rejected=[Rejection(cloud=k, reason=v) for k, v in sorted(rejected.items())])

    if not variants:
        shape = f"cpus={req.cpus:g}, memory_gb={req.memory_gb:g}" + (
            f", {req.accelerator_count or 1}x {req.accelerator}" if req.accelerator else "")
        return infeasible(f"no healthy, allowed offering fits {shape}")
    total_cap = sum(cloud_cap[cl] for cl in usable)
    if total_cap < n:
        detail = ", ".join(f"{cl}: {cloud_cap[cl]}" for cl in sorted(usable))
        return infeasible(f"capacity: only {total_cap} of {n} replicas fit ({detail})")
    if len(usable) < c.min_clouds:
        return infeasible(f"spread: needs at least {c.min_clouds} clouds, only {len(usable)} can take a replica "
                          f"({', '.join(sorted(usable))})")
    on_demand_cap = sum(cloud_cap[cl] for cl in {v.cloud for v in variants if not v.spot})
    if on_demand_cap + spot_cap < n:
        return infeasible(f"spot share: at most {spot_cap} spot replicas allowed and on-demand capacity is "
                          f"{on_demand_cap}, {n} needed")

    spot_binding = any(v.spot for v in variants) and spot_cap < n
    if c.min_clouds <= 1 and not spot_binding and prune:
        counts, method = _greedy(variants, cloud_cap, n), "greedy (exact without spread or spot caps)"
    else:
        counts, method = _milp(variants, cloud_cap, n, c.min_clouds, spot_cap)
        if counts is None:
            return infeasible("spread, capacity and spot share cannot all be met together")
    placements = [
        Placement(cloud=v.cloud, region=v.offering.region, instance_type=v.offering.instance_type, spot=v.spot,
                  count=k, price_per_hour=v.price, performance_penalty=round(v.penalty, 6), score=round(v.score, 6),
                  one_time_cost=round(v.once, 6), note=v.note)
        for v, k in zip(variants, counts, strict=True) if k > 0
    ]
    placements.sort(key=lambda p: (p.score, p.cloud))
    used = {p.cloud for p in placements}
    worst_p = max(placements, key=lambda p: p.score)
    worst, top_price = worst_p.score, max(p.price_per_hour for p in placements)
    for v in sorted(variants, key=lambda v: v.score):
        if v.cloud in used or v.cloud in rejected:
            continue
        rejected[v.cloud] = (
            f"scores {v.score - worst:.4f} worse than the worst chosen placement "
            f"(${v.price:.4f}/h{_once(v.once, v.note)} vs ${top_price:.4f}/h{_once(worst_p.one_time_cost, worst_p.note)})"
        )
    return Plan(
        feasible=True, placements=placements,
        cost_per_hour=round(sum(p.price_per_hour * p.count for p in placements), 6),
        score=round(sum(p.score * p.count for p in placements), 6),
        rejected=[Rejection(cloud=k, reason=v) for k, v in sorted(rejected.items())], method=method,
    )


def _once(dollars: float, note: str) -> str:
    return f" + ${dollars:.4f} once to {note}" if dollars > 0 else ""


def _greedy(variants: list[_Variant], cloud_cap: dict[str, int], n: int) -> list[int]:
    left = dict(cloud_cap)
    counts = [0] * len(variants)
    need = n
    for i in sorted(range(len(variants)), key=lambda i: (variants[i].score, variants[i].offering.key)):
        take = min(need, left[variants[i].cloud])
        counts[i] = take
        left[variants[i].cloud] -= take
        need -= take
        if need == 0:
            break
    return counts


def _milp(
    variants: list[_Variant], cloud_cap: dict[str, int], n: int, min_clouds: int, spot_cap: int
) -> tuple[list[int] | None, str]:
    import numpy as np
    from scipy.optimize import Bounds, LinearConstraint, milp

    clouds = sorted({v.cloud for v in variants})
    nv, nc = len(variants), len(clouds)
    col = {cl: nv + j for j, cl in enumerate(clouds)}  # y_c: cloud used
    cost = np.concatenate([[v.score for v in variants], np.zeros(nc)])
    rows, lo, hi = [], [], []

    def row() -> np.ndarray:
        return np.zeros(nv + nc)

    r = row()
    r[:nv] = 1
    rows.append(r), lo.append(n), hi.append(n)
    for cl in clouds:
        members = [i for i, v in enumerate(variants) if v.cloud == cl]
        r = row()
        r[members] = 1
        r[col[cl]] = -cloud_cap[cl]  # x in cloud <= cap * y
        rows.append(r), lo.append(-np.inf), hi.append(0)
        r = row()
        r[members] = 1
        r[col[cl]] = -1  # a used cloud holds at least one replica
        rows.append(r), lo.append(0), hi.append(np.inf)
    r = row()
    r[nv:] = 1
    rows.append(r), lo.append(min_clouds), hi.append(np.inf)
    spot = [i for i, v in enumerate(variants) if v.spot]
    if spot:
        r = row()
        r[spot] = 1
        rows.append(r), lo.append(0), hi.append(spot_cap)
    result = milp(
        cost, constraints=LinearConstraint(np.array(rows), lo, hi), integrality=np.ones(nv + nc),
        bounds=Bounds(np.zeros(nv + nc), np.concatenate([[cloud_cap[v.cloud] for v in variants], np.ones(nc)])),
    )
    if not result.success:
        return None, "milp"
    return [round(x) for x in result.x[:nv]], "milp (HiGHS, exact)"
