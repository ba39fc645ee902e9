"""Request and response bodies of the REST API (the answers the SDK also reads are in fermion.wire)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ErrorBody(BaseModel):
    type: str
    message: str


class ErrorOut(BaseModel):
    """Every error the API answers: a type and a message for people."""

    error: ErrorBody
    detail: Any = None


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": text} for status, text in (
        (400, "Invalid request"), (401, "Missing, invalid, expired or revoked token"),
        (403, "The token's role does not allow it"), (404, "Not found, or not visible to this token"),
        (405, "Method not allowed"), (408, "The body arrived too slowly"), (409, "Conflicts with the current state"),
        (413, "Body too large"), (422, "Invalid input"), (429, "Too many requests"),
    )
}


MIN_CPUS = 0.25  # below these, capacity would never bind: a cloud could be asked for any number of processes
MIN_MEMORY_GB = 0.25


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    cpus: float = Field(1, ge=MIN_CPUS, le=1024)
    memory_gb: float = Field(1, ge=MIN_MEMORY_GB, le=16384, description="enforced as a hard memory limit where the OS allows it")
    egress: bool = Field(False, description="network access beyond its own: on a local cloud the workload then shares "
                                            "the machine's network (its loopback too) instead of a namespace of its own")


class RateLimit(BaseModel):
    """Per caller (each token; the client address on public deployments): a token bucket."""

    model_config = ConfigDict(extra="forbid", strict=True)
    requests_per_second: float = Field(gt=0, le=1_000_000)
    burst: int = Field(0, ge=0, le=1_000_000, description="bucket size; 0 means one second's worth")


class AutoscaleSpec(BaseModel):
    """Replicas that follow the load the gateway sees (see the README's "Autoscaling" for the formula)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    min: int = Field(1, ge=0, le=1000, description="0: scale to zero when idle; the first request wakes it")
    max: int = Field(ge=1, le=1000)
    target_ongoing_requests: float = Field(2.0, gt=0, le=10_000, description="requests in flight per replica")
    upscale_delay_s: float = Field(5.0, ge=0, le=86_400)
    downscale_delay_s: float = Field(60.0, ge=0, le=86_400)
    scale_to_zero_delay_s: float = Field(300.0, ge=0, le=86_400, description="with min 0: idle this long, then 0")
    queue_limit: int = Field(100, ge=1, le=100_000, description="requests held while no replica is up; past it 429")
    queue_timeout_s: float = Field(60.0, gt=0, le=3600, description="how long a held request waits; past it 503")

    @model_validator(mode="after")
    def _bounds(self) -> AutoscaleSpec:
        if self.min > self.max:
            raise ValueError(f"autoscale min ({self.min}) is above max ({self.max})")
        return self


class CanarySpec(BaseModel):
    """Roll the new version out as a canary: a share of the traffic, judged against the stable version."""

    model_config = ConfigDict(extra="forbid", strict=True)
    weight: int = Field(ge=1, le=99, description="percent of the traffic the canary gets")
    replicas: int = Field(1, ge=1, le=100)
    window_s: float = Field(60.0, gt=0, le=86_400, description="it must hold this long to be promoted")
    min_requests: int = Field(50, ge=1, le=10_000_000, description="answers it needs before any verdict")
    max_error_rate_increase: float = Field(0.01, ge=0, le=1, description="over the stable error rate (0.01: 1 point)")
    max_p99_ratio: float = Field(1.5, ge=1, le=100, description="of the stable version's tail latency: the p99 from 500 "
                                 "answers each, below that the highest quantile 5 answers of each lie beyond")
    auto: bool = Field(True, description="promote or roll back by verdict; false: only by hand")


class SpotSpec(BaseModel):
    """Run a share of the replicas on spot capacity, with on-demand stand-ins while it is reclaimed."""

    model_config = ConfigDict(extra="forbid", strict=True)
    share: float = Field(ge=0, le=1, description="of the replicas on spot (rounded down)")
    fallback: Literal["on_demand", "none"] = Field("on_demand", description="stand-ins while spot is reclaimed")
    max_reclaim_share: float = Field(0.5, gt=0, le=1, description="at most this share of the replicas on spot "
                                                                    "on one cloud, so one reclaim takes no more")


class PlacementPolicySpec(BaseModel):
    """Re-run the optimizer now and then, and move replicas (one at a time) when it saves enough."""

    model_config = ConfigDict(extra="forbid", strict=True)
    reoptimize_every_s: float = Field(ge=1, le=86_400 * 7)
    min_saving: float = Field(0.1, ge=0, le=1, description="share of the cost per hour a move must save")


class DeploymentSpec(BaseModel):
    """What `PUT /api/v1/deployments/{name}` takes: the desired state."""

    model_config = ConfigDict(extra="forbid", strict=True)
    photon: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of an uploaded photon (64 hex digits)")
    replicas: int = Field(1, ge=0, le=1000)
    resources: Resources | None = Field(None, description="defaults to the photon's declared resources")
    clouds: list[str] = Field(default_factory=list, description="allowed clouds; empty means any")
    env: dict[str, str] = Field(default_factory=dict)
    public: bool = False
    idempotent: bool = Field(True, description="the gateway may retry a request whose replica died mid-flight")
    rate_limit: RateLimit | None = Field(None, description="requests per caller; past it the gateway answers 429")
    project: str | None = Field(None, description="default: the token's project, else the user's only one, else default")
    autoscale: AutoscaleSpec | None = Field(None, description="follow the load between min and max replicas "
                                            "(replicas is then the count to start with)")
    canary: CanarySpec | None = Field(None, description="roll a new version out as a canary (an update only)")
    spot: SpotSpec | None = Field(None, description="spot replicas, with on-demand fallback")
    placement: PlacementPolicySpec | None = Field(None, description="re-optimize the placement over time")


class ScaleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    replicas: int = Field(ge=0, le=1000)
