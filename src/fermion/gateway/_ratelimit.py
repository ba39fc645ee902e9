"""Token buckets: per caller and deployment, refilled continuously; a caller past its rate waits."""

from __future__ import annotations

import time


class TokenBuckets:
    """One bucket per key, created full. ``take`` spends one request."""

    MAX_KEYS = 100_000  # past it, buckets that have refilled completely are forgotten (a new one is full anyway)

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], tuple[float, float, float, float]] = {}  # tokens, at, rate, burst

    def take(self, key: tuple[str, str], rate: float, burst: float, now: float | None = None) -> float:
        """0 if the request may go now, else the seconds until it could."""
        now = time.monotonic() if now is None else now
        tokens, last, _, _ = self._buckets.get(key, (burst, now, rate, burst))
        tokens = min(burst, tokens + (now - last) * rate)
        if tokens >= 1:
            self._buckets[key] = (tokens - 1, now, rate, burst)
            if len(self._buckets) > self.MAX_KEYS:
                self._forget_full(now)
            return 0.0
        self._buckets[key] = (tokens, now, rate, burst)
        return (1 - tokens) / rate

    def _forget_full(self, now: float) -> None:
        self._buckets = {k: v for k, v in self._buckets.items() if v[0] + (now - v[1]) * v[2] < v[3]}
