"""The server's workload socket: the API as its local workloads see it. A workload in a network
namespace of its own has no path to the server's port; this Unix socket, shown in its sandbox, is
its only way to the server, and it answers only the routes a workload's own token opens (its
checkpoints, output, metrics, code, datasets and model). Everything else is 404 here, whatever
the token: a workload cannot reach the user API, the gateway or another workload's routes.

Every workload shares the socket, so no one of them may take it over: each may hold a share of
its connections (told apart by the cgroup the kernel says the connecting process is in, which a
workload cannot leave; see fermion._unix.Shares); past that a connection is closed at once (a
shipper tries again later). A connection must send its request within the
head deadline of every Fermion server, counted from the moment it opens."""

from __future__ import annotations

import asyncio
from typing import ClassVar

from starlette.types import ASGIApp, Receive, Scope, Send

from .._limits import BoundedHttpToolsProtocol
from .._unix import Shares, peer_group
from ..errors import error_body

WORKLOAD_PREFIXES = ("/api/v1/attempts/self/", "/api/v1/replicas/self/")
CLIENT = ("workload-socket", 0)  # a Unix socket has no peer address: rate limits and the audit see this one


def workload_asgi(app: ASGIApp) -> ASGIApp:
    """``app`` with every route but the workloads' own answered 404."""

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":  # no lifespan: the main server runs the app's
            return
        path = scope.get("path", "")
        if not path.startswith(WORKLOAD_PREFIXES) or "/../" in path:
            body = error_body(f"{path[:200]} is not served to workloads", "NotFoundError")
            await send({"type": "http.response.start", "status": 404,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await app({**scope, "client": CLIENT}, receive, send)

    return serve


class WorkloadSocketProtocol(BoundedHttpToolsProtocol):
    """The server's protocol, with a cap on each workload's connections and on all of them."""

    shares: ClassVar[Shares] = Shares()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        self._who: str | None = peer_group(sock) if sock is not None else ""
        if not self.shares.take(self._who):
            self._who = None  # never handed to uvicorn: nothing of it to undo
            transport.abort()
            return
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._who is not None:
            super().data_received(data)

    def eof_received(self) -> None:
        if self._who is not None:
            super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._who is None:
            return
        self.shares.give_back(self._who)
        super().connection_lost(exc)
