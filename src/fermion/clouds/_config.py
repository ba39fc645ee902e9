"""clouds.yaml: the named clouds this server manages."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..data import StoreConfig
from ..errors import UserInputError, shorten
from ..types import NAME_PATTERN

if TYPE_CHECKING:
    from ..placement import Offering


class Capacity(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cpus: float = Field(8, gt=0)
    memory_gb: float = Field(16, gt=0)


class Injected(BaseModel):
    """Behaviour a local cloud fakes on purpose, to exercise failover."""

    model_config = ConfigDict(extra="forbid")
    latency_ms: float = Field(0, ge=0)  # added to every request its replicas serve
    fail_start: bool = False  # every provisioning attempt fails
    spot_preempt_after_s: float | None = Field(None, gt=0)  # spot replicas and attempts are reclaimed after this long
    spot_unavailable_s: float = Field(0, ge=0)  # after a reclaim, the cloud has no spot capacity for this long


class Pricing(BaseModel):
    """What a replica-hour on this cloud costs: a catalog entry, or prices declared inline."""

    model_config = ConfigDict(extra="forbid")
    catalog: str | None = None  # e.g. "aws": take the prices of `instance_type` from that catalog
    instance_type: str | None = None
    price_per_hour: float | None = Field(None, ge=0)
    spot_price_per_hour: float | None = Field(None, ge=0)
    egress_per_gb: float | None = Field(None, ge=0)  # $ per GB leaving this cloud; default: the catalog's, else 0


class CloudConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN)
    # local: processes on the server's machine; ray: a Ray cluster the server joins; agent: served by
    # `fermion agent start` inside the cloud, which dials out to the server
    kind: Literal["local", "ray", "agent"] = "local"
    regions: list[str] = Field(default_factory=lambda: ["local"], min_length=1)
    capacity: Capacity = Field(default_factory=Capacity)
    pricing: Pricing = Field(default_factory=Pricing)
    # how fast a slot here computes, against 1.0: a pipeline step's hours divide by it when it is placed
    speed: float = Field(1.0, gt=0, le=1000)
    inject: Injected = Field(default_factory=Injected)
    # kind: ray — the cluster ("host:port", or "auto" for the one this machine is part of), and
    # the custom resource that marks this cloud's node group (several clouds can share a cluster)
    address: str | None = None
    node_resource: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:-]{1,100}$")
    # kind: ray — a file (readable by its owner only) holding the cluster's token (RAY_AUTH_MODE=token);
    # unset: $RAY_AUTH_TOKEN of the server's environment. The server alone reads it, never a workload
    auth_token_file: str | None = None
    # where what must outlive this cloud's machines is kept (datasets, checkpoints, artifacts);
    # none given: a folder of its own beside the server's home (see fermion.config.stores_root)
    store: StoreConfig | None = None
    # kind: local — replica processes kept started, with the serving stack imported, for new
    # replicas to take over: a replica starts in about a fifth of the time (each spare holds ~60 MB)
    warm_pool: int = Field(0, ge=0, le=8)
    # kind: local — "own": each workload in a network namespace of its own (where the sandbox can make
    # one), replicas served on Unix sockets; "host": workloads share this machine's network, loopback
    # included, and replicas listen on its TCP ports (where a namespace cannot be had, or is not wanted)
    network: Literal["own", "host"] = "own"
    # whether a workload may ask for the network (--egress): it then shares its machine's, loopback
    # included. Off unless the operator allows it: no tenant opts out alone
    egress: bool = False

    @model_validator(mode="after")
    def _kind_fields(self) -> CloudConfig:
        if self.kind == "ray" and not self.address:
            raise ValueError(f"cloud {self.name}: kind ray needs `address` (the Ray cluster, host:port)")
        if self.kind == "local" and (self.address or self.node_resource or self.auth_token_file):
            raise ValueError(f"cloud {self.name}: `address`, `node_resource` and `auth_token_file` are for kind ray")
        if self.kind == "ray" and self.warm_pool:
            raise ValueError(f"cloud {self.name}: `warm_pool` is for kind local (or agent)")
        if self.kind != "local" and self.network != "own":
            raise ValueError(f"cloud {self.name}: `network` is for kind local")
        if self.kind == "agent" and (self.address or self.node_resource or self.auth_token_file):
            raise ValueError(f"cloud {self.name}: `address`, `node_resource` and `auth_token_file` are for kind ray")
        return self

    def offering(self) -> Offering:
        """One replica slot here, as the optimizer sees it: capacity, declared prices and latency."""
        from ..placement import Offering

        price, spot, itype = self.prices()
        return Offering(cloud=self.name, region=self.regions[0], instance_type=itype, vcpus=self.capacity.cpus,
                        memory_gb=self.capacity.memory_gb, price=price, spot_price=spot,
                        latency_ms=self.inject.latency_ms)

    def egress_per_gb(self) -> float:
        """$ per GB that leaves this cloud (its store read by another cloud's workload)."""
        p = self.pricing
        if p.egress_per_gb is not None:
            return p.egress_per_gb
        if p.catalog:
            from ..placement import builtin_catalogs

            info = builtin_catalogs().get(p.catalog)
            return info.egress_per_gb if info else 0.0
        return 0.0

    def prices(self) -> tuple[float, float | None, str]:
        """(on-demand $/h, spot $/h or None, instance type) per replica on this cloud."""
        p = self.pricing
        if p.catalog and p.instance_type:
            from ..placement import find_offering

            o = find_offering(p.catalog, p.instance_type)
            return (p.price_per_hour if p.price_per_hour is not None else o.price,
                    p.spot_price_per_hour if p.spot_price_per_hour is not None else o.spot_price, o.instance_type)
        return p.price_per_hour or 0.0, p.spot_price_per_hour, p.instance_type or "local"


class CloudsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    clouds: list[CloudConfig]


DEFAULT_CLOUDS = [CloudConfig(name="local")]


def _explain(exc: ValidationError, data: object) -> str:
    """``exc``'s problems with the clouds file ``data`` in a line: each names its cloud (by name, else
    by position) and field; an unknown kind names the kinds there are."""
    listed = data.get("clouds") if isinstance(data, dict) else None
    problems = []
    for err in exc.errors():
        loc = list(err["loc"])
        where = ""
        if len(loc) >= 2 and loc[0] == "clouds" and isinstance(loc[1], int):
            entry = listed[loc[1]] if isinstance(listed, list) and loc[1] < len(listed) else None
            name = entry.get("name") if isinstance(entry, dict) else None
            where = f"cloud {shorten(name, 60)}" if isinstance(name, str) and name else f"cloud #{loc[1] + 1}"
            loc = loc[2:]
        field = ".".join(str(part) for part in loc)
        if field == "kind" and err["type"] == "literal_error":
            kinds = ", ".join(get_args(CloudConfig.model_fields["kind"].annotation))
            text = f"unknown kind {shorten(repr(err['input']), 60)} (allowed kinds: {kinds})"
        elif err["type"] == "extra_forbidden":
            text = f"unknown field {field!r}"
        elif not field and not where:
            text = "it must be a mapping with a list of clouds (clouds: [{name: ...}, ...])"
        else:
            # a validator's own message already says what is wrong, in our words (and names the cloud)
            text = err["msg"].removeprefix("Value error, ")
            text = f"{field}: {text}" if field else text
        problems.append(f"{where}: {text}" if where and not text.startswith(f"{where}:") else text)
    return "; ".join(problems)


def load_clouds(path: str | Path | None) -> list[CloudConfig]:
    """Clouds from a YAML file, or the default single local cloud."""
    if path is None:
        return list(DEFAULT_CLOUDS)
    try:
        data = yaml.safe_load(Path(path).read_text())
        clouds = CloudsFile.model_validate(data).clouds
    except FileNotFoundError:
        raise UserInputError(f"clouds file {path} does not exist") from None
    except OSError as exc:  # a folder, or not readable
        raise UserInputError(f"cannot read clouds file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise UserInputError(f"invalid clouds file {path}: {exc}") from exc
    except ValidationError as exc:  # pydantic's dump is many lines of its own terms: one line per problem, ours
        raise UserInputError(f"invalid clouds file {path}: {_explain(exc, data)}") from None
    for c in clouds:
        try:
            c.prices()
        except UserInputError as exc:
            raise UserInputError(f"invalid clouds file {path}: cloud {c.name}: {exc}") from exc
    names = [c.name for c in clouds]
    if len(set(names)) != len(names):
        raise UserInputError(f"clouds file {path} names a cloud twice: {names}")
    return clouds
