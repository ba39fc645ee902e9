"""What a workload controls cannot reach the server: its environment stays inside the sandbox,
links it plants in its folder are not followed, and it mounts only its own project's models."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from fermion.backends import Isolation, LocalBackend
from fermion.backends._sandbox import Confinement, workload_env
from fermion.clouds import CloudConfig
from fermion.control import DeploymentController, Scheduler
from fermion.gateway import RoutingTable
from fermion.store import ModelVersionRow, Store, default_db_url

ISOLATION = Isolation()


@pytest.mark.skipif(ISOLATION.bwrap is None, reason="bubblewrap cannot run on this machine")
def test_the_workload_env_never_reaches_the_processes_outside_the_sandbox(tmp_path: Path) -> None:
    env = workload_env({"LD_PRELOAD": "/nonexistent/evil.so", "API_KEY": "zz-secret-value-zz"}, {}, tmp_path)
    proc, pid = ISOLATION.start(["/bin/sh", "-c", "echo inside=$API_KEY; sleep 30"], env,
                                Confinement(workdir=tmp_path), tmp_path / "log", "t-env")
    try:
        deadline = time.monotonic() + 10
        while "inside=" not in (tmp_path / "log").read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "inside=zz-secret-value-zz" in (tmp_path / "log").read_text()
        outside = [proc.pid, pid]  # bwrap itself and the sandbox's init: both started outside it
        for p in outside:
            environ = Path(f"/proc/{p}/environ").read_bytes()
            cmdline = Path(f"/proc/{p}/cmdline").read_bytes()
            assert b"LD_PRELOAD" not in environ and b"zz-secret-value-zz" not in environ
            assert b"zz-secret-value-zz" not in cmdline  # not in `ps` either
    finally:
        os.killpg(os.getpgid(pid), 9)
        proc.wait()


def test_links_planted_in_a_workload_folder_are_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "server-home" / "cli.json"
    secret.parent.mkdir()
    secret.write_text('{"token": "TOPSECRET"}')
    cloud = LocalBackend(CloudConfig(name="c"), tmp_path / "workloads", server_home=secret.parent)
    workdir = cloud.root / "r-1"
    workdir.mkdir(parents=True)
    (workdir / "replica.log").symlink_to(secret)
    (workdir / "port").symlink_to("/dev/zero")
    (workdir / "exit_code").symlink_to(secret)
    handle = {"id": "r-1", "pid": 2**22 + 17}
    assert "TOPSECRET" not in cloud.logs(handle)
    status = cloud.status(handle)  # and no endless read of /dev/zero
    assert (status.alive, status.url, status.exit_code) == (False, None, None)
    os.mkfifo(workdir / "job.log")
    assert cloud.logs(handle) == ""  # a FIFO would have hung the reader


def test_a_workload_mounts_only_its_own_projects_models(tmp_path: Path) -> None:
    store = Store(default_db_url(tmp_path))
    mine, theirs = tmp_path / "artifacts" / "mine" / "v1", tmp_path / "artifacts" / "theirs" / "v1"
    for path, project in ((mine, "a"), (theirs, "b")):
        path.mkdir(parents=True)
        with store.session() as s:
            s.add(ModelVersionRow(name=path.parent.name, version=1, artifact_uri=str(path), project=project))
    controller = DeploymentController(store, Scheduler(store, {}), RoutingTable())
    with store.session() as s:
        assert controller.artifact_mounts(s, str(mine), "a") == [mine.resolve()]
        assert controller.artifact_mounts(s, str(mine / "encoder/.."), "a") == [mine.resolve()]
        assert controller.artifact_mounts(s, str(theirs), "a") == []
        assert controller.artifact_mounts(s, str(tmp_path / "artifacts"), "a") == []  # not the whole store
        assert controller.artifact_mounts(s, "/", "a") == []
    store.close()


@pytest.mark.skipif(Isolation().pids_root is None, reason="no writable pids cgroup on this machine")
def test_a_fork_bomb_stops_at_the_task_limit(tmp_path: Path) -> None:
    isolation = Isolation(max_tasks=40)
    spawn = ("import subprocess\nkids = []\n"
             "try:\n    for _ in range(200):\n        kids.append(subprocess.Popen(['sleep', '30']))\n"
             "except OSError as exc:\n    print('refused', type(exc).__name__)\n"
             "print('started', len(kids), flush=True)\nfor k in kids:\n    k.kill()\n")
    env = workload_env({}, {}, tmp_path)
    proc, _ = isolation.start([sys.executable, "-c", spawn], env, Confinement(workdir=tmp_path), tmp_path / "log", "t-bomb")
    proc.wait(60)
    out = (tmp_path / "log").read_text()
    started = int(out.split("started ")[1].split()[0])
    assert "refused" in out and 10 < started < 40, out
    isolation.release("t-bomb")
