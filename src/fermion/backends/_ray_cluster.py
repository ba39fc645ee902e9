"""A real multi-node Ray cluster on this machine, for tests, the demo and benchmarks.

Every node (a head with its GCS, and one raylet per node group) is a separate set of processes bound
to 127.0.0.1; each worker node carries the custom resource ``fermion-node-<name>``, which a
``kind: ray`` cloud names as its ``node_resource``. Killing a node kills its raylet and, with it,
every Ray worker (and so every Fermion workload) on it, as losing a machine would.

Every cluster requires Ray's token authentication, with a fresh random token of its own: its nodes
and this process get it through the environment (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN) while the
cluster runs, and so does every process started from here meanwhile (a Fermion server joins with
it); ``token_file`` holds it too, for a clouds.yaml's ``auth_token_file``. A workload gets neither:
its environment is a clean one and its sandbox shows no /tmp folder of the host's.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.cluster_utils import Cluster

from ._ray import AUTH_MODE_ENV, AUTH_TOKEN_ENV, AUTH_TOKEN_PATH_ENV, set_ray_auth

NODE_RESOURCE_PREFIX = "fermion-node-"
NODE_RESOURCE_UNITS = 1000  # a workload asks for 0.001 of its group's marker: never the limit
OBJECT_STORE_BYTES = 80 * 1024 * 1024  # just over Ray's 75 MiB minimum: several nodes fit a small machine
# Notice a dead node in about 2 s rather than Ray's default ~30 s, so tests that kill one stay short.
FAST_HEALTH_CHECKS = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 500,
    "health_check_failure_threshold": 4,
}


def node_resource(name: str) -> str:
    """The custom resource that marks the worker node of node group ``name``."""
    return f"{NODE_RESOURCE_PREFIX}{name}"


@dataclass
class LocalRayCluster:
    """A running local cluster: where to connect, and its worker nodes by group name."""

    cluster: Cluster
    temp_dir: str
    token: str = field(repr=False)  # what every node and client of the cluster must present
    nodes: dict[str, Any] = field(default_factory=dict)  # name -> ray._private.node.Node
    started_in_s: float = 0.0

    @property
    def token_file(self) -> Path:
        """A file (mode 0600, in the cluster's private folder) that holds the token: what a
        ``kind: ray`` cloud's ``auth_token_file`` names."""
        return Path(self.temp_dir) / "auth_token"

    @property
    def auth_env(self) -> dict[str, str]:
        """The environment a process that joins the cluster needs (a server or driver, never a workload)."""
        return {AUTH_MODE_ENV: "token", AUTH_TOKEN_ENV: self.token}

    @property
    def address(self) -> str:
        """The GCS address (``127.0.0.1:port``), what a ``kind: ray`` cloud's ``address`` names."""
        return str(self.cluster.address)

    def node_id(self, name: str) -> str:
        """The Ray node id (hex) of node group ``name``'s node."""
        return str(self.nodes[name].node_id)

    def kill_node(self, name: str) -> None:
        """Kill node ``name`` at once (raylet, its workers and their workloads), as a lost machine."""
        node = self.nodes.pop(name)
        self.cluster.remove_node(node, allow_graceful=False)

    def kill_actor(self, name: str, namespace: str = "fermion") -> None:
        """Kill the named actor at once, as a crash would. From a short-lived process of its own:
        the caller never becomes a Ray driver (nor gets Ray's signal handlers)."""
        script = ("import sys, ray\n"
                  "from fermion.backends._ray import _loopback_kept\n"
                  "with _loopback_kept(sys.argv[1]):\n"
                  "    ray.init(address=sys.argv[1], namespace=sys.argv[3], log_to_driver=False)\n"
                  "ray.kill(ray.get_actor(sys.argv[2], namespace=sys.argv[3]), no_restart=True)\n")
        subprocess.run([sys.executable, "-c", script, self.address, name, namespace], check=True,
                       capture_output=True, timeout=60,
                       env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **self.auth_env})

    def shutdown(self) -> None:
        """Stop every node and remove the cluster's files. Idempotent."""
        try:
            self.cluster.shutdown()
        finally:
            self.nodes.clear()
            shutil.rmtree(self.temp_dir, ignore_errors=True)


_running: list[LocalRayCluster] = []  # a process's Ray settings name one cluster's token at a time


@contextmanager
def local_ray_cluster(node_groups: dict[str, float], *, head_cpus: float = 0,
                      node_memory_gb: float = 4.0, fast_failure_detection: bool = True) -> Iterator[LocalRayCluster]:
    """Start a head node (``head_cpus`` CPUs: 0 keeps workloads off it) and one worker node per
    entry of ``node_groups`` (name -> CPUs, each with ``node_memory_gb`` of schedulable memory);
    yield the cluster, then shut every node down.

    The cluster requires its token (see the module's docstring), set in this process's
    environment until the cluster is shut down. The calling process is not left connected as a
    Ray driver, so that another process (a Fermion server) can connect to ``.address`` with its
    own ``ray.init``.
    """
    if ray.is_initialized():
        raise RuntimeError("local_ray_cluster: this process is already connected to a Ray cluster")
    if _running:
        raise RuntimeError("local_ray_cluster: this process runs a local Ray cluster already")
    # Ray reports usage to a server unless told not to: nothing here may reach out.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # A short private folder: Ray's unix sockets live under it (paths are limited to 107 bytes), and
    # a private one never mixes with another cluster's session files on the same machine. Under
    # /tmp, which no sandboxed workload sees of the host's: the token file is kept here too.
    temp_dir = tempfile.mkdtemp(prefix="fermion-ray-", dir="/tmp")
    # Ray also records the cluster's address in its default folder, whatever temp_dir says, and
    # fails if that folder is missing (a fresh /tmp, or one cleaned since)
    from ray._private.utils import get_ray_address_file

    Path(get_ray_address_file(None)).parent.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    local = LocalRayCluster(cluster=Cluster(shutdown_at_exit=True), temp_dir=temp_dir, token=secrets.token_hex(32))
    # the nodes (started with this environment) require the token, and this process's own Ray
    # clients (the head's setup, a backend joined in-process) present it
    saved = set_ray_auth({**local.auth_env, AUTH_TOKEN_PATH_ENV: None})
    _running.append(local)
    try:
        fd = os.open(local.token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(local.token)
        local.cluster.add_node(  # the first node added is the head: the GCS and a raylet
            num_cpus=head_cpus,
            memory=int(node_memory_gb * 2**30),  # else Ray gives each node most of this machine's memory
            node_ip_address="127.0.0.1",
            object_store_memory=OBJECT_STORE_BYTES,
            include_dashboard=False,
            temp_dir=temp_dir,
            # a copy: Ray writes its spilling folder, of this cluster, into the dict it is given
            _system_config=dict(FAST_HEALTH_CHECKS) if fast_failure_detection else {},
        )
        for name, cpus in node_groups.items():
            local.nodes[name] = local.cluster.add_node(
                num_cpus=cpus,
                memory=int(node_memory_gb * 2**30),
                resources={node_resource(name): NODE_RESOURCE_UNITS},
                node_ip_address="127.0.0.1",
                object_store_memory=OBJECT_STORE_BYTES,
                temp_dir=temp_dir,
            )
        local.cluster.wait_for_nodes(timeout=60)
        local.started_in_s = time.monotonic() - began
        yield local
    finally:
        try:
            if ray.is_initialized():  # a backend in this process connected: let go before the GCS goes
                ray.shutdown()
            local.shutdown()
        finally:
            set_ray_auth(saved)
            _running.remove(local)
