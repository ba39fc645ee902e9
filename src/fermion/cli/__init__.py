"""The ``fermion`` command."""

from __future__ import annotations

from typing import Any

from ._main import main

__all__ = ["app", "main"]


def __getattr__(name: str) -> Any:
    if name == "app":  # built on demand: a run of `fermion` builds only the command it runs
        from ._main import build_app

        return build_app()
    raise AttributeError(f"module 'fermion.cli' has no attribute {name!r}")
