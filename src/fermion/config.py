"""Where Fermion keeps its state on this machine."""

from __future__ import annotations

import os
from pathlib import Path


def fermion_home() -> Path:
    """``$FERMION_HOME``, else ``~/.fermion``; created on first use."""
    home = Path(os.environ.get("FERMION_HOME") or Path.home() / ".fermion")
    home.mkdir(parents=True, exist_ok=True)
    return home


def photon_cache_dir() -> Path:
    return fermion_home() / "photons"
