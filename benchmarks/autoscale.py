"""Claim: autoscaling (min 0, max 4) serves a load trace within its SLO at a fraction of the
replica-seconds of fixed provisioning (4 replicas), with no failed request, and wakes from zero
about as fast as the photon starts by hand.

Baseline: the same photon, same trace, same run, as a fixed deployment of 4 replicas; and
`fermion photon run` of the same photon (process start to first answer) for the wake.

The trace: clients that each send a request, wait 200 ms, and again; 1 → 4 → 8 → 16 → 32 clients
in 5 s steps, 32 for 10 s, a spike of 64 for 5 s, 8 for 10 s, then idle for 45 s.

Goals: >= 99% of requests within the SLO (200 ms) outside the cold start; <= 0.6x the
replica-seconds of fixed provisioning; 0 failed requests; waking from zero <= 2x the plain start
(medians: the trace's wake and three more, each once the deployment is IDLE again).

Usage: python benchmarks/autoscale.py [--idle 45]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fermion.testing import running_server, serve_photon, web  # noqa: E402

TEXT_PHOTON = f"{ROOT / 'examples' / 'text' / 'photon.py'}:TextTools"
BODY = {"texts": ["autoscale me"]}
SLO_S = 0.200
WAKES = 4  # the trace's own, and three more
PAUSE_S = 0.2  # each client's think time: 2 cores serve ~300 requests/s of this photon, gateway and client included
LIVE = ("PROVISIONING", "STARTING", "READY", "UNHEALTHY", "DRAINING")


def trace(idle_s: float) -> list[tuple[float, int]]:
    """(duration s, clients) steps."""
    return [(5, 1), (5, 4), (5, 8), (5, 16), (10, 32), (5, 64), (10, 8), (idle_s, 0)]


class Replay:
    """Drives the trace against one URL; records (sent at, latency, status) of every request."""

    def __init__(self, url: str, steps: list[tuple[float, int]]) -> None:
        self.url, self.steps = url, steps
        self.records: list[tuple[float, float, int | str]] = []
        self.clients = 0
        self.done = False

    async def _client(self, i: int, http: httpx.AsyncClient) -> None:
        while not self.done:
            if i >= self.clients:
                await asyncio.sleep(0.01)
                continue
            sent = time.monotonic()
            try:
                status: int | str = (await http.post(self.url, json=BODY)).status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            self.records.append((sent, time.monotonic() - sent, status))
            await asyncio.sleep(PAUSE_S)

    async def run(self) -> float:
        peak = max(c for _, c in self.steps)
        limits = httpx.Limits(max_connections=peak + 8, max_keepalive_connections=peak + 8)
        async with httpx.AsyncClient(timeout=60, limits=limits) as http:
            tasks = [asyncio.create_task(self._client(i, http)) for i in range(peak)]
            started = time.monotonic()
            for seconds, clients in self.steps:
                self.clients = clients
                await asyncio.sleep(seconds)
            self.done = True
            await asyncio.gather(*tasks)
        return started


def count_replicas(api: httpx.Client, name: str, samples: list[tuple[float, int]], stop: threading.Event) -> None:
    while not stop.is_set():
        d = api.get(f"/deployments/{name}").json()
        samples.append((time.monotonic(), sum(r["state"] in LIVE for r in d["replica_list"])))
        stop.wait(0.25)


def replica_seconds(samples: list[tuple[float, int]]) -> float:
    return sum((b[0] - a[0]) * a[1] for a, b in zip(samples, samples[1:], strict=False))


def run_one(server, name: str, args: list[str], steps: list[tuple[float, int]]) -> dict:  # noqa: ANN001
    server.cli("deploy", TEXT_PHOTON, "--name", name, "--public", *args)
    samples: list[tuple[float, int]] = []
    stop = threading.Event()
    with server.api() as api:
        counter = threading.Thread(target=count_replicas, args=(api, name, samples, stop), daemon=True)
        counter.start()
        replay = Replay(f"{server.url}/d/{name}/upper", steps)
        started = asyncio.run(replay.run())
        stop.set()
        counter.join()
    records = replay.records
    first_answer = min((s + lat for s, lat, st in records if st == 200), default=started)
    warm = [r for r in records if r[0] >= first_answer]  # outside the cold start
    failed = [r for r in records if r[2] != 200]
    latencies = sorted(lat for _, lat, st in warm if st == 200)
    wakes = [first_answer - started]
    if "--min-replicas" in args:  # more wakes from zero, each once the deployment is IDLE again
        for _ in range(WAKES - 1):
            wakes.append(wake(server, name))
    server.cli("deployment", "delete", name)
    with server.api() as api:  # gone, replicas and all: the next run gets the CPUs to itself
        deadline = time.monotonic() + 60
        while api.get(f"/deployments/{name}").status_code != 404 and time.monotonic() < deadline:
            time.sleep(0.2)
    return {
        "requests": len(records), "failed": len(failed), "failures": sorted({str(r[2]) for r in failed}),
        "within_slo": sum(lat <= SLO_S for lat in latencies) / max(1, len(warm)),
        "p50_ms": 1000 * statistics.median(latencies), "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "replica_s": replica_seconds(samples), "wake_s": statistics.median(wakes), "wakes": wakes,
        "peak_replicas": max(n for _, n in samples),
    }


def wake(server, name: str) -> float:  # noqa: ANN001
    """Once ``name`` is IDLE: first request to first answer."""
    server.wait_for(lambda api: api.get(f"/deployments/{name}").json()["status"] == "IDLE"
                    and not api.get(f"/deployments/{name}").json()["replica_list"], timeout=120, interval=0.5)
    time.sleep(1)  # the drained replica's process has ended
    started = time.perf_counter()
    r = web.post(f"{server.url}/d/{name}/upper", json=BODY, timeout=60)
    r.raise_for_status()
    return time.perf_counter() - started


def plain_start(work: Path) -> float:
    started = time.perf_counter()
    with serve_photon(TEXT_PHOTON, work, wait_ready=False, timeout=120) as served:
        while True:
            try:
                if web.post(f"{served.url}/upper", json=BODY, timeout=10).status_code == 200:
                    return time.perf_counter() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=float, default=45.0, help="seconds of idle at the end of the trace")
    opts = parser.parse_args()
    steps = trace(opts.idle)
    with tempfile.TemporaryDirectory() as tmp, running_server(Path(tmp) / "home") as server:
        plain = statistics.median(plain_start(Path(tmp)) for _ in range(3))
        fixed = run_one(server, "fixed", ["--replicas", "4"], steps)
        auto = run_one(server, "auto", ["--replicas", "0", "--min-replicas", "0", "--max-replicas", "4",
                                        "--target-ongoing-requests", "2", "--upscale-delay", "1",
                                        "--downscale-delay", "10", "--scale-to-zero-delay", "10"], steps)
    print(f"trace: {' → '.join(str(c) for _, c in steps)} clients over {sum(s for s, _ in steps):.0f}s "
          f"(each: a request, then {PAUSE_S * 1000:.0f} ms); SLO {SLO_S * 1000:.0f} ms")
    print(f"{'':>12} {'requests':>9} {'failed':>7} {'in SLO':>8} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'replica-s':>10} {'peak':>5}")
    for label, r in (("fixed 4", fixed), ("autoscaled", auto)):
        print(f"{label:>12} {r['requests']:>9} {r['failed']:>7} {100 * r['within_slo']:>7.2f}% {r['p50_ms']:>7.1f} "
              f"{r['p99_ms']:>7.1f} {r['replica_s']:>10.1f} {r['peak_replicas']:>5}")
        if r["failures"]:
            print(f"{'':>12} failures: {', '.join(r['failures'])}")
    ratio = auto["replica_s"] / fixed["replica_s"]
    wake = auto["wake_s"]
    print(f"replica-seconds, autoscaled / fixed: {ratio:.2f}x (goal <= 0.6)")
    print(f"within SLO outside the cold start: {100 * auto['within_slo']:.2f}% (goal >= 99%)")
    print(f"failed requests: {auto['failed']} autoscaled, {fixed['failed']} fixed (goal 0)")
    print(f"wake from zero (median of {len(auto['wakes'])}: {', '.join(f'{w:.2f}' for w in auto['wakes'])}s): "
          f"{wake:.2f}s vs `fermion photon run` start (median of 3) {plain:.2f}s = {wake / plain:.2f}x (goal <= 2)")


if __name__ == "__main__":
    main()
