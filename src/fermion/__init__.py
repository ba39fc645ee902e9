"""Fermion: a self-hostable AI cloud.

Write a service as a :class:`Photon`, serve it with ``fermion photon run``, call it with
:class:`Client`; drive the platform (deploy, migrate, jobs, fine-tunes, models, datasets) from
Python with :func:`connect`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from .errors import (
    FermionError,
    HandlerTimeout,
    RemoteError,
    ServiceUnavailable,
    TransportError,
    UserInputError,
    ValidationFailed,
)
if TYPE_CHECKING:
    from .client import Client
    from .photon import BatchOptions, Photon, handler
    from .sdk import connect

__all__ = [
    "BatchOptions",
    "Client",
    "FermionError",
    "HandlerTimeout",
    "Photon",
    "RemoteError",
    "ServiceUnavailable",
    "TransportError",
    "UserInputError",
    "ValidationFailed",
    "__version__",
    "connect",
    "handler",
]


def __getattr__(name: str) -> Any:
    # loaded on first use: the client pulls in httpx, the photon SDK pydantic (a fifth of a second),
    # and neither is needed by most `fermion` commands
    if name == "Client":
        from .client import Client

        return Client
    if name == "connect":
        from .sdk import connect

        return connect
    if name in ("BatchOptions", "Photon", "handler"):
        from . import photon

        return getattr(photon, name)
    raise AttributeError(f"module 'fermion' has no attribute {name!r}")
