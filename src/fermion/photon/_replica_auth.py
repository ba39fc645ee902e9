"""A replica answers only its gateway: every call but /healthz must carry the replica's secret.

The secret reaches the replica as a file that is read once and deleted, so it never sits in the
process environment where /proc/<pid>/environ would show it."""

from __future__ import annotations

import hmac
from pathlib import Path

from ..errors import send_error
from ..types import ASGIApp, Receive, Scope, Send

REPLICA_AUTH_HEADER = b"x-fermion-replica-auth"
OPEN_PATHS = frozenset({"/healthz"})  # the controller probes health without the secret


def read_secret_file(path: str | Path) -> str:
    """The secret in ``path``; the file is removed once read."""
    path = Path(path)
    secret = path.read_text().strip()
    path.unlink(missing_ok=True)
    if not secret:
        raise ValueError(f"the replica secret file {path} is empty")
    return secret


def require_replica_secret(app: ASGIApp, secret: str) -> ASGIApp:
    """Wrap ``app`` so HTTP calls without ``secret`` in REPLICA_AUTH_HEADER get a 401."""
    expected = secret.encode()

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            given = next((v for k, v in scope["headers"] if k == REPLICA_AUTH_HEADER), b"")
            if not hmac.compare_digest(given, expected):
                return await send_error(send, 401, "this replica answers only its Fermion gateway", "AuthError")
        await app(scope, receive, send)

    return guarded
