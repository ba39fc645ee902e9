"""A local cloud's warm pool: spare replica processes, started before they are needed and confined
as replicas are, that new replicas take over with their own files, environment and memory limit;
the pool refills, a server restart keeps the replicas and ends the untaken spares, and a replica
that sets Python's own variables starts in a process of its own."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx

from fermion.testing import kill_replicas, start_server, stop, workload_handles
from tests.support import FIXTURE_PHOTONS

FLAKY = f"{FIXTURE_PHOTONS}:Flaky"
CLOUDS = "clouds:\n  - name: warm\n    warm_pool: 1\n    capacity: {cpus: 4, memory_gb: 8}\n"


def spares(home: Path) -> dict[str, int]:
    """The pool's untaken spares: folder -> pid, of live processes."""
    out = {}
    root = home.parent / f"{home.name}-workloads" / "warm"
    for folder in root.glob("spare-*"):
        if (root / ".taken" / folder.name).exists() or not (folder / "pid").exists():
            continue
        pid = int((folder / "pid").read_text())
        if Path(f"/proc/{pid}").exists():
            out[folder.name] = pid
    return out


def started_at(pid: int) -> float:
    """A process's start, in seconds since boot."""
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    return ticks / os.sysconf("SC_CLK_TCK")


def wait_for(what: str, predicate, timeout: float = 30):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.1)
    return value


def test_replicas_take_over_spares_with_their_own_env_and_limits(tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = start_server(home, CLOUDS)
    try:
        assert not spares(home), "the pool starts with the first replica (only a leader starts replicas)"
        server.cli("deploy", FLAKY, "--name", "first", "--public")
        assert "dir" not in workload_handles(home)[server.deployment("first")["replica_list"][0]["id"]]
        spare_folder, spare_pid = next(iter(wait_for("a spare", lambda: spares(home)).items()))
        server.cli("deploy", FLAKY, "--name", "quick", "--public", "--env", "VERSION=7", "--memory-gb", "0.5")
        replica = server.deployment("quick")["replica_list"][0]
        handle = workload_handles(home)[replica["id"]]
        assert handle == {"id": replica["id"], "pid": spare_pid, "dir": spare_folder}  # the spare became the replica
        assert started_at(spare_pid) < time.clock_gettime(time.CLOCK_BOOTTIME) - 0.2
        # it serves with the replica's environment, from its own archive
        assert httpx.post(f"{server.url}/d/quick/version", json={}).json() == {"version": "7"}
        folder = server.workdir("warm", replica["id"])
        assert folder.name == spare_folder and (folder.parent / ".taken" / spare_folder).read_text() == replica["id"]
        assert not (folder / "assign.json").exists(), "the assignment (the replica's env) was left behind"
        assert "FERMION_REPLICA_ID" not in (folder / "replica.log").read_text()
        cgroup = Path("/sys/fs/cgroup/memory/fermion") / f"warm-{spare_folder}" / "memory.limit_in_bytes"
        if cgroup.exists():  # where the machine gives memory limits: the replica's, not the pool's
            assert int(cgroup.read_text()) == 512 << 20
        # the pool refills, after a pause that leaves the cores to the replica that just started
        refilled = wait_for("a new spare", lambda: {f: p for f, p in spares(home).items() if f != spare_folder})
        assert len(refilled) == 1

        # a replica that sets PYTHONPATH needs an interpreter started with it: no spare for it
        server.cli("deploy", FLAKY, "--name", "own", "--public", "--env", f"PYTHONPATH={tmp_path}")
        own = server.deployment("own")["replica_list"][0]
        assert "dir" not in workload_handles(home)[own["id"]] and spares(home) == refilled

        # a restart keeps the replica (found in the spare's folder) and ends the untaken spare
        assert stop(server.proc) == 0
        server = start_server(home, CLOUDS)
        assert httpx.post(f"{server.url}/d/quick/version", json={}).json() == {"version": "7"}
        d = server.deployment("quick")
        assert d["status"] == "READY" and [r["id"] for r in d["replica_list"]] == [replica["id"]]
        assert server.pid(replica["id"]) == spare_pid
        old_spare = next(iter(refilled.values()))
        wait_for("the old spare ended", lambda: not Path(f"/proc/{old_spare}").exists() or
                 Path(f"/proc/{old_spare}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z")
        server.cli("deploy", FLAKY, "--name", "later", "--public")  # the new leader's first start fills its pool
        wait_for("a spare of the new server", lambda: spares(home))
        assert stop(server.proc) == 0
        wait_for("the pool emptied at the stop", lambda: not spares(home), timeout=10)
    finally:
        stop(server.proc)
        kill_replicas(home)
