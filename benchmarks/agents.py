"""Claim: driving a cloud through its agent (which dials out to the server: a long poll for calls,
a report of every workload each second) costs the control plane little over driving the same
machine's processes in-process. Measured per operation on real sandboxed job workloads: start
(the call returns a handle), the first status of a new workload (the agent is asked: its report
does not hold it yet), a status in steady state (a pass over every live workload; the agent's
answered from its report), and a forced stop until the workload reads as ended. Baseline: the local backend in this process, the same workloads, in the
same run. Sessions alternate A B B A ..., each side's figure is the median of its sessions, with
the spread (min-max of the session medians) and the machine's busy share during each side.
Usage: python benchmarks/agents.py [--workloads 12] [--sessions 4]"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fermion.backends import AgentBackend, Backend, Isolation, LocalBackend, Workload  # noqa: E402
from fermion.clouds import CloudConfig  # noqa: E402
from fermion.testing import agent_cloud  # noqa: E402

SLEEPER = ["python", "-c", "import time; time.sleep(600)"]


def busy() -> tuple[int, int]:
    """The machine's (busy, total) CPU ticks so far, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def wait(check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.005)


def session(backend: Backend, n: int) -> dict[str, float]:
    """Milliseconds per start, per first status (an agent asks: its report lacks the new workload),
    per status in steady state (an agent's from its report), and per forced stop."""
    handles, starts, firsts = [], [], []
    for _ in range(n):
        workload = Workload(id=f"b-{uuid.uuid4().hex[:10]}", kind="job", command=SLEEPER, cpus=0.1, memory_gb=0.1)
        t = time.perf_counter()
        handles.append(backend.start(workload))
        starts.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        backend.status(handles[-1])
        firsts.append((time.perf_counter() - t) * 1000)
    wait(lambda: all(backend.status(h).alive for h in handles))
    if isinstance(backend, AgentBackend):  # steady state: the agent's next report holds them all
        wait(lambda: all(backend.reported(str(h["id"])) for h in handles))
    passes = []
    for _ in range(7):
        t = time.perf_counter()
        for h in handles:
            backend.status(h)
        passes.append((time.perf_counter() - t) * 1000 / n)
    stops = []
    for h in handles:
        t = time.perf_counter()
        backend.stop(h, force=True)
        wait(lambda h=h: not backend.status(h).alive)
        stops.append((time.perf_counter() - t) * 1000)
    return {"start": statistics.median(starts), "first status": statistics.median(firsts),
            "status": statistics.median(passes), "stop": statistics.median(stops)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", type=int, default=12)
    parser.add_argument("--sessions", type=int, default=4, help="per side (at least 3)")
    args = parser.parse_args()
    if args.sessions < 3:
        raise SystemExit("--sessions must be at least 3 per side")
    with tempfile.TemporaryDirectory() as tmp, agent_cloud(Path(tmp) / "agent") as agent:
        local = LocalBackend(CloudConfig(name="loc"), Path(tmp) / "workloads", server_home=Path(tmp) / "home",
                             isolation=Isolation())
        sides: dict[str, Backend] = {"local": local, "agent": agent}
        results: dict[str, list[dict[str, float]]] = {"local": [], "agent": []}
        load: dict[str, list[float]] = {"local": [], "agent": []}
        session(local, 2)  # warm both paths (imports, the sandbox's first start)
        session(agent, 2)
        order = [("local", "agent", "agent", "local")[i % 4] for i in range(2 * args.sessions)]
        for side in order:
            b0, t0 = busy()
            results[side].append(session(sides[side], args.workloads))
            b1, t1 = busy()
            load[side].append(100 * (b1 - b0) / max(1, t1 - t0))
        local.close()
    print(f"{args.workloads} sandboxed job workloads per session, {args.sessions} sessions per side, order "
          f"{' '.join(order)}")
    print(f"{'operation':<13} {'local ms':>20} {'agent ms':>20} {'agent/local':>12}")
    for op in ("start", "first status", "status", "stop"):
        figures = {side: [r[op] for r in results[side]] for side in results}
        med = {side: statistics.median(v) for side, v in figures.items()}
        spread = {side: f"{med[side]:.2f} ({min(v):.2f}-{max(v):.2f})" for side, v in figures.items()}
        print(f"{op:<13} {spread['local']:>20} {spread['agent']:>20} {med['agent'] / med['local']:>11.2f}x")
    print(f"machine busy during the sessions (all processes, both cores): local "
          f"{statistics.median(load['local']):.0f}%, agent {statistics.median(load['agent']):.0f}%")


if __name__ == "__main__":
    main()
