"""Each of these broke on the control plane before reconcile-per-object: orphans, a stalled
gateway, lost exit codes, double-booked capacity."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fermion.backends import FaultInjector, LocalBackend
from fermion.clouds import CloudConfig
from fermion.control import DeploymentController, Scheduler
from fermion.gateway import RoutingTable
from fermion.photon.runtime import build_archive
from fermion.store import DeploymentRow, PhotonRow, ReplicaRow, Store, default_db_url
from fermion.testing import running_server, web
from tests.support import FIXTURE_PHOTONS, TEXT_PHOTON

SMALL = {"cpus": 0.25, "memory_gb": 0.25}


class Harness:
    """A controller over a real local backend (real processes) and a real SQLite store, in this process."""

    def __init__(self, tmp: Path) -> None:
        (tmp / "home").mkdir()
        self.store = Store(default_db_url(tmp / "home"))
        self.backend = LocalBackend(CloudConfig(name="a"), tmp / "workloads", server_home=tmp / "home")
        self.scheduler = Scheduler(self.store, {"a": FaultInjector(self.backend)})
        self.controller = DeploymentController(self.store, self.scheduler, RoutingTable())
        manifest, _ = build_archive(TEXT_PHOTON, tmp / "text.photon")
        with self.store.session() as s:
            s.add(PhotonRow(sha256=manifest.sha256, name=manifest.name, archive_path=str(tmp / "text.photon"),
                            manifest=manifest.model_dump()))
        self.photon = manifest.sha256

    def deploy(self, name: str, replicas: int = 1) -> None:
        with self.store.session() as s:
            s.add(DeploymentRow(name=name, photon_sha256=self.photon, replicas=replicas, resources=dict(SMALL)))

    def replicas(self, name: str) -> list[ReplicaRow]:
        with self.store.session() as s:
            return list(s.query(ReplicaRow).filter_by(deployment=name).order_by(ReplicaRow.created_at))

    def started_pids(self) -> set[int]:
        """Every workload process the backend started that is still alive, whatever the store says."""
        alive = set()
        for pid_file in self.backend.root.glob("*/pid"):
            pid = int(pid_file.read_text())
            if Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]:
                alive.add(pid)
        return alive

    def recorded_pids(self) -> set[int]:
        return {r.handle["pid"] for name in ("good", "bad") for r in self.replicas(name)
                if r.handle and r.state not in ("TERMINATED", "FAILED")}

    def close(self) -> None:
        for pid in self.started_pids():
            os.killpg(os.getpgid(pid), 9)
        self.controller.stop()
        self.store.close()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        h.close()


def test_a_bug_in_one_deployment_stays_there_and_leaks_nothing(harness: Harness) -> None:
    harness.deploy("good")
    harness.deploy("bad")
    opened = harness.controller.open_env

    def broken(s, env, purpose, project):  # noqa: ANN001, ANN202 - the controller's signature
        if purpose.endswith("bad"):
            raise RuntimeError("a bug reconciling this deployment")
        return opened(s, env, purpose, project)

    harness.controller.open_env = broken
    for _ in range(3):
        harness.controller.tick()
    good = [r for r in harness.replicas("good") if r.state != "TERMINATED"]
    assert len(good) == 1 and good[0].state == "PROVISIONING" and good[0].handle is not None
    assert all(r.handle is None for r in harness.replicas("bad"))
    assert harness.started_pids() == harness.recorded_pids()  # every process has its row: no orphan


def test_a_crash_between_start_and_write_back_leaves_a_row_that_is_cleaned_up(harness: Harness) -> None:
    harness.deploy("good")
    real_write = harness.controller._write_starts
    harness.controller._write_starts = lambda *a: (_ for _ in ()).throw(RuntimeError("server killed here"))
    harness.controller.tick()  # the intent is written, the process starts, the handle is never written
    (row,) = harness.replicas("good")
    assert row.state == "PROVISIONING" and row.handle is None
    orphan = harness.started_pids()
    assert len(orphan) == 1
    harness.controller._write_starts = real_write
    harness.controller.tick()
    rows = {r.id: r for r in harness.replicas("good")}
    assert rows[row.id].state == "TERMINATED" and "interrupted" in rows[row.id].reason
    deadline = time.monotonic() + 10
    while orphan & harness.started_pids() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not orphan & harness.started_pids()  # the process it started was found by id and stopped
    harness.controller.tick()
    assert harness.started_pids() == harness.recorded_pids() and len(harness.recorded_pids()) == 1


def test_a_photon_that_exits_says_with_which_code(tmp_path: Path) -> None:
    with running_server(tmp_path / "home") as server:
        server.cli("deploy", f"{FIXTURE_PHOTONS}:CrashOnInit", "--name", "crashy", "--public", "--no-wait")
        d = server.wait_for(lambda api: (d := api.get("/deployments/crashy").json())["last_error"] and d)
        assert "exited with code" in d["last_error"] and "CUDA driver missing" in d["last_error"]


TWO_CPUS = """
clouds:
  - name: small
    capacity: {cpus: 2, memory_gb: 8}
