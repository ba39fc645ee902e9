"""Bearer-token authentication for the API."""

from __future__ import annotations

from fastapi import Request

from ..errors import AuthError
from ..security import hash_token


def require_token(request: Request) -> None:
    """FastAPI dependency: a valid API token or a 401."""
    auth = request.headers.get("authorization", "")
    if not auth.lower().startswith("bearer "):
        raise AuthError("missing bearer token", hint="send 'Authorization: Bearer <token>' (see `fermion login`)")
    if hash_token(auth[7:].strip()) not in request.app.state.platform.token_hashes:
        raise AuthError("invalid token")
