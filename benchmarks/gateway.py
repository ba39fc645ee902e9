"""Claims: the gateway adds little (added p50 <= 1 ms, most of the replica's throughput), and a replica
in a network namespace of its own, served on a Unix socket, costs nothing against one on TCP loopback
(added p50 <= 0.1 ms, throughput >= 0.95x).
Baselines: the same replica called directly; a replica of a cloud with `network: host` (TCP loopback,
as before namespaces), through the same gateway. Same load, same run; the two replicas' runs
alternate (TCP, Unix, Unix, TCP) and each side's figure is the mean of its two.
Usage: python benchmarks/gateway.py [--duration 5]"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fermion.photon import REPLICA_AUTH_HEADER  # noqa: E402
from fermion.testing import LoadResult, closed_loop, running_server  # noqa: E402

TEXT_PHOTON = f"{ROOT / 'examples' / 'text' / 'photon.py'}:TextTools"
CLOUDS = "clouds:\n  - name: own\n  - name: shared\n    network: host\n"


def replica_address(home: Path, deployment: str, replica_id: str) -> tuple[str, str]:
    """Where its backend said the replica serves, and the secret the gateway sends it (the API
    keeps both to itself: read from the store)."""
    with sqlite3.connect(home / "fermion.db") as db:
        return db.execute("SELECT url, auth_secret FROM replicas WHERE id = ?", (replica_id,)).fetchone()


def mean(results: list[LoadResult], key: str) -> float:
    return statistics.fmean(getattr(r, key) for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    body = lambda i: {"text": f"request {i} through fermion", "min_length": 2}  # noqa: E731
    table: list[tuple[int, str, LoadResult]] = []
    via: dict[tuple[int, str], list[LoadResult]] = {}
    with tempfile.TemporaryDirectory() as tmp, running_server(Path(tmp) / "home", CLOUDS) as server:
        server.cli("deploy", TEXT_PHOTON, "--name", "unix", "--public", "--cloud", "own")
        server.cli("deploy", TEXT_PHOTON, "--name", "tcp", "--public", "--cloud", "shared")
        direct = {}
        for name in ("unix", "tcp"):
            url, secret = replica_address(server.home, name, server.deployment(name)["replica_list"][0]["id"])
            assert url.startswith("http+unix://" if name == "unix" else "http://127.0.0.1:"), url
            direct[name] = (f"{url}/stats", {REPLICA_AUTH_HEADER.decode(): secret})
        for concurrency in (1, 16):
            for name in ("tcp", "unix"):
                url, headers = direct[name]
                table.append((concurrency, f"direct {name}", closed_loop(url, body, concurrency=concurrency,
                                                                         duration_s=args.duration, headers=headers)))
            for name in ("tcp", "unix", "unix", "tcp"):
                r = closed_loop(f"{server.url}/d/{name}/stats", body, concurrency=concurrency, duration_s=args.duration)
                via.setdefault((concurrency, name), []).append(r)
                table.append((concurrency, f"gateway {name}", r))
    print(f"text photon `stats` handler, one replica each, {args.duration:g}s per run (2-core machine: the load")
    print("generator, the gateway and the replica share the CPUs)")
    print(f"{'clients':>8} {'path':>13} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for c, name, r in table:
        print(f"{c:>8} {name:>13} {r.throughput:>9.0f} {r.p50:>8.2f} {r.p99:>8.2f} {r.errors:>7}")
    d1 = next(r for c, n, r in table if c == 1 and n == "direct unix")
    d16 = next(r for c, n, r in table if c == 16 and n == "direct unix")
    g1, g16 = mean(via[(1, "unix")], "p50"), via[(16, "unix")]
    print(f"gateway added p50 at 1 client: {g1 - d1.p50:.2f} ms (goal <= 1 ms); throughput gateway/direct: "
          f"{mean(via[(1, 'unix')], 'throughput') / d1.throughput:.2f} at 1 client, "
          f"{mean(g16, 'throughput') / d16.throughput:.2f} at 16 clients")
    for c in (1, 16):
        unix, tcp = via[(c, "unix")], via[(c, "tcp")]
        print(f"own namespace (Unix socket) against TCP loopback, through the gateway, {c} client(s): added p50 "
              f"{mean(unix, 'p50') - mean(tcp, 'p50'):+.3f} ms (goal <= 0.1 ms), throughput "
              f"{mean(unix, 'throughput') / mean(tcp, 'throughput'):.2f}x (goal >= 0.95x)")


if __name__ == "__main__":
    main()
