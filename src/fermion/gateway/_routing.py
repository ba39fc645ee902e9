"""The routing table: READY replicas per deployment, published by the controller, read by the gateway."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Endpoint:
    replica_id: str
    cloud: str
    url: str
    secret: str | None = None  # sent as fermion.photon.REPLICA_AUTH_HEADER; replicas refuse calls without it
    in_flight: int = 0
    ejected_until: float = 0.0
    consecutive_failures: int = 0
    latency_ewma_ms: float | None = None  # of successful answers, seen from the gateway

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


class RoutingTable:
    """Thread-safe swap of whole routes; endpoint counters survive a republish."""

    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}
        self._lock = threading.Lock()

    def get(self, deployment: str) -> Route | None:
        return self._routes.get(deployment)

    def routes(self) -> list[Route]:
        """A snapshot of every published route."""
        return list(self._routes.values())

    def publish(self, routes: dict[str, Route]) -> None:
        with self._lock:
            for name, route in routes.items():
                old = self._routes.get(name)
                if old is None:
                    continue
                previous = {e.replica_id: e for e in old.endpoints}
                route.endpoints = [previous.get(e.replica_id, e) for e in route.endpoints]
            self._routes = routes


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
