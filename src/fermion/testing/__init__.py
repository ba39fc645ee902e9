"""Public helpers for tests, examples and benchmarks: serve a photon, run a server (a process, or
its app in the test's own process over clouds whose workloads start instantly), put load on a
gateway, start a local multi-node Ray cluster, a backend with instant starts for measuring the
control plane, and the dashboard in headless Chromium. Processes run for real on loopback and are
stopped by pid."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._unix import ReplicaHTTP, socket_path, unix_transport
from ._agents import AgentProc, agent_cloud, issue_agent_token, running_agent, start_agent, wait_connected
from ._browser import CHROMIUM_ARGS, chromium_path, dashboard
from ._closed_loop import LoadResult, closed_loop
from ._emulators import Emulator, azurite_available, emulators, start_azurite, start_gcs_emulator, start_s3_emulator
from ._gateways import GatewayProc, start_gateway
from ._http import web
from ._in_process import InProcessServer, in_process_server
from ._instant import InstantBackend
from ._servers import (
    Load,
    Served,
    ServerProc,
    fermion_cmd,
    kill_replicas,
    kill_workloads,
    running_server,
    serve_photon,
    start_server,
    stop,
    workload_handles,
    workload_pids,
    workload_processes,
)

# calls a replica directly by the URL its backend reported (TCP, or a local replica's Unix socket)
replica = ReplicaHTTP(timeout_s=30)

if TYPE_CHECKING:
    from ..backends import LocalRayCluster, local_ray_cluster

__all__ = [
    "AgentProc",
    "CHROMIUM_ARGS",
    "Emulator",
    "GatewayProc",
    "InProcessServer",
    "InstantBackend",
    "Load",
    "LoadResult",
    "LocalRayCluster",
    "ReplicaHTTP",
    "Served",
    "ServerProc",
    "agent_cloud",
    "azurite_available",
    "chromium_path",
    "closed_loop",
    "dashboard",
    "emulators",
    "fermion_cmd",
    "in_process_server",
    "issue_agent_token",
    "kill_replicas",
    "kill_workloads",
    "local_ray_cluster",
    "replica",
    "running_agent",
    "running_server",
    "serve_photon",
    "socket_path",
    "start_agent",
    "start_azurite",
    "start_gateway",
    "start_gcs_emulator",
    "start_s3_emulator",
    "start_server",
    "stop",
    "unix_transport",
    "wait_connected",
    "web",
    "workload_handles",
    "workload_pids",
    "workload_processes",
]


def __getattr__(name: str) -> Any:
    # Ray is an optional extra: import it only when a Ray cluster is asked for
    if name in ("local_ray_cluster", "LocalRayCluster"):
        from .. import backends

        return getattr(backends, name)
    raise AttributeError(f"module 'fermion.testing' has no attribute {name!r}")
