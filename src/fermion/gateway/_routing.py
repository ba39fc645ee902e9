"""The routing table: READY replicas per deployment, published by the controller, read by the gateway."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .._unix import socket_path


ERROR_WEIGHT = 0.02  # of each request in an endpoint's failure rate (about the last 50 count)


@dataclass
class Endpoint:
    replica_id: str
    cloud: str
    url: str
    secret: str | None = None  # sent as fermion.photon.REPLICA_AUTH_HEADER; replicas refuse calls without it
    in_flight: int = 0
    ejected_until: float = 0.0
    consecutive_failures: int = 0
    errors_in_a_row: int = 0  # answers of a replica failing (502, 503, 504), in a row
    latency_ewma_ms: float | None = None  # of successful answers, seen from the gateway
    generation: int = 0  # the deployment's version this replica runs
    error_ewma: float = 0.0  # share of recent requests that failed (5xx, refused or broken), seen from the gateway
    # where to connect, parsed once rather than per request
    host: str = field(init=False, repr=False, compare=False)
    port: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        path = socket_path(self.url)
        if path is not None:  # a replica on a Unix socket: port 0 says so to the upstream pool
            self.host, self.port = path, 0
            return
        parts = urlsplit(self.url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80

    def outcome(self, failed: bool) -> None:
        self.error_ewma += ERROR_WEIGHT * ((1.0 if failed else 0.0) - self.error_ewma)

    def available(self, now: float) -> bool:
        return self.ejected_until <= now


@dataclass
class Route:
    deployment: str
    public: bool
    idempotent: bool
    token_hash: str | None
    endpoints: list[Endpoint] = field(default_factory=list)
    rate_limit: tuple[float, float] | None = None  # (requests per second, burst) per caller
    # (queue limit, timeout s): with no replica up, requests wait for one (a deployment that
    # scales to zero, or wakes), up to this many for this long; None: answer 503 at once
    hold: tuple[int, float] | None = None
    canary: tuple[int, int] | None = None  # (generation, percent of traffic) of a canary under way


class RoutingTable:
    """Thread-safe swap of whole routes; endpoint counters survive a republish."""

    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}
        self._lock = threading.Lock()
        self.version = 0  # bumped on every change: gateways that follow this table long-poll on it
        self._listeners: list[Callable[[str], None]] = []

    def listen(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(deployment)`` after each change of a route (from the changing thread)."""
        self._listeners.append(callback)

    def _changed(self, names: Iterable[str]) -> None:
        for name in names:
            for callback in self._listeners:
                callback(name)

    def touch(self) -> None:
        """Count a change made beside the routes (e.g. the admin tokens) as a new version."""
        with self._lock:
            self.version += 1

    def get(self, deployment: str) -> Route | None:
        return self._routes.get(deployment)

    def routes(self) -> list[Route]:
        """A snapshot of every published route."""
        return list(self._routes.values())

    def publish(self, routes: dict[str, Route]) -> None:
        """Replace the whole table."""
        with self._lock:
            for name, route in routes.items():
                self._keep_counters(self._routes.get(name), route)
            changed = set(self._routes) | set(routes)
            self._routes = routes
            self.version += 1
        self._changed(changed)

    def set(self, name: str, route: Route | None) -> None:
        """Replace (or, with None, remove) one deployment's route; the others are untouched."""
        with self._lock:
            routes = dict(self._routes)  # copy on write: readers never take the lock
            if route is None:
                routes.pop(name, None)
            else:
                self._keep_counters(routes.get(name), route)
                routes[name] = route
            self._routes = routes
            self.version += 1
        self._changed((name,))

    @staticmethod
    def _keep_counters(old: Route | None, new: Route) -> None:
        if old is not None:
            previous = {e.replica_id: e for e in old.endpoints}
            new.endpoints = [previous.get(e.replica_id, e) if previous.get(e.replica_id, e).url == e.url else e
                             for e in new.endpoints]


class LeastOutstandingP2C:
    """Power of two choices on outstanding requests: near least-loaded, O(1), no herding."""

    def choose(self, endpoints: list[Endpoint], exclude: set[str]) -> Endpoint | None:
        now = time.monotonic()
        candidates = [e for e in endpoints if e.replica_id not in exclude and e.available(now)]
        if not candidates:
            # every replica is ejected: try the least recently ejected rather than fail outright
            candidates = sorted(
                (e for e in endpoints if e.replica_id not in exclude), key=lambda e: e.ejected_until
            )[:1]
        if len(candidates) <= 2:
            return min(candidates, key=lambda e: e.in_flight, default=None)
        a, b = random.sample(candidates, 2)
        return a if a.in_flight <= b.in_flight else b
