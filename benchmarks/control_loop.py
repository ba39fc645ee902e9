"""Claim: one full control-loop pass grows close to linearly with the number of deployments, and
takes under 1 s for 200 deployments × 3 replicas (on a backend with instant starts, so that what
is measured is the control plane: claim, snapshot, observe, plan, write back, publish).

Baseline, in the same run: the same passes over 20 deployments. Three passes each: "cold" creates
and starts every replica, "settle" sees them ready and publishes routes, "steady" finds nothing to do.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fermion.backends import FaultInjector  # noqa: E402
from fermion.control import DeploymentController, Scheduler  # noqa: E402
from fermion.gateway import RoutingTable  # noqa: E402
from fermion.photon.runtime import build_archive  # noqa: E402
from fermion.store import DeploymentRow, PhotonRow, ReplicaRow, Store, default_db_url  # noqa: E402
from fermion.testing import InstantBackend  # noqa: E402

TEXT_PHOTON = f"{ROOT / 'examples' / 'text' / 'photon.py'}:TextTools"
REPLICAS = 3
PHASES = ("cold", "settle", "steady")


def passes(deployments: int, archive: Path, work: Path) -> dict[str, float]:
    """Seconds of each pass over ``deployments`` deployments of REPLICAS replicas."""
    work.mkdir()
    store = Store(default_db_url(work))
    instant = {"alpha": InstantBackend("alpha", price=1.0), "beta": InstantBackend("beta", price=1.2)}
    scheduler = Scheduler(store, {name: FaultInjector(b) for name, b in instant.items()})
    table = RoutingTable()
    controller = DeploymentController(store, scheduler, table)
    manifest, _ = build_archive(TEXT_PHOTON, work / "text.photon")
    with store.session() as s:
        s.add(PhotonRow(sha256=manifest.sha256, name=manifest.name, archive_path=str(archive), manifest=manifest.model_dump()))
        s.flush()
        for i in range(deployments):
            s.add(DeploymentRow(name=f"d{i:04d}", photon_sha256=manifest.sha256, replicas=REPLICAS,
                                resources={"cpus": 1, "memory_gb": 1}))
    times = {}
    for phase in PHASES:
        t0 = time.perf_counter()
        controller.tick()
        times[phase] = time.perf_counter() - t0
    with store.session() as s:
        ready = s.query(ReplicaRow).filter_by(state="READY").count()
    routed = sum(len(r.endpoints) for r in table.routes())
    assert ready == routed == deployments * REPLICAS, (ready, routed)
    assert sum(b.starts for b in instant.values()) == deployments * REPLICAS
    controller.stop()
    store.close()
    for b in instant.values():
        b.close()
    return times


def main() -> None:
    small, large, runs = 20, 200, 3
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "text.photon"
        build_archive(TEXT_PHOTON, archive)
        passes(5, archive, Path(tmp) / "warm-up")  # imports (scipy for the optimizer) are not a pass's cost
        results: dict[int, list[dict[str, float]]] = {small: [], large: []}
        for run in range(runs):
            for n in (small, large):
                results[n].append(passes(n, archive, Path(tmp) / f"{n}-{run}"))
    print(f"one control-loop pass, {REPLICAS} replicas per deployment, instant-start backend, two clouds;")
    print(f"median of {runs} runs (2-core machine)")
    print(f"{'pass':>8} {f'{small} deployments':>16} {f'{large} deployments':>17} {'growth':>8} {'per deployment':>15}")
    worst = 0.0
    for phase in PHASES:
        a = statistics.median(r[phase] for r in results[small])
        b = statistics.median(r[phase] for r in results[large])
        growth = b / a
        worst = max(worst, b)
        print(f"{phase:>8} {a * 1000:>13.0f} ms {b * 1000:>14.0f} ms {growth:>7.1f}x {b / large * 1000:>12.2f} ms")
    print(f"10x the deployments: linear growth is 10x. Slowest pass at {large}: {worst * 1000:.0f} ms "
          f"(goal: under 1000 ms) -> {'met' if worst < 1 else 'NOT met'}")


if __name__ == "__main__":
    main()
