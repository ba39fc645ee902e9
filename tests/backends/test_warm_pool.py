"""A local cloud's warm pool: spare replica processes, started before they are needed and confined
as replicas are, that new replicas take over with their own files, environment and memory limit;
the pool refills, a killed server's untaken spares are ended by the next leader while its replicas
are kept, and a replica that sets Python's own variables starts in a process of its own."""

from __future__ import annotations

import time
from pathlib import Path

from fermion.testing import kill_replicas, start_server, stop, web, workload_handles
from fermion.testing import replica as replica_http
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
        # it serves with the replica's environment, from its own archive
        assert web.post(f"{server.url}/d/quick/version", json={}).json() == {"version": "7"}
        folder = server.workdir("warm", replica["id"])
        assert folder.name == spare_folder and (folder.parent / ".taken" / spare_folder).read_text() == replica["id"]
        assert (folder.parent / ".replicas" / replica["id"]).read_text() == spare_folder
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

        # a killed server leaves its untaken spare; the next leader's first start ends it (its owner is
        # gone) and fills a pool of its own; the replica is kept (found in the spare's folder) throughout
        old_spare = next(iter(refilled.values()))
        server.proc.kill()
        server.proc.wait(10)
        assert Path(f"/proc/{old_spare}").exists(), "nothing was to stop the spare yet"
        server = start_server(home, CLOUDS)
        assert web.post(f"{server.url}/d/quick/version", json={}).json() == {"version": "7"}
        d = server.deployment("quick")
        assert d["status"] == "READY" and [r["id"] for r in d["replica_list"]] == [replica["id"]]
        assert server.pid(replica["id"]) == spare_pid
        server.cli("deploy", FLAKY, "--name", "later", "--public")
        wait_for("the old spare ended", lambda: not Path(f"/proc/{old_spare}").exists() or
                 Path(f"/proc/{old_spare}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z")
        wait_for("a spare of the new server", lambda: spares(home))
        assert web.post(f"{server.url}/d/quick/version", json={}).json() == {"version": "7"}
        assert stop(server.proc) == 0
        wait_for("the pool emptied at the stop", lambda: not spares(home), timeout=10)
    finally:
        stop(server.proc)
        kill_replicas(home)


def test_a_replica_handed_to_a_spare_is_found_by_its_id_alone(tmp_path: Path) -> None:
    """A start cut short after the takeover (its handle never stored) leaves no unmanaged process:
    status and stop by the replica's id reach the spare that took it, and list_workloads names it."""
    from fermion.backends import Isolation, LocalBackend
    from fermion.backends._protocol import Workload
    from fermion.clouds import CloudConfig
    from fermion.photon.runtime import build_archive

    build_archive(f"{FIXTURE_PHOTONS}:Flaky", tmp_path / "flaky.photon")
    (tmp_path / "home").mkdir()  # hidden from the workloads: the sandbox mounts an empty folder over it
    backend = LocalBackend(CloudConfig(name="warm", warm_pool=1), tmp_path / "workloads",
                           server_home=tmp_path / "home", isolation=Isolation())
    try:
        def replica(wid: str) -> Workload:
            return Workload(id=wid, kind="replica", archive=tmp_path / "flaky.photon", memory_gb=0.5,
                            env={"VERSION": wid})

        cold = backend.start(replica("r-first"))  # the first start fills the pool, a moment later
        assert "dir" not in cold
        wait_for("a spare", lambda: backend._spares, timeout=30)
        taken = backend.start(replica("r-second"))
        assert taken["dir"].startswith("spare-")
        status = wait_for("it listens", lambda: (s := backend.status({"id": "r-second"})).url and s, timeout=30)
        # listening comes before init() has run (a replica answers 503 until then)
        wait_for("it is ready", lambda: replica_http.get(f"{status.url}/healthz").status_code == 200, timeout=30)
        assert status.alive and replica_http.post(f"{status.url}/version", json={}).json() == {"version": "r-second"}
        assert {"id": "r-second", "dir": taken["dir"], "pid": taken["pid"]} in backend.list_workloads()
        backend.stop({"id": "r-second"}, force=True)
        wait_for("it stopped", lambda: not backend.status({"id": "r-second"}).alive, timeout=10)
    finally:
        for handle in backend.list_workloads():  # a failed assertion leaves no process behind
            backend.stop(handle, force=True)
        backend.close()
    assert not backend._spares
