"""Claim: the gateway adds little: added p50 <= 1 ms, and most of the replica's throughput.
Baseline: the same replica called directly, same load, same run.
Usage: python benchmarks/gateway.py [--duration 8]"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fermion.photon import REPLICA_AUTH_HEADER  # noqa: E402
from fermion.testing import LoadResult, closed_loop, running_server  # noqa: E402

TEXT_PHOTON = f"{ROOT / 'examples' / 'text' / 'photon.py'}:TextTools"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=8.0)
    args = parser.parse_args()
    body = lambda i: {"text": f"request {i} through fermion", "min_length": 2}  # noqa: E731
    rows: list[tuple[str, int, LoadResult, LoadResult]] = []
    with tempfile.TemporaryDirectory() as tmp, running_server(Path(tmp) / "home") as server:
        server.cli("deploy", TEXT_PHOTON, "--name", "bench", "--public")
        replica = server.deployment("bench")["replica_list"][0]
        gateway_url = f"{server.url}/d/bench/stats"
        # the baseline calls the replica where its backend said it serves, with the secret the gateway
        # sends (a replica answers only with it): both from the store, which the API keeps to itself
        with sqlite3.connect(server.home / "fermion.db") as db:
            url, secret = db.execute("SELECT url, auth_secret FROM replicas WHERE id = ?", (replica["id"],)).fetchone()
        direct_url = f"{url}/stats"
        direct_headers = {REPLICA_AUTH_HEADER.decode(): secret}
        for concurrency in (1, 16):
            direct = closed_loop(direct_url, body, concurrency=concurrency, duration_s=args.duration,
                                 headers=direct_headers)
            via = closed_loop(gateway_url, body, concurrency=concurrency, duration_s=args.duration)
            rows.append(("stats", concurrency, direct, via))
    print(f"text photon `stats` handler, one replica, {args.duration:g}s per run (2-core machine: the load")
    print("generator, the gateway and the replica share the CPUs)")
    print(f"{'clients':>8} {'path':>8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for _, c, direct, via in rows:
        for name, r in (("direct", direct), ("gateway", via)):
            print(f"{c:>8} {name:>8} {r.throughput:>9.0f} {r.p50:>8.2f} {r.p99:>8.2f} {r.errors:>7}")
    _, _, d1, g1 = rows[0]
    _, _, d16, g16 = rows[1]
    print(f"added p50 at 1 client: {g1.p50 - d1.p50:.2f} ms (goal <= 1 ms)")
    print(f"throughput ratio gateway/direct: {g1.throughput / d1.throughput:.2f} at 1 client, "
          f"{g16.throughput / d16.throughput:.2f} at 16 clients")


if __name__ == "__main__":
    main()
