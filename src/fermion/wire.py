"""The shapes of the API's answers that both sides know: the server declares its responses with
them, and the SDK's typed results extend them (so a field is named, typed and documented once)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ReplicaOut(BaseModel):
    id: str
    deployment: str
    generation: int
    cloud: str | None
    state: str
    reason: str
    state_since: float
    spot: bool = False


class DeploymentOut(BaseModel):
    name: str
    project: str
    photon: str
    photon_name: str
    generation: int
    replicas: int
    ready: int
    resources: dict[str, Any]
    clouds: list[str]
    public: bool
    status: str
    status_reason: str
    last_error: str
    endpoint: str
    autoscale: dict[str, Any] | None = None
    canary: dict[str, Any] | None = None  # generation, weight, replicas, ready, and its judge's settings
    spot: dict[str, Any] | None = None
    placement: dict[str, Any] | None = None
    target: dict[str, int] | None = None  # replicas per cloud of a move under way
    token: str | None = None  # only in the answer that created it
    replica_list: list[ReplicaOut] = Field(default_factory=list)


class CloudOut(BaseModel):
    name: str
    kind: str
    regions: list[str]
    health: str
    health_reason: str
    capacity: dict[str, float]
    free: dict[str, float]
    replicas: int
    inject: dict[str, Any]
    isolation: str = ""  # how its workloads are confined (or that they are refused)


class EventOut(BaseModel):
    id: int
    at: float
    kind: str
    object_id: str
    old: str
    new: str
    reason: str
