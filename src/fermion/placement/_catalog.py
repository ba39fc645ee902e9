"""Catalogs: tables of offerings (cloud, region, instance type, resources, prices)."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import yaml
from pydantic import BaseModel, Field

from ..errors import UserInputError


class Offering(BaseModel):
    """One (cloud, region, instance type) with its resources and prices per hour."""

    cloud: str
    region: str
    instance_type: str
    vcpus: float
    memory_gb: float
    accelerator: str | None = None
    accelerator_count: int = 0
    price: float = Field(ge=0)
    spot_price: float | None = Field(None, ge=0)
    latency_ms: float = 0.0  # declared baseline (e.g. injected network latency); measurements override

    @property
    def key(self) -> str:
        return f"{self.cloud}/{self.region}/{self.instance_type}"


class CatalogInfo(BaseModel):
    cloud: str
    taken: str
    source: str
    offerings: list[Offering]
    egress_per_gb: float = 0.0  # $ per GB leaving this cloud


def _parse(data: dict[str, Any]) -> CatalogInfo:
    cloud = data["cloud"]
    rows = [
        Offering(cloud=cloud, region=r[1], instance_type=r[0], vcpus=r[2], memory_gb=r[3], accelerator=r[4],
                 accelerator_count=r[5], price=r[6], spot_price=r[7])
        for r in data["offerings"]
    ]
    return CatalogInfo(cloud=cloud, taken=str(data["taken"]), source=data["source"].strip(), offerings=rows,
                       egress_per_gb=float(data.get("egress_per_gb", 0.0)))


@cache
def builtin_catalogs() -> dict[str, CatalogInfo]:
    """The catalogs shipped with Fermion, by cloud name."""
    out = {}
    for entry in resources.files(__package__).joinpath("catalogs").iterdir():
        if entry.name.endswith(".yaml"):
            info = _parse(yaml.safe_load(entry.read_text()))
            out[info.cloud] = info
    return out


def find_offering(catalog: str, instance_type: str, region: str | None = None) -> Offering:
    catalogs = builtin_catalogs()
    if catalog not in catalogs:
        raise UserInputError(f"no catalog named {catalog!r}", hint=f"known: {', '.join(sorted(catalogs))}")
    for o in catalogs[catalog].offerings:
        if o.instance_type == instance_type and (region is None or o.region == region):
            return o
    raise UserInputError(f"catalog {catalog!r} has no {instance_type} in {region or 'any region'}")


def list_offerings(
    *, gpu: str | None = None, cloud: str | None = None, max_price: float | None = None,
    min_cpus: float = 0, spot: bool = False,
) -> list[Offering]:
    """Offerings of every shipped catalog that match, cheapest first."""
    rows = [o for info in builtin_catalogs().values() for o in info.offerings]
    if gpu:
        rows = [o for o in rows if (o.accelerator or "").lower() == gpu.lower()]
    if cloud:
        rows = [o for o in rows if o.cloud == cloud]
    if spot:
        rows = [o for o in rows if o.spot_price is not None]
    price = (lambda o: o.spot_price) if spot else (lambda o: o.price)  # noqa: E731
    if max_price is not None:
        rows = [o for o in rows if price(o) <= max_price]
    rows = [o for o in rows if o.vcpus >= min_cpus]
    return sorted(rows, key=lambda o: (price(o), o.cloud, o.instance_type))
