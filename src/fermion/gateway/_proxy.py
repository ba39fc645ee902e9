"""The gateway: /d/<deployment>/<path> reverse-proxied to a READY replica, with retries."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.background import BackgroundTask

from ..photon._routes import error_response
from ..security import hash_token
from ._routing import Endpoint, LeastOutstandingP2C, RoutingTable

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
     "transfer-encoding", "upgrade", "host", "content-length"}
)
EJECT_SECONDS = 2.0
MAX_ATTEMPTS = 4
RETRY_PAUSE_S = 0.05


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "fermion_gateway_requests", "Requests through the gateway.",
            ["deployment", "replica", "status"], registry=registry,
        )
        self.latency = Histogram(
            "fermion_gateway_latency_seconds", "Gateway request latency.", ["deployment"], registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.in_flight = Gauge(
            "fermion_gateway_in_flight", "Requests in flight per replica.", ["deployment", "replica"],
            registry=registry,
        )
        self.retries = Counter(
            "fermion_gateway_retries", "Requests retried on another replica.", ["deployment", "reason"],
            registry=registry,
        )


class Gateway:
    def __init__(self, table: RoutingTable, registry: CollectorRegistry, admin_token_hashes: set[str]) -> None:
        self.table = table
        self.policy = LeastOutstandingP2C()
        self.metrics = GatewayMetrics(registry)
        self.admin_token_hashes = admin_token_hashes
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(300, connect=2),
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200),
        )

    async def close(self) -> None:
        await self.client.aclose()

    def _authorized(self, request: Request, token_hash: str | None) -> bool:
        auth = request.headers.get("authorization", "")
        if not auth.lower().startswith("bearer "):
            return False
        digest = hash_token(auth[7:].strip())
        return digest == token_hash or digest in self.admin_token_hashes

    async def handle(self, request: Request, deployment: str, path: str) -> Response:
        route = self.table.get(deployment)
        if route is None:
            return error_response(404, f"no deployment named {deployment!r}", "NotFound")
        if not route.public and not self._authorized(request, route.token_hash):
            return error_response(
                401, f"deployment {deployment!r} needs 'Authorization: Bearer <token>'", "AuthError"
            )
        if not route.endpoints:
            return error_response(503, f"deployment {deployment!r} has no ready replica", "ServiceUnavailable")
        body = await request.body()
        url_path = "/" + path + (f"?{request.url.query}" if request.url.query else "")
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        retry_midflight = route.idempotent or request.method in ("GET", "HEAD", "OPTIONS")
        tried: set[str] = set()
        start = time.perf_counter()
        last_error = "no replica answered"
        for attempt in range(MAX_ATTEMPTS):
            # re-read the route: the controller may have published replacements since the last try
            current = self.table.get(deployment) or route
            endpoint = self.policy.choose(current.endpoints, tried)
            if endpoint is None and tried:
                tried.clear()  # every replica failed once: the failures were all safe to retry, go round again
                await asyncio.sleep(RETRY_PAUSE_S)
                endpoint = self.policy.choose(current.endpoints, tried)
            if endpoint is None:
                break
            tried.add(endpoint.replica_id)
            outcome = await self._forward(request.method, endpoint, deployment, url_path, headers, body)
            if isinstance(outcome, Response):
                self.metrics.latency.labels(deployment).observe(time.perf_counter() - start)
                return outcome
            kind, last_error = outcome
            retryable = kind == "connect" or kind == "unavailable" or (kind == "midflight" and retry_midflight)
            if not retryable:
                break
            if kind == "midflight":
                retry_midflight = False  # a request that may have run is re-sent at most once
            if attempt + 1 < MAX_ATTEMPTS:
                self.metrics.retries.labels(deployment, kind).inc()
        self.metrics.requests.labels(deployment, "-", "502").inc()
        return error_response(502, f"deployment {deployment!r}: {last_error}", "BadGateway")

    async def _forward(
        self, method: str, endpoint: Endpoint, deployment: str, url_path: str,
        headers: list[tuple[str, str]], body: bytes,
    ) -> Response | tuple[str, str]:
        """A response to pass on, or (failure kind, message) to maybe retry elsewhere."""
        endpoint.in_flight += 1
        gauge = self.metrics.in_flight.labels(deployment, endpoint.replica_id)
        gauge.inc()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                endpoint.in_flight -= 1
                gauge.dec()

        try:
            request = self.client.build_request(method, endpoint.url + url_path, headers=headers, content=body)
            upstream = await self.client.send(request, stream=True)
        except httpx.ConnectError as exc:
            release()
            self._eject(endpoint)
            return "connect", f"replica {endpoint.replica_id} refused the connection: {exc}"
        except (httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError) as exc:
            release()
            self._eject(endpoint)
            return "midflight", f"replica {endpoint.replica_id} dropped the request: {type(exc).__name__}"
        except httpx.TimeoutException:
            release()
            return "timeout", f"replica {endpoint.replica_id} did not answer in time"
        if upstream.status_code == 503 and upstream.headers.get("content-type", "").startswith("application/json"):
            # an initializing or draining replica did not run the handler: safe to send elsewhere
            await upstream.aread()
            await upstream.aclose()
            release()
            return "unavailable", f"replica {endpoint.replica_id} is not ready"
        endpoint.consecutive_failures = 0
        self.metrics.requests.labels(deployment, endpoint.replica_id, str(upstream.status_code)).inc()
        out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}

        async def close() -> None:
            await upstream.aclose()
            release()

        if "content-length" in upstream.headers:
            try:
                content = await upstream.aread()
            except httpx.HTTPError as exc:
                await close()
                self._eject(endpoint)
                return "midflight", f"replica {endpoint.replica_id} broke off its answer: {type(exc).__name__}"
            await close()
            return Response(content, status_code=upstream.status_code, headers=out_headers)
        return StreamingResponse(
            _relay(upstream), status_code=upstream.status_code, headers=out_headers, background=BackgroundTask(close)
        )

    def _eject(self, endpoint: Endpoint) -> None:
        endpoint.consecutive_failures += 1
        endpoint.ejected_until = time.monotonic() + EJECT_SECONDS * min(8, endpoint.consecutive_failures)


async def _relay(upstream: httpx.Response) -> AsyncIterator[bytes]:
    async for chunk in upstream.aiter_raw():
        yield chunk
