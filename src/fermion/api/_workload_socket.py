"""The server's workload socket: the API as its local workloads see it. A workload in a network
namespace of its own has no path to the server's port; this Unix socket, handed into its sandbox,
is its only way to the server, and it answers only the routes a workload's own token opens (its
checkpoints, output, metrics, code, datasets and model). Everything else is 404 here, whatever
the token: a workload cannot reach the user API, the gateway or another workload's routes."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import error_body

WORKLOAD_PREFIXES = ("/api/v1/attempts/self/", "/api/v1/replicas/self/")
CLIENT = ("workload-socket", 0)  # a Unix socket has no peer address: rate limits and the audit see this one


def workload_asgi(app: ASGIApp) -> ASGIApp:
    """``app`` with every route but the workloads' own answered 404."""

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # no websockets, no lifespan: the main server runs the app's
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
