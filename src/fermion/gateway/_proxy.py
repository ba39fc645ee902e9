"""The gateway: /d/<deployment>/<path> reverse-proxied to a READY replica, with retries.

It is a raw ASGI front placed before the API app, so gateway traffic skips FastAPI's routing
and parameter machinery entirely.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import math
import random
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .._limits import BODY_IDLE_TIMEOUT_S, GATEWAY_MAX_BODY, BodyTimeout, BodyTooLarge, read_body
from ..errors import send_error, shorten
from ..photon import REPLICA_AUTH_HEADER
from ..security import bearer_digest
from ..types import Receive, Scope, Send
from ._ratelimit import TokenBuckets
from ._routing import Endpoint, LeastOutstandingP2C, Route, RoutingTable
from ._upstream import (
    UnsafeRequestError,
    UpstreamBrokenError,
    UpstreamConnectError,
    UpstreamPool,
    UpstreamResponse,
)

HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailers",
     b"transfer-encoding", b"upgrade", b"host", b"content-length"}
)
# never forwarded to a replica: the caller's Fermion token is not the photon's business, and the
# gateway has read the whole body already, so a replica's interim 100 Continue has no use
NOT_FORWARDED = HOP_BY_HOP | {b"authorization", b"expect", b"cookie2"}
# the front server (uvicorn) sets its own; relaying the replica's would send each twice
NOT_RELAYED = HOP_BY_HOP | {b"date", b"server"}
# what a request target may hold, still percent-encoded: RFC 3986 pchar, '/', '?' and '%'
_TARGET_OK = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@/?%")
EJECT_SECONDS = 2.0
EJECT_AFTER_ERRORS = 5  # answers of BROKEN_STATUSES in a row that eject a replica for a while
BROKEN_STATUSES = frozenset({502, 503, 504})  # a replica (or what is behind it) failing, whatever the request
MAX_ATTEMPTS = 4
RETRY_PAUSE_S = 0.05
UPSTREAM_TIMEOUT_S = 300.0
BUFFER_LIMIT = 1 << 20  # answers up to this size are read whole before replying, so they can be retried
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


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
        self.rate_limited = Counter(
            "fermion_gateway_rate_limited", "Requests refused with 429 (over the caller's rate).", ["deployment"],
            registry=registry,
        )
        self.retries = Counter(
            "fermion_gateway_retries", "Requests retried on another replica.", ["deployment", "reason"],
            registry=registry,
        )
        self.queued = Gauge(
            "fermion_gateway_queued", "Requests held while no replica is up (a deployment waking).", ["deployment"],
            registry=registry,
        )
        self.queue_wait = Histogram(
            "fermion_gateway_queue_wait_seconds", "How long held requests waited for a replica.", ["deployment"],
            registry=registry, buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60),
        )
        self.held = Counter(
            "fermion_gateway_held_refused", "Held requests refused: 429 past the queue limit, 503 past its timeout.",
            ["deployment", "status"], registry=registry,
        )
        # the children of the per-request series, by label values: labels() validates and locks
        # on every call, a few µs each on the hot path
        self._children: dict[tuple[object, ...], Any] = {}

    def child(self, metric: Counter | Gauge | Histogram, *values: str) -> Any:
        key = (id(metric), *values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found


async def _reply(send: Send, status: int, message: str, kind: str, retry_after: int | None = None) -> None:
    headers = []
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    if status in (408, 413):  # the rest of the body is still on the connection: never read it as a request
        headers.append((b"connection", b"close"))
    await send_error(send, status, message, kind, headers)


def _error_message(body: bytes) -> str:
    """The message of a replica's JSON error answer (see fermion.errors.error_body)."""
    try:
        return shorten(str(json.loads(body)["error"]["message"]), 300)
    except (ValueError, KeyError, TypeError):
        return "not ready"


def _side(canary: tuple[int, int], headers: list[tuple[bytes, bytes]]) -> int:
    """Which version a request goes to during a canary: the generation it pins with
    ``X-Fermion-Version``; else, for ``X-Fermion-Session``, the same side every time (a hash
    of it against the canary's percentage); else the canary with its percentage's chance.
    Returned as a generation (the canary's) or its negation (any version but the canary)."""
    generation, percent = canary
    session = None
    for k, v in headers:
        if k == b"x-fermion-version" and v.isdigit():
            return int(v)
        if k == b"x-fermion-session":
            session = v
    draw = zlib.crc32(session) % 100 if session is not None else random.randrange(100)
    return generation if draw < percent else -generation


