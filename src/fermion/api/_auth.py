"""Bearer-token authentication for the API: the dependency every router uses."""

from __future__ import annotations

from fastapi import Request

from ._principal import Principal, authenticate

require_token = authenticate  # FastAPI dependency: the calling Principal, or a 401


def caller(request: Request) -> Principal:
    """The Principal of a request that passed ``require_token``."""
    return authenticate(request, None)
