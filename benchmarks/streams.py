"""Claim: open event streams cost the API little. With 150 dashboard streams open
(GET /api/v1/stream), the p50 of a plain API call (GET /api/v1/deployments, 3 deployments)
stays within 2x of the same call with none open (the issue measured 9 ms -> 164 ms when each
stream ran its own database loop). The 150 streams are all allowed by the default limits:
19 tokens (at most 8 streams each) from 5 loopback addresses (at most 32 each), so the limits are
not what keeps the server fast. Also measured: the same with events flowing (a cloud's outage
injected and recovered, 4 events/s that every stream receives), against the same flow with no stream.
Baseline: the same server and call, measured in the same run with no stream open.
Usage: python benchmarks/streams.py [--streams 150] [--requests 300] [--events-per-s 4]"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fermion.photon.runtime import build_archive  # noqa: E402
from fermion.testing import ServerProc, running_server  # noqa: E402

PHOTON = f"{ROOT / 'tests' / 'photon' / 'fixture_photons.py'}:Versioned"
CLOUDS = """clouds:
  - name: alpha
    capacity: {cpus: 4, memory_gb: 8}
"""
PER_TOKEN, PER_ADDRESS = 8, 30  # within the defaults (8 per token, 32 per address)
DEPLOYMENTS = 3  # a plain call of about 10 ms (the was 9 ms); each deployment adds about 1.5 ms


def p50(server: ServerProc, n: int) -> float:
    """Median milliseconds of GET /api/v1/deployments over ``n`` calls (after 30 to warm up)."""
    samples = []
    with server.api() as api:
        for i in range(n + 30):
            t = time.perf_counter()
            r = api.get("/deployments")
            elapsed = (time.perf_counter() - t) * 1000
            assert r.status_code == 200, r.text
            if i >= 30:
                samples.append(elapsed)
    return statistics.median(samples)


def cpu_share(server: ServerProc, seconds: float = 5.0) -> float:
    """The server process's CPU over ``seconds`` while no API call is made, in % of one core."""
    def cpu() -> float:
        fields = Path(f"/proc/{server.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    before, t = cpu(), time.monotonic()
    time.sleep(seconds)
    return 100 * (cpu() - before) / (time.monotonic() - t)


class Streams:
    """``n`` streams held open by one asyncio loop in a thread, read to the end of what comes."""

    def __init__(self, server: ServerProc, tokens: list[str], n: int) -> None:
        url = urlsplit(server.url)
        self.host, self.port = url.hostname, url.port
        self.plan = self.spread(tokens, n)
        self.loop = asyncio.new_event_loop()
        self.frames = 0
        self.statuses: list[int] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.opened = threading.Event()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    @staticmethod
    def spread(tokens: list[str], n: int) -> list[tuple[str, str]]:
        """(token, source address) of each stream: 8 per token, 30 per loopback address."""
        return [(tokens[i // PER_TOKEN], f"127.0.0.{1 + i // PER_ADDRESS}") for i in range(n)]

    async def _one(self, token: str, address: str, ready: asyncio.Queue[int]) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port, local_addr=(address, 0))
        self.writers.append(writer)
        writer.write(f"GET /api/v1/stream HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        await ready.put(status)
        if status != 200:
            return
        tail = b""
        while chunk := await reader.read(65536):
            seen = tail + chunk
            self.frames += seen.count(b"event: change")
            tail = seen[-12:]  # shorter than the marker: a marker split across reads counts once

    async def _open(self) -> None:
        ready: asyncio.Queue[int] = asyncio.Queue()
        for token, address in self.plan:
            asyncio.ensure_future(self._one(token, address, ready))
            self.statuses.append(await ready.get())  # one at a time: each is open before the next

    def __enter__(self) -> Streams:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._open(), self.loop).result(120)
        return self

    async def _close(self) -> None:
        for w in self.writers:
            w.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Flow:
    """Events every stream receives: a cloud's outage injected and recovered, ``rate`` a second."""

    def __init__(self, server: ServerProc, rate: float) -> None:
        self.server, self.rate = server, rate
        self.stop = threading.Event()
        self.made = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.server.api() as api:
            while not self.stop.wait(1 / self.rate):
                api.post(f"/clouds/alpha/{'fail' if self.made % 2 == 0 else 'recover'}").raise_for_status()
                self.made += 1

    def __enter__(self) -> Flow:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)
        if self.made % 2:
            with self.server.api() as api:
                api.post("/clouds/alpha/recover").raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=150)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--events-per-s", type=float, default=4.0)
    args = parser.parse_args()
    n = args.streams
    results: dict[tuple[bool, int], list[float]] = {}
    cpu: dict[tuple[bool, int], list[float]] = {}
    refused, delivered = 0, []
    with tempfile.TemporaryDirectory() as tmp, running_server(Path(tmp) / "home", CLOUDS) as server:
        archive = Path(tmp) / "v.photon"
        build_archive(PHOTON, archive)
        with server.api() as api:
            sha = api.post("/photons", files={"file": ("v.photon", archive.read_bytes(), "application/zip")}).json()["sha256"]
            for i in range(DEPLOYMENTS):
                api.put(f"/deployments/d{i:02d}", json={"photon": sha, "replicas": 0, "public": True}).raise_for_status()
            # viewer tokens of the admin user: they see every project, through the per-stream filter
            tokens = [api.post("/tokens", json={"name": f"viewer-{i}", "role": "viewer"}).json()["token"]
                      for i in range(-(-n // PER_TOKEN))]
        server.wait_for(lambda api: all(d["status"] == "READY" for d in api.get("/deployments").json()))
        # A B B A: the machine's load drifts, each condition gets an early and a late turn
        for flowing in (False, True):
            for count in (0, n, n, 0):
                with contextlib.ExitStack() as stack:
                    streams = stack.enter_context(Streams(server, tokens, count)) if count else None
                    flow = stack.enter_context(Flow(server, args.events_per_s)) if flowing else None
                    time.sleep(1)  # every stream has joined; the poller ticks
                    cpu.setdefault((flowing, count), []).append(cpu_share(server))
                    results.setdefault((flowing, count), []).append(p50(server, args.requests))
                    if flow is not None:
                        flow.stop.set()
                    time.sleep(1)  # the last events reach the streams
                    if streams is not None:
                        refused += sum(status != 200 for status in streams.statuses)
                        if flow is not None:
                            delivered.append((streams.frames / count, flow.made))
                time.sleep(2)  # the server sees the streams go
    print(f"{n} streams at a time ({refused} refused), over {len(tokens)} tokens and "
          f"{len({a for _, a in Streams.spread(tokens, n)})} addresses (limits: 8 per token, 32 per address)")
    for per_stream, made in delivered:
        print(f"  with events flowing: {made} events made, {per_stream:.1f} received per stream")
    print(f"GET /api/v1/deployments ({DEPLOYMENTS} deployments), p50 of {args.requests} sequential calls, A B B A:")
    worst = 0.0
    for flowing, label in ((False, "idle"), (True, f"{args.events_per_s:g} events/s")):
        base, loaded = results[(flowing, 0)], results[(flowing, n)]
        ratio = statistics.mean(loaded) / statistics.mean(base)
        worst = max(worst, ratio)
        print(f"  {label:12} 0 streams {statistics.mean(base):6.2f} ms ({', '.join(f'{x:.2f}' for x in base)})   "
              f"{n} streams {statistics.mean(loaded):6.2f} ms ({', '.join(f'{x:.2f}' for x in loaded)})   "
              f"ratio {ratio:.2f}x")
    print("the server's CPU between those calls (% of one core, 5 s each):")
    for flowing, label in ((False, "idle"), (True, f"{args.events_per_s:g} events/s")):
        print(f"  {label:12} 0 streams {statistics.mean(cpu[(flowing, 0)]):5.1f}%   "
              f"{n} streams {statistics.mean(cpu[(flowing, n)]):5.1f}%")
    print(f"worst ratio: {worst:.2f}x (claim: <= 2x) -> {'met' if worst <= 2 and not refused else 'NOT met'}")


if __name__ == "__main__":
    main()
