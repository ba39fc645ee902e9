"""A gateway in its own process: the data plane without the control plane.

It serves ``/d/<deployment>/…`` from the routing table it follows (see ``_feed``), plus
``/healthz`` (how fresh its table is) and ``/metrics`` (admin token). Killing or restarting the
server does not interrupt it; several can run side by side behind any TCP load balancer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ..errors import send_error
from ..types import Receive, Scope, Send
from ._feed import TableFeed
from ._load import LoadReporter
from ._proxy import Gateway


def standalone_app(gateway: Gateway, feed: TableFeed, registry: CollectorRegistry,
                   reporter: LoadReporter | None = None) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The gateway's ASGI app; its lifespan runs the feed (and the load reports to the server)."""
    tasks: list[asyncio.Task[None]] = []

    async def rest(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    tasks.append(asyncio.create_task(feed.run()))
                    if reporter is not None:
                        tasks.append(asyncio.create_task(reporter.run()))
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    for task in tasks:
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
                    await gateway.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/healthz":
            # the pid tells apart the workers of a gateway sharing one port
            body = json.dumps({"status": "ok", "pid": os.getpid(), **feed.health()}).encode()
            return await _send(send, 200, body, b"application/json")
        if path == "/metrics":
            if not gateway.admin_request(scope["headers"]):
                return await send_error(send, 401, "/metrics needs a server admin token", "AuthError")
            return await _send(send, 200, generate_latest(registry), CONTENT_TYPE_LATEST.encode())
        await send_error(send, 404, "not found: this is a gateway; deployments are under /d/<name>/", "NotFound")

    return gateway.wrap(rest)


async def _send(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
