"""Performance and resource use per cloud: what one million requests cost on each catalog
instance type, from its price and a variant's measured throughput."""

from __future__ import annotations

from typing import Any

from ..placement import list_offerings

SCALING = ("a request is one text, served in batches of 32 at full utilization; throughput measured with {threads} "
           "thread(s), scaled linearly by the instance's vCPUs (one thread per vCPU: an upper bound, since memory "
           "bandwidth does not scale so)")


def cost_per_cloud(measured: dict[str, Any], per_cloud: int = 3) -> dict[str, Any]:
    """The cheapest ``per_cloud`` CPU instance types of every catalog that hold the model in memory,
    with their estimated throughput and cost of one million requests (on-demand, and spot where sold)."""
    threads = max(1, int(measured.get("threads") or 1))
    per_vcpu = float(measured["throughput"]) / threads
    need_gb = float(measured.get("peak_rss_mb") or 0) / 1024  # the serving process's peak, as measured
    rows: list[dict[str, Any]] = []
    by_cloud: dict[str, int] = {}
    for o in list_offerings():
        if o.accelerator or o.memory_gb < need_gb or by_cloud.get(o.cloud, 0) >= per_cloud:
            continue
        by_cloud[o.cloud] = by_cloud.get(o.cloud, 0) + 1
        rate = per_vcpu * o.vcpus  # requests per second
        rows.append({"cloud": o.cloud, "region": o.region, "instance_type": o.instance_type, "vcpus": o.vcpus,
                     "memory_gb": o.memory_gb, "price": o.price, "spot_price": o.spot_price,
                     "requests_per_second": round(rate, 1),
                     "cost_per_million": round(o.price / (rate * 3600) * 1e6, 6) if rate else None,
                     "spot_cost_per_million": (round(o.spot_price / (rate * 3600) * 1e6, 6)
                                               if rate and o.spot_price is not None else None)})
    rows.sort(key=lambda r: (r["cost_per_million"] is None, r["cost_per_million"] or 0.0))
    return {"scaling": SCALING.format(threads=threads), "rows": rows}