def _version_endpoints(endpoints: list[Endpoint], side: int) -> list[Endpoint]:
    """The endpoints of ``side`` (see ``_side``); all of them when that side has none up."""
    chosen = [e for e in endpoints if (e.generation == side if side > 0 else e.generation != -side)]
    return chosen or endpoints


class VersionTraffic:
    """Recent answers per (deployment, generation) while a canary runs: (when, seconds, error)."""

    def __init__(self, keep: int = 20_000, *, unsent: int = 0) -> None:
        self._answers: dict[tuple[str, int], collections.deque[tuple[float, float, bool]]] = {}
        self.keep = keep
        # a gateway process also keeps the answers it has not reported to its server yet (the last
        # ``unsent`` of each version): the judge runs there
        self.unsent = unsent
        self._unsent: dict[tuple[str, int], collections.deque[tuple[float, bool]]] = {}

    def add(self, deployment: str, generation: int, seconds: float, *, error: bool) -> None:
        key = (deployment, generation)
        answers = self._answers.get(key)
        if answers is None:
            answers = self._answers[key] = collections.deque(maxlen=self.keep)
        answers.append((time.monotonic(), seconds, error))
        if self.unsent:
            pending = self._unsent.get(key)
            if pending is None:
                pending = self._unsent[key] = collections.deque(maxlen=self.unsent)
            pending.append((round(seconds, 6), error))

    def take_unsent(self) -> dict[str, dict[str, list[tuple[float, bool]]]]:
        """deployment -> generation -> [(seconds, error)] since the last call (what to report)."""
        taken, self._unsent = self._unsent, {}
        out: dict[str, dict[str, list[tuple[float, bool]]]] = {}
        for (name, generation), answers in taken.items():
            out.setdefault(name, {})[str(generation)] = list(answers)
        return out

    def window(self, deployment: str, since_s: float) -> dict[int, list[tuple[float, bool]]]:
        """generation -> [(seconds, error)] of the answers of the last ``since_s`` seconds. From any
        thread: copying a deque is one step under the GIL."""
        cutoff = time.monotonic() - since_s
        return {gen: [(s, e) for at, s, e in list(answers) if at >= cutoff]
                for (name, gen), answers in list(self._answers.items()) if name == deployment}

    def forget(self, deployment: str) -> None:
        for key in [k for k in self._answers if k[0] == deployment]:
            self._answers.pop(key, None)


class Demand:
    """What the gateway knows of one deployment's load beyond its replicas' counters."""

    __slots__ = ("queued", "last_request")

    def __init__(self) -> None:
        self.queued = 0
        self.last_request = 0.0


