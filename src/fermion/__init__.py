"""Fermion: a self-hostable AI cloud.

Write a service as a :class:`Photon`, serve it with ``fermion photon run``, call it with
:class:`Client`.
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
from .photon import BatchOptions, Photon, handler

if TYPE_CHECKING:
    from .client import Client

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
    "handler",
]


def __getattr__(name: str) -> Any:
    # the client pulls in httpx; keep `import fermion` light for photon files
    if name == "Client":
        from .client import Client

        return Client
    raise AttributeError(f"module 'fermion' has no attribute {name!r}")
