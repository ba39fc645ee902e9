"""The ``fermion`` command."""

from ._main import app, main

__all__ = ["app", "main"]
