"""A closed-loop load generator: N concurrent keep-alive connections, requests back to back.

It speaks minimal HTTP/1.1 over asyncio streams on uvloop because httpx costs ~10x more CPU
per request, and on a 2-core machine the client would otherwise be what is measured.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import uvloop

from .._unix import reachable, socket_path


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        data = sorted(self.latencies_ms)
        return data[min(len(data) - 1, int(q / 100 * len(data)))]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms)

    @property
    def p99(self) -> float:
        return self.pct(99)


class _Connection:
    def __init__(self, host: str, port: int, extra_headers: dict[str, str]) -> None:
        self.host, self.port = host, port
        self.head = "".join(f"{k}: {v}\r\n" for k, v in extra_headers.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await (asyncio.open_unix_connection(reachable(self.host)) if self.port == 0
                                              else asyncio.open_connection(self.host, self.port))
        assert self.reader is not None
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {self.host if self.port else 'localhost'}\r\nContent-Type: application/json\r\n"
            f"{self.head}Content-Length: {len(body)}\r\n\r\n".encode() + body
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        chunked = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            lname = name.strip().lower()
            if lname == b"content-length":
                length = int(value)
            elif lname == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        else:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def _closed_loop(
    url: str, body: Callable[[int], Any], concurrency: int, duration_s: float, warmup_s: float, headers: dict[str, str]
) -> LoadResult:
    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
    if (socket_file := socket_path(url)) is not None:  # a local replica's Unix socket (port 0 says so)
        host, port = socket_file, 0
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from = start + warmup_s
    stop_at = measure_from + duration_s

    async def worker(w: int) -> None:
        nonlocal errors
        conn = _Connection(host, port, headers)
        i = 0
        try:
            while (now := time.perf_counter()) < stop_at:
                payload = json.dumps(body(w * 1_000_000 + i)).encode()
                try:
                    status = await conn.post(path, payload)
                except (OSError, asyncio.IncompleteReadError):
                    conn.close()
                    conn = _Connection(host, port, headers)
                    status = 0
                done = time.perf_counter()
                i += 1
                if now >= measure_from:
                    if status != 200:
                        errors += 1
                    latencies.append((done - now) * 1000)
        finally:
            conn.close()

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return LoadResult(len(latencies), errors, time.perf_counter() - measure_from, latencies)


def closed_loop(
    url: str,
    body: Callable[[int], Any],
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float = 1.0,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    """``concurrency`` clients POST ``body(i)`` as JSON to ``url`` for ``duration_s`` after a warm-up."""
    return uvloop.run(_closed_loop(url, body, concurrency, duration_s, warmup_s, headers or {}))
