"""The compute backend protocol: what the controllers need from any cloud."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..errors import FermionError


class ProvisionError(FermionError):
    """The cloud could not start a replica."""


@dataclass
class ReplicaSpec:
    replica_id: str
    archive: Path
    env: dict[str, str] = field(default_factory=dict)
    secret: str | None = None  # the replica refuses calls without it (the gateway sends it)
    memory_gb: float | None = None  # a hard limit where the OS allows one
    mounts: list[Path] = field(default_factory=list)  # read-only folders it may read (e.g. a model)


@dataclass
class ReplicaHandle:
    """Where a running replica is; enough to find it again after a server restart."""

    pid: int
    workdir: Path
    port: int | None = None

    @property
    def url(self) -> str | None:
        return f"http://127.0.0.1:{self.port}" if self.port else None


class CloudBackend(Protocol):
    name: str

    def provision(self, spec: ReplicaSpec) -> ReplicaHandle:
        """Start a replica; return at once (it becomes reachable later)."""
        ...

    def poll(self, handle: ReplicaHandle) -> tuple[bool, int | None]:
        """(alive, port once known). Finds replicas started by an earlier server too."""
        ...

    def stop(self, handle: ReplicaHandle, *, force: bool = False) -> None:
        """SIGTERM (drain) or, with force, SIGKILL."""
        ...

    def logs(self, handle: ReplicaHandle, tail: int = 200) -> str:
        ...
