"""The one protocol every compute engine implements (local processes, Ray, later Kubernetes).

Controllers, the API and the store see only what is here: a workload goes in, an opaque JSON
handle comes back and is stored as it is. No pid, folder or loopback address leaves a backend.

Every handle carries ``"id"``, the workload's id, and ``stop({"id": ...}, force=True)`` must find
and stop a workload whose start was interrupted before its handle could be written down: that is
how a crash between "intent written" and "handle written" cleans up instead of leaking.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from ..errors import FermionError
from ..placement import Offering

if TYPE_CHECKING:
    from ..clouds import CloudConfig

Handle = dict[str, Any]


class ProvisionError(FermionError):
    """The backend could not start a workload (the cloud refused, is down, or is full)."""


class NoSpotCapacity(ProvisionError):
    """The cloud has no spot capacity now: it is healthy, and on-demand starts still work."""


@dataclass
class Workload:
    """One replica of a photon, or one attempt of a job, to run somewhere."""

    id: str
    kind: Literal["replica", "job"]
    env: dict[str, str] = field(default_factory=dict)
    cpus: float = 1.0
    memory_gb: float = 1.0
    gpus: int = 0
    spot: bool = False
    egress: bool = False  # it may reach the network; without it, a backend that can cut it off does
    # replicas: the photon archive (the backend ships it where the replica runs) and the secret the
    # replica demands of every caller (the gateway sends it)
    archive: Path | None = None
    secret: str | None = None
    # jobs: the command (``python`` means the runtime's Python), how many workers, and the folders
    # it writes (checkpoints, output) and only reads (a base model)
    command: list[str] = field(default_factory=list)
    workers: int = 1
    writable: list[Path] = field(default_factory=list)
    read_only: list[Path] = field(default_factory=list)


@dataclass
class Status:
    """What a backend can tell of one workload now."""

    alive: bool
    url: str | None = None  # where a replica serves HTTP, once it listens
    exit_code: int | None = None  # once it ended, where the backend learnt it
    note: str = ""  # why it ended, where the backend can tell (e.g. "killed for using more than ...")
    lost: bool = False  # it ended with its node or cloud (or its spot capacity), not by its own doing
    ready: bool | None = None  # a backend that checks readiness itself says so; None: probe /healthz


@dataclass
class Capabilities:
    spot: bool = False
    gpus: int = 0
    regions: list[str] = field(default_factory=list)
    egress: bool = True  # a workload that asks for the network may run here


@runtime_checkable
class Backend(Protocol):
    """A named pool of compute. ``start`` returns at once; the workload becomes reachable later."""

    name: str
    kind: str

    def offerings(self) -> list[Offering]:
        """What one workload slot costs and holds here, for the optimizer."""
        ...

    def capacity(self) -> dict[str, float]:
        """The pool's total ``cpus`` and ``memory_gb`` (and ``gpus``)."""
        ...

    def capabilities(self) -> Capabilities:
        ...

    def start(self, workload: Workload) -> Handle:
        """Start ``workload``; raise ProvisionError if this pool cannot."""
        ...

    def status(self, handle: Handle) -> Status:
        """Alive? Where? How did it end? Also for workloads started by an earlier server process."""
        ...

    def stop(self, handle: Handle, *, force: bool = False) -> None:
        """Drain (finish in-flight work, then exit) or, with ``force``, kill at once. Idempotent."""
        ...

    def logs(self, handle: Handle, tail: int = 200) -> str:
        """The last ``tail`` lines of the workload's output ("" once they are gone)."""
        ...

    def list_workloads(self) -> list[Handle]:
        """A handle of every workload running here now, also those an earlier server process
        started: how a server finds the workloads no database row knows (a lost database)."""
        ...

    def close(self) -> None:
        """Let go of connections; running workloads keep running."""
        ...


class DeclaredCapacity:
    """What a cloud whose capacity and prices its clouds.yaml entry declares offers (``self.config``):
    one offering, that capacity, spot where it is priced. No GPUs yet."""

    config: CloudConfig

    def offerings(self) -> list[Offering]:
        return [self.config.offering()]

    def capacity(self) -> dict[str, float]:
        return {"cpus": self.config.capacity.cpus, "memory_gb": self.config.capacity.memory_gb, "gpus": 0}

    def capabilities(self) -> Capabilities:
        return Capabilities(spot=self.config.prices()[1] is not None, gpus=0, regions=list(self.config.regions),
                            egress=self.config.egress)
