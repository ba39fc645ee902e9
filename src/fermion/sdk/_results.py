"""What the SDK returns: the server's answers as typed (pydantic) objects.

Each keeps fields a newer server adds (``extra="allow"``), so an older SDK still reads it;
``to_json()`` gives the answer as the server sent it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..wire import CloudOut, DeploymentOut, EventOut, ReplicaOut


class Result(BaseModel):
    # built on first use: a CLI command reads one or two kinds of answer, not all of them
    model_config = ConfigDict(extra="allow", defer_build=True)

    def to_json(self) -> dict[str, Any]:
        """The answer as JSON types, as the server sent it (what ``--json`` prints)."""
        return self.model_dump(mode="json", exclude_unset=True)


class Replica(Result, ReplicaOut):
    pass


class Deployment(Result, DeploymentOut):
    replica_list: list[Replica] = Field(default_factory=list)

    @property
    def placed(self) -> dict[str, int]:
        """Replicas of the running generation that are READY, per cloud."""
        out: dict[str, int] = {}
        for r in self.replica_list:
            if r.cloud and r.state == "READY" and r.generation == self.generation:
                out[r.cloud] = out.get(r.cloud, 0) + 1
        return out

    @property
    def settled(self) -> bool:
        """Done changing: READY (with its canary's replicas, if it has one), IDLE or FAILED."""
        if self.status == "FAILED":
            return True
        return self.status in ("READY", "IDLE") and (not self.canary or self.canary["ready"] >= self.canary["replicas"])


class Cloud(Result, CloudOut):
    pass


class Event(Result, EventOut):
    pass


class Attempt(Result):
    number: int
    id: str
    cloud: str | None
    spot: bool = False
    state: str
    reason: str
    exit_code: int | None = None
    started_at: float | None = None
    ended_at: float | None = None


class Job(Result):
    name: str
    kind: str
    status: str
    reason: str
    command: list[str] | None = Field(default_factory=list)
    resources: dict[str, Any] = Field(default_factory=dict)
    workers: int = 1
    restarts: int = 0
    max_restarts: int = 0
    result: dict[str, Any] | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    spot: bool = False
    project: str = "default"
    attempts: list[Attempt] = Field(default_factory=list)
    metrics: list[dict[str, Any]] = Field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.status in ("SUCCEEDED", "FAILED", "CANCELLED")


class ModelVersion(Result):
    name: str
    version: int
    project: str
    stage: str
    artifact_uri: str
    metrics: dict[str, Any] = Field(default_factory=dict)
    lineage: dict[str, Any] = Field(default_factory=dict)
    created_at: float = 0.0
    variants: list[dict[str, Any]] = Field(default_factory=list)

    @property
    def ref(self) -> str:
        """NAME:VERSION, as every command takes it."""
        return f"{self.name}:{self.version}"


class DatasetSummary(Result):
    """A row of the dataset listing: the latest version's figures."""

    name: str
    project: str
    cloud: str
    encrypted: bool
    versions: int
    files: int
    size: int
    latest: str | None = None


class DatasetVersion(Result):
    number: int
    digest: str
    parent: str | None = None
    files: int | list[dict[str, Any]] = Field(description="a count, or (for one version) its files and their chunks")
    size: int
    message: str = ""
    origin: dict[str, Any] = Field(default_factory=dict, description="who made it, how, on which cloud")
    created_at: float = 0.0


class Dataset(Result):
    name: str
    project: str
    cloud: str
    encrypted: bool
    description: str = ""
    versions: list[DatasetVersion] = Field(default_factory=list)
    stores: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per cloud: the versions its store holds")


class Pushed(DatasetVersion):
    """A push: the version it made (or found), where, and what had to be sent."""

    new: bool
    cloud: str
    sent_bytes: int = 0
    sent_chunks: int = 0
    skipped_bytes: int = 0


class Pulled(Result):
    number: int
    digest: str
    files: int
    fetched: int
    kept: int


class Code(Result):
    """Code sent for jobs: its digest names it in a job's spec."""

    digest: str
    files: int
    size: int
    stores: list[str] = Field(default_factory=list)
    sent_bytes: int = 0
    left_out: list[str] = Field(default_factory=list, description="files kept back as secrets")