class Gateway:
    """Routing, auth, retries and metrics for /d/<deployment>/…; everything else goes to ``app``."""

    PREFIX = "/d/"

    def __init__(self, table: RoutingTable, registry: CollectorRegistry, admin_token_hashes: dict[str, float | None],
                 max_body: int = GATEWAY_MAX_BODY, body_idle_timeout_s: float = BODY_IDLE_TIMEOUT_S,
                 traffic: VersionTraffic | None = None) -> None:
        self.table = table
        self.policy = LeastOutstandingP2C()
        self.metrics = GatewayMetrics(registry)
        self.admin_token_hashes = admin_token_hashes
        self.pool = UpstreamPool()
        self.max_body = max_body
        self.buckets = TokenBuckets()
        self.body_idle_timeout_s = body_idle_timeout_s
        self._demands: dict[str, Demand] = {}
        self.traffic = traffic or VersionTraffic()
        self._route_events: dict[str, asyncio.Event] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.on_queue: Callable[[str], None] | None = None  # told when a request starts waiting for a replica

    async def close(self) -> None:
        self.pool.close()

    def wrap(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
        async def front(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http" and scope["path"].startswith(self.PREFIX):
                await self.handle(scope, receive, send)
            else:
                await app(scope, receive, send)

        return front

    def _admin(self, digest: str) -> bool:
        """A live server admin token: it may call every deployment."""
        expires = self.admin_token_hashes.get(digest, 0.0)
        return expires is None or expires > time.time()

    def admin_request(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """Whether a request carries a live server admin token."""
        digest = self._token_digest(headers)
        return digest is not None and self._admin(digest)

    @staticmethod
    def _token_digest(headers: list[tuple[bytes, bytes]]) -> str | None:
        return bearer_digest(next((v for k, v in headers if k == b"authorization"), b"").decode("latin-1"))

    def _over_rate(self, route: Route, scope: Scope, digest: str | None) -> float:
        """Seconds the caller must wait (0: go). A caller is its token when that is a real one,
        else its address (a made-up token per request must not buy a fresh bucket)."""
        if route.rate_limit is None:
            return 0.0
        real = digest is not None and (digest == route.token_hash or self._admin(digest))
        caller = digest if real else (scope.get("client") or ("?",))[0]
        return self.buckets.take((route.deployment, caller), *route.rate_limit)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        # route on the raw, still percent-encoded path and forward it as it came: a decoded path
        # would turn %0d%0a into a line break in the upstream request line
        raw: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        if not raw.startswith(b"/d/"):  # e.g. /%64/x decodes to /d/x: route what was sent, not its decoding
            return await _reply(send, 404, "not found", "NotFound")
        name_bytes, _, rest = raw[len(self.PREFIX):].partition(b"/")
        deployment = name_bytes.decode("latin-1")
        query: bytes = scope.get("query_string", b"")
        if not _TARGET_OK.issuperset(rest) or not _TARGET_OK.issuperset(query):
            return await _reply(send, 400, "the request path or query holds a character that must be "
                                "percent-encoded", "BadRequest")
        route = self.table.get(deployment)
        if route is None:
            return await _reply(send, 404, f"no deployment named {shorten(deployment)!r}", "NotFound")
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        digest = self._token_digest(headers)
        if not route.public and (digest is None or (digest != route.token_hash and not self._admin(digest))):
            return await _reply(send, 401, f"deployment {deployment!r} needs 'Authorization: Bearer <token>'",
                                "AuthError")
        wait_s = self._over_rate(route, scope, digest)
        if wait_s:
            self.metrics.rate_limited.labels(deployment).inc()
            return await _reply(send, 429, f"deployment {deployment!r}: over {route.rate_limit[0]:g} requests per "  # type: ignore[index]
                                f"second for this caller; retry in {wait_s:.2f}s", "RateLimited",
                                retry_after=math.ceil(wait_s))
        demand = self._demand(deployment)
        demand.last_request = time.time()
        if not route.endpoints and route.hold is None:
            return await _reply(send, 503, f"deployment {deployment!r} has no ready replica", "ServiceUnavailable")
        if not route.endpoints and demand.queued >= route.hold[0]:  # type: ignore[index]
            self.metrics.held.labels(deployment, "429").inc()
            self._wake_up(deployment)  # a full queue still means someone wants it up
            return await _reply(send, 429, f"deployment {deployment!r} is starting a replica and already holds "
                                f"{route.hold[0]} requests; retry shortly", "Overloaded", retry_after=1)  # type: ignore[index]
        try:  # read before a hold: while held, the connection is watched for the caller leaving
            body = await read_body(headers, receive, self.max_body, self.body_idle_timeout_s)
        except BodyTooLarge as exc:
            return await _reply(send, 413, str(exc), "PayloadTooLarge")
        except BodyTimeout as exc:
            return await _reply(send, 408, str(exc), "RequestTimeout")
        if not (self.table.get(deployment) or route).endpoints and route.hold is not None:
            timeout_s = route.hold[1]
            held, why = await self._hold(deployment, demand, timeout_s, receive)
            if held is None:
                self.metrics.held.labels(deployment, "503").inc()
                if why == "gone":
                    return None  # the caller left: nobody to answer
                if why == "deleted":
                    return await _reply(send, 404, f"deployment {deployment!r} was deleted while the request waited",
                                        "NotFound")
                return await _reply(send, 503, f"deployment {deployment!r} has no ready replica: none came up "
                                    f"within {timeout_s:g}s", "ServiceUnavailable", retry_after=5)
        target = (b"/" + rest + (b"?" + query if query else b"")).decode("latin-1")
        forward_headers = [(k, v) for k, v in headers if k not in NOT_FORWARDED and not k.startswith(b"x-fermion-")]
        method: str = scope["method"]
        may_resend = route.idempotent or method in IDEMPOTENT_METHODS
        start = time.perf_counter()
        tried: set[str] = set()
        last_error = "no replica answered"
        side = _side(route.canary, headers) if route.canary is not None else None
        endpoint = None
        kind = ""
        for attempt in range(MAX_ATTEMPTS):
            # re-read the route: the controller may have published replacements since the last try
            current = self.table.get(deployment) or route
            endpoints = current.endpoints
            if side is not None and current.canary is not None:
                endpoints = _version_endpoints(endpoints, side)
            endpoint = self.policy.choose(endpoints, tried)
            if endpoint is None and tried:
                tried.clear()  # every replica failed once, each safely: go round again
                await asyncio.sleep(RETRY_PAUSE_S)
                endpoint = self.policy.choose(endpoints, tried)
            if endpoint is None:
                break
            tried.add(endpoint.replica_id)
            kind, last_error = await self._attempt(send, method, endpoint, deployment, target, forward_headers, body,
                                                   record=current.canary is not None)
            if kind == "done":
                self.metrics.child(self.metrics.latency, deployment).observe(time.perf_counter() - start)
                return None
            if kind == "midflight":
                if not may_resend:
                    break
                may_resend = False  # a request that may have run is re-sent at most once
            elif kind == "unsafe":
                return await _reply(send, 400, last_error, "BadRequest")
            elif kind not in ("connect", "busy"):
                break
            if attempt + 1 < MAX_ATTEMPTS:
                self.metrics.retries.labels(deployment, kind).inc()
        # every replica tried said it could not take the request now: the deployment is busy, not broken
        busy = kind == "busy"
        self.metrics.child(self.metrics.requests, deployment, "-", "503" if busy else "502").inc()
        if endpoint is not None and route.canary is not None:
            self.traffic.add(deployment, endpoint.generation, time.perf_counter() - start, error=True)
        if busy:
            return await _reply(send, 503, f"deployment {deployment!r}: {last_error}", "ServiceUnavailable",
                                retry_after=1)
        return await _reply(send, 502, f"deployment {deployment!r}: {last_error}", "BadGateway")

    async def _attempt(
        self, send: Send, method: str, endpoint: Endpoint, deployment: str, target: str,
        headers: list[tuple[bytes, bytes]], body: bytes, record: bool = False,
    ) -> tuple[str, str]:
        """Forward once. ("done", "") once the client has its answer, else (failure kind, message)."""
        host, port = endpoint.host, endpoint.port
        endpoint.in_flight += 1
        started = time.perf_counter()
        gauge = self.metrics.child(self.metrics.in_flight, deployment, endpoint.replica_id)
        gauge.inc()
        try:
            if endpoint.secret:
                headers = [*headers, (REPLICA_AUTH_HEADER, endpoint.secret.encode())]
            try:
                response, conn = await self.pool.request(host, port, method, target, headers, body, UPSTREAM_TIMEOUT_S)
            except UnsafeRequestError as exc:
                return "unsafe", str(exc)
            except UpstreamConnectError as exc:
                endpoint.outcome(failed=True)
                self._eject(endpoint)
                return "connect", f"replica {endpoint.replica_id} refused the connection ({exc})"
            except UpstreamBrokenError:
                endpoint.outcome(failed=True)
                self._eject(endpoint)
                return "midflight", f"replica {endpoint.replica_id} dropped the request"
            except TimeoutError:
                return "timeout", f"replica {endpoint.replica_id} did not answer within {UPSTREAM_TIMEOUT_S:g}s"
            try:
                if response.status == 503 and (response.header(b"content-type") or b"").startswith(b"application/json"):
                    # initializing, draining or over its batch latency target: the handler did not run
                    return "busy", f"replica {endpoint.replica_id}: {_error_message(await response.body())}"
                version = [(b"x-fermion-version", str(endpoint.generation).encode())] if record else None
                await self._relay(send, response, head_only=method == "HEAD", extra=version)
            except UpstreamBrokenError:
                self._eject(endpoint)
                return "midflight", f"replica {endpoint.replica_id} broke off its answer"
            finally:
                self.pool.release(host, port, conn)
            # the replica or its cloud failing, not the handler refusing this input (a 500 may be the
            # caller's doing): that feeds the cloud's failure rate and ejects, as failed pings do
            broken = response.status in BROKEN_STATUSES
            endpoint.outcome(failed=broken)
            if broken:
                endpoint.errors_in_a_row += 1
                if endpoint.errors_in_a_row >= EJECT_AFTER_ERRORS:
                    endpoint.errors_in_a_row = 0
                    self._eject(endpoint)
            else:
                endpoint.errors_in_a_row = 0
                endpoint.consecutive_failures = 0
            elapsed_ms = (time.perf_counter() - started) * 1000
            if record:  # a canary under way: each version's errors and latency, for its judge
                self.traffic.add(deployment, endpoint.generation, elapsed_ms / 1000, error=response.status >= 500)
            prev = endpoint.latency_ewma_ms
            endpoint.latency_ewma_ms = elapsed_ms if prev is None else 0.9 * prev + 0.1 * elapsed_ms
            self.metrics.child(self.metrics.requests, deployment, endpoint.replica_id, str(response.status)).inc()
            return "done", ""
        finally:
            endpoint.in_flight -= 1
            gauge.dec()

    @staticmethod
    async def _relay(send: Send, response: UpstreamResponse, head_only: bool = False,
                     extra: list[tuple[bytes, bytes]] | None = None) -> None:
        out_headers = [(k.lower(), v) for k, v in response.headers if k.lower() not in NOT_RELAYED]
        if extra:
            out_headers += extra
        length = response.header(b"content-length")
        if length is not None and not length.isdigit():
            raise UpstreamBrokenError("the replica sent an invalid content-length")
        if length is not None and int(length) <= BUFFER_LIMIT:
            content = await response.body()  # whole, before anything is sent: still retryable
            # a HEAD answer has no body but says how long the GET's would be
            out_headers.append((b"content-length", length if head_only else str(len(content)).encode()))
            await send({"type": "http.response.start", "status": response.status, "headers": out_headers})
            await send({"type": "http.response.body", "body": content})
            return
        if length is not None:
            out_headers.append((b"content-length", length))
        await send({"type": "http.response.start", "status": response.status, "headers": out_headers})
        while (chunk := await response.chunks.get()) is not None:
            if isinstance(chunk, Exception):
                raise RuntimeError("the replica broke off a streamed answer") from chunk  # cannot retry now
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    def _demand(self, deployment: str) -> Demand:
        demand = self._demands.get(deployment)
        if demand is None:
            demand = self._demands[deployment] = Demand()
        return demand

    def load(self, deployment: str) -> tuple[int, int, float]:
        """(requests in flight at its replicas, requests held for want of one, wall time of the last
        request): the autoscaler's signal. Read from another thread: plain ints, no lock."""
        route = self.table.get(deployment)
        demand = self._demands.get(deployment)
        in_flight = sum(e.in_flight for e in route.endpoints) if route is not None else 0
        return in_flight, demand.queued if demand else 0, demand.last_request if demand else 0.0

    def loads(self) -> dict[str, tuple[int, int, float]]:
        """Every deployment this gateway has had requests for: (in flight, held, seconds since the
        last request); what a gateway process reports to its server."""
        now = time.time()
        return {name: (*self.load(name)[:2], round(now - demand.last_request, 3))
                for name, demand in list(self._demands.items()) if self.table.get(name) is not None}

    def _wake_up(self, deployment: str) -> None:
        if self.on_queue is not None:
            self.on_queue(deployment)  # the controller wakes the deployment now, not on its next pass

    async def _hold(self, deployment: str, demand: Demand, timeout_s: float,
                    receive: Receive) -> tuple[Route | None, str]:
        """Wait until the deployment has a replica to send to: (its route, ""); else (None, why):
        "timeout" past ``timeout_s``, "deleted" once the deployment is gone, "gone" once the
        caller has left (its place in the queue is free at once)."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self.table.listen(self._route_changed)
        demand.queued += 1
        started = loop.time()
        deadline = started + timeout_s
        self.metrics.queued.labels(deployment).inc()
        left = asyncio.ensure_future(receive())  # the body is read: the next message can only be a disconnect
        try:
            self._wake_up(deployment)
            while True:
                event = self._route_events.setdefault(deployment, asyncio.Event())
                route = self.table.get(deployment)
                if route is None:
                    return None, "deleted"
                if route.endpoints:
                    self.metrics.queue_wait.labels(deployment).observe(loop.time() - started)
                    return route, ""
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None, "timeout"
                changed = asyncio.ensure_future(event.wait())
                # woken by a route change, by the caller leaving, or a second's check
                await asyncio.wait((changed, left), timeout=min(remaining, 1.0), return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
                if left.done():
                    return None, "gone"
        finally:
            left.cancel()
            demand.queued -= 1
            self.metrics.queued.labels(deployment).dec()

    def _route_changed(self, deployment: str) -> None:
        """From whichever thread changed the table: wake the requests held for ``deployment``."""
        loop = self._loop
        if loop is not None and deployment in self._route_events:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
                loop.call_soon_threadsafe(self._wake, deployment)

    def _wake(self, deployment: str) -> None:
        event = self._route_events.pop(deployment, None)
        if event is not None:
            event.set()

    def _eject(self, endpoint: Endpoint) -> None:
        endpoint.consecutive_failures += 1
        endpoint.ejected_until = time.monotonic() + EJECT_SECONDS * min(8, endpoint.consecutive_failures)
