"""Token buckets: per caller and deployment, refilled continuously; a caller past its rate waits."""

from __future__ import annotations

import time
from collections import OrderedDict


class TokenBuckets:
    """One bucket per key, created full; ``take`` spends one request. The least recently used
    buckets are forgotten past MAX_KEYS (a forgotten caller starts again with a full bucket)."""

    MAX_KEYS = 100_000

    def __init__(self, max_keys: int = MAX_KEYS) -> None:
        self.max_keys = max_keys
        self._buckets: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()  # tokens, at

    def take(self, key: tuple[str, str], rate: float, burst: float, now: float | None = None) -> float:
        """0 if the request may go now, else the seconds until it could."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(key, (burst, now))
        tokens = min(burst, tokens + (now - last) * rate)
        wait = 0.0 if tokens >= 1 else (1 - tokens) / rate
        self._buckets[key] = (tokens - 1 if tokens >= 1 else tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait
