"""Compute backends: the one protocol (start → opaque handle; status; stop; logs), the local and
Ray engines, and fault injection as a wrapper around any of them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..clouds import CloudConfig
from ._agent import (
    AgentBackend,
    AgentReplaced,
    AgentUnreachable,
    checked_status,
    status_to_wire,
    workload_from_wire,
)
from ._faults import FaultInjector
from ._local import LocalBackend
from ._protocol import Backend, Capabilities, Handle, NoSpotCapacity, ProvisionError, Status, Workload
from ._relay import WorkloadRelay
from ._sandbox import ALLOW_UNSANDBOXED_ENV, CPU_QUOTAS_ENV, Isolation, read_untrusted


def make_backend(config: CloudConfig, workloads_root: Path, *, server_home: Path,
                 isolation: Isolation | None = None, down: bool = False, hidden: Sequence[Path] = (),
                 api_socket: Path | None = None) -> FaultInjector:
    """The backend ``config`` names, wrapped with the faults it declares. ``hidden``: more folders
    of this machine no workload may see (the clouds' folder stores). ``api_socket``: the server's
    workload socket, which local workloads reach it by."""
    if config.kind == "agent":  # the cloud's own agent runs its workloads; it dials in to this server
        inner: Backend = AgentBackend(config)
    elif config.kind == "ray":
        from ._ray import RayBackend  # imports ray: only for clusters that use it

        # a node of the cluster may be this machine: its workloads must not see the server's files
        inner = RayBackend(config, hidden=[server_home, workloads_root, *hidden], isolation=isolation)
    else:
        inner = LocalBackend(config, workloads_root, server_home=server_home, isolation=isolation, hidden=hidden,
                             api_socket=api_socket)
    return FaultInjector(inner, config.inject, down=down)


def __getattr__(name: str) -> object:
    # Ray is an optional extra: its backend and the local cluster helper load only when asked for
    if name == "RayBackend":
        from ._ray import RayBackend

        return RayBackend
    if name in ("local_ray_cluster", "LocalRayCluster"):
        from . import _ray_cluster

        return getattr(_ray_cluster, name)
    if name == "fetch_model":  # what a replica runs before its photon loads: only where it serves a model
        from ._shipping import fetch_model

        return fetch_model
    raise AttributeError(f"module 'fermion.backends' has no attribute {name!r}")


__all__ = [
    "ALLOW_UNSANDBOXED_ENV",
    "AgentBackend",
    "AgentReplaced",
    "AgentUnreachable",
    "Backend",
    "CPU_QUOTAS_ENV",
    "Capabilities",
    "FaultInjector",
    "Handle",
    "Isolation",
    "LocalBackend",
    "LocalRayCluster",
    "NoSpotCapacity",
    "RayBackend",
    "ProvisionError",
    "Status",
    "Workload",
    "WorkloadRelay",
    "local_ray_cluster",
    "fetch_model",
    "make_backend",
    "checked_status",
    "read_untrusted",
    "status_to_wire",
    "workload_from_wire",
]