"""


def test_replicas_and_job_attempts_share_one_capacity_ledger(tmp_path: Path) -> None:
    with running_server(tmp_path / "home", TWO_CPUS) as server, server.api() as api:
        # both at once: two 1-cpu replicas and a 1-cpu job on a 2-cpu cloud
        def job() -> None:
            api.post("/jobs", json={"name": "sleeper", "command": ["python", "-c", "import time; time.sleep(60)"],
                                    "resources": {"cpus": 1, "memory_gb": 1}})

        t = threading.Thread(target=job)
        t.start()
        server.cli("deploy", TEXT_PHOTON, "--name", "pair", "--replicas", "2", "--cpus", "1", "--memory-gb", "1",
                   "--public", "--no-wait")
        t.join()
        deadline = time.monotonic() + 20
        worst = 0.0
        while time.monotonic() < deadline:
            replicas = [r for r in api.get("/replicas").json() if r["state"] not in ("PENDING", "DRAINING")]
            attempts = [a for a in api.get("/jobs/sleeper").json()["attempts"] if a["state"] in ("STARTING", "RUNNING")]
            worst = max(worst, len(replicas) + len(attempts))
            time.sleep(0.1)
        assert worst <= 2  # never more than the cloud holds
        waiting = [r["reason"] for r in api.get("/replicas").json() if r["state"] == "PENDING"]
        job_reason = api.get("/jobs/sleeper").json()["reason"]
        assert waiting or "waiting for a cloud" in job_reason
        assert any("0 cpus" in x for x in [*waiting, job_reason])


def test_the_gateway_does_not_wait_on_a_locked_database(tmp_path: Path) -> None:
    with running_server(tmp_path / "home") as server:
        server.cli("deploy", TEXT_PHOTON, "--name", "fast", "--public")
        url = f"{server.url}/d/fast/upper"
        assert web.post(url, json={"texts": ["warm"]}).status_code == 200
        locked = threading.Event()

        def hold_the_database() -> None:  # another writer holds SQLite's write lock for 3 s
            conn = sqlite3.connect(server.home / "fermion.db", timeout=30)
            conn.execute("BEGIN IMMEDIATE")
            locked.set()
            time.sleep(3)
            conn.rollback()
            conn.close()

        holder = threading.Thread(target=hold_the_database)
        holder.start()
        locked.wait(10)
        api = server.api()  # an API write waits for the lock, in the thread pool, not on the loop
        writer = threading.Thread(target=lambda: api.post("/deployments/fast/scale", json={"replicas": 1}))
        writer.start()
        slowest = 0.0
        with httpx.Client(timeout=30) as http:
            deadline = time.monotonic() + 2.5
            while time.monotonic() < deadline:
                t0 = time.monotonic()
                assert http.post(url, json={"texts": ["x"]}).status_code == 200
                slowest = max(slowest, time.monotonic() - t0)
        writer.join()
        holder.join()
        api.close()
        assert slowest < 0.5, f"a gateway call took {slowest * 1000:.0f} ms while the database was locked"


ONE_CPU = """
clouds:
  - name: one
    capacity: {cpus: 1, memory_gb: 4}
"""


def test_a_cancelled_job_stops_and_frees_its_capacity(tmp_path: Path) -> None:
    sleeper = ["python", "-c", "import time; print('up', flush=True); time.sleep(120)"]
    with running_server(tmp_path / "home", ONE_CPU) as server, server.api() as api:
        for name in ("first", "second"):
            assert api.post("/jobs", json={"name": name, "command": sleeper}).status_code == 201
        server.wait_for(lambda a: a.get("/jobs/first").json()["status"] == "RUNNING")
        assert "waiting for a cloud" in server.wait_for(
            lambda a: (r := a.get("/jobs/second").json()["reason"]) and "waiting" in r and r)
        pid = server.pid(api.get("/jobs/first").json()["attempts"][0]["id"])
        cancelled = api.post("/jobs/first/cancel").json()
        assert cancelled["status"] == "CANCELLED" and cancelled["attempts"][0]["state"] == "CANCELLED"
        # nothing of it runs once it reads CANCELLED: also where the cancel came before the job's first process
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2], cancelled
        server.wait_for(lambda a: a.get("/jobs/second").json()["status"] == "RUNNING", timeout=30)
