"""Where Fermion keeps its state on this machine."""

from __future__ import annotations

import os
from pathlib import Path


def fermion_home() -> Path:
    """``$FERMION_HOME``, else ``~/.fermion``; created on first use."""
    home = Path(os.environ.get("FERMION_HOME") or Path.home() / ".fermion")
    home.mkdir(parents=True, exist_ok=True)
    return home


def workloads_root(home: Path) -> Path:
    """Where the local backend runs a server's workloads: ``$FERMION_WORKLOADS``, else a folder
    beside the home (e.g. ~/.fermion-workloads), outside it: a workload never sees the home."""
    return Path(os.environ.get("FERMION_WORKLOADS") or home.parent / f"{home.name}-workloads")


def workload_socket(home: Path) -> Path:
    """The server's workload socket: where its local workloads reach their own ``/self/`` routes
    (the only part of the API it serves) from a sandbox with no network path to the server. Its
    folder holds nothing else: sandboxes show the folder, so a restarted server's new socket
    reaches the workloads that outlived the old one."""
    return home / "workload-api" / "api.sock"


def stores_root(home: Path) -> Path:
    """Where the default ``file://`` store of each local cloud lies: ``$FERMION_STORES``, else a
    folder beside the home (e.g. ~/.fermion-stores), one subfolder per cloud."""
    return Path(os.environ.get("FERMION_STORES") or home.parent / f"{home.name}-stores")


def photon_cache_dir() -> Path:
    return fermion_home() / "photons"


def manifest_cache_dir() -> Path:
    """Manifests of photons built on this machine, by the digests of their files (see build_archive)."""
    return fermion_home() / "manifests"
