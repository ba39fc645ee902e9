"""Claim: pending work costs little. A deployment of 1,000 replicas of which 996 cannot be placed
(PENDING) must not slow the rest of the platform: gateway p50 to another deployment, a scale of
another deployment to READY, `cloud recover`, and listing clouds stay within 2x. (Before the fix,
the issue measured a scale at 9.9 s, `cloud recover` at 11.5 s and gateway p50 at ~25x.)
Baseline: the same server and calls, measured before the big deployment exists.
Usage: python benchmarks/pending_work.py [--replicas 1000]"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fermion.testing import ServerProc, running_server  # noqa: E402

PHOTON = f"{ROOT / 'tests' / 'photon' / 'fixture_photons.py'}:Versioned"
CLOUDS = """
clouds:
  - name: small
    capacity: {cpus: 1, memory_gb: 4}
  - name: other
    capacity: {cpus: 2, memory_gb: 4}
"""


def measure(server: ServerProc) -> dict[str, float]:
    """Milliseconds for each operation (medians where repeated)."""
    out: dict[str, float] = {}
    with httpx.Client(timeout=60) as http, server.api() as api:
        samples = []
        for _ in range(300):
            t = time.perf_counter()
            assert http.post(f"{server.url}/d/steady/version", json={}).status_code == 200
            samples.append((time.perf_counter() - t) * 1000)
        out["gateway p50"] = statistics.median(samples)
        for n in (2, 1):
            t = time.perf_counter()
            api.post("/deployments/steady/scale", json={"replicas": n}).raise_for_status()
            while api.get("/deployments/steady").json()["ready"] != n or \
                    len(api.get("/deployments/steady").json()["replica_list"]) != n:
                time.sleep(0.02)
            out[f"scale to {n}, ready"] = (time.perf_counter() - t) * 1000
        samples = []
        for _ in range(50):
            t = time.perf_counter()
            api.post("/clouds/small/recover").raise_for_status()
            samples.append((time.perf_counter() - t) * 1000)
        out["cloud recover"] = statistics.median(samples)
        samples = []
        for _ in range(50):
            t = time.perf_counter()
            api.get("/clouds").raise_for_status()
            samples.append((time.perf_counter() - t) * 1000)
        out["cloud list"] = statistics.median(samples)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--replicas", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, running_server(Path(tmp) / "home", CLOUDS) as server:
        server.cli("deploy", PHOTON, "--name", "steady", "--public", "--cloud", "other")
        baseline = measure(server)
        server.cli("deploy", PHOTON, "--name", "huge", "--replicas", str(args.replicas), "--public",
                   "--cloud", "small", "--no-wait")
        server.wait_for(lambda api: api.get("/deployments/huge").json()["ready"] == 4, timeout=120)
        pending = sum(r["state"] == "PENDING" for r in server.deployment("huge")["replica_list"])
        time.sleep(2)
        loaded = measure(server)
    print(f"{pending} of {args.replicas} replicas PENDING beside the measured deployment")
    print(f"{'operation':24} {'baseline ms':>12} {'with pending':>13} {'ratio':>7}")
    worst = 0.0
    for name, base in baseline.items():
        ratio = loaded[name] / base
        worst = max(worst, ratio)
        print(f"{name:24} {base:12.1f} {loaded[name]:13.1f} {ratio:6.2f}x")
    print(f"worst ratio: {worst:.2f}x (claim: <= 2x) -> {'met' if worst <= 2 else 'NOT met'}")


if __name__ == "__main__":
    main()
