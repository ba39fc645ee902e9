"""No silent data loss (issue 10), with real servers, real SQLite and real processes: a database
deleted under a running server stops it; a lost, corrupt or unwritable database is refused at start
with the way out; a full disk answers with its cause; `fermion backup` round-trips the whole state."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fermion.photon.runtime import build_archive
from fermion.testing import ServerProc, fermion_cmd, kill_replicas, start_server, stop, web, workload_pids
from tests.support import FIXTURE_PHOTONS, TEXT_PHOTON

SLEEPER = {"command": ["sleep", "600"], "resources": {"cpus": 0.25, "memory_gb": 0.25}}


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's errors unwrapped (rich folds at 80 columns, also inside a long path); backups sealed
    with a passphrase of the test's."""
    monkeypatch.setenv("COLUMNS", "1000")
    monkeypatch.setenv("FERMION_BACKUP_PASSPHRASE", "a passphrase of the tests")


def cli(home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`fermion ...` with FERMION_HOME at ``home`` (no server needed)."""
    env = {**os.environ, "FERMION_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(fermion_cmd(*args), capture_output=True, text=True, env=env, timeout=timeout)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def wait(what: str, check, timeout: float = 30.0):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.1)
    return value


def serving(server: ServerProc) -> ServerProc:
    """``server`` once its start is done (the port file comes first, before its signal handlers)."""
    wait("the server to serve", lambda: web.get(f"{server.url}/healthz").status_code == 200)
    return server


def start_new_database(home: Path) -> tuple[ServerProc, str]:
    """`fermion server start --new-database`; the server and what it printed at start."""
    port_file = home / "port"
    port_file.unlink(missing_ok=True)
    log = home / f"server-{time.monotonic_ns()}.log"
    env = {**os.environ, "FERMION_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen(fermion_cmd("server", "start", "--port", "0", "--port-file", str(port_file),
                                            "--new-database"), stdout=out, stderr=subprocess.STDOUT, env=env)
    wait("the server to listen", lambda: port_file.exists() or proc.poll() is not None, timeout=60)
    assert proc.poll() is None, log.read_text()
    token = json.loads((home / "cli.json").read_text())["token"]
    return ServerProc(home, f"http://127.0.0.1:{port_file.read_text()}", token, proc, log), log.read_text()


def one_error(result: subprocess.CompletedProcess[str]) -> str:
    """The CLI's error, asserted to be a clear one: non-zero, no traceback; its text on one line."""
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.stderr.startswith("error: "), result.stderr
    return " ".join(result.stderr.split())


def test_backup_while_running_then_the_database_deleted_under_the_server_and_restored(tmp_path: Path) -> None:
    home, backup = tmp_path / "home", tmp_path / "state.fbk"
    server = start_server(home)
    orphans: list[int] = []
    try:
        server.cli("secret", "set", "api-key", "--value", "s3cret-value")
        server.cli("deploy", TEXT_PHOTON, "--name", "keep", "--replicas", "1", "--public")
        replicas = {(r["id"], server.pid(r["id"])) for r in server.deployment("keep")["replica_list"]}
        with server.api() as api:
            assert api.post("/jobs", json={"name": "before", **SLEEPER}).status_code == 201
            (before,) = wait("the job to run", lambda: api.get("/jobs/before").json()["attempts"])
            before_pid = wait("its pid", lambda: workload_pids(home).get(before["id"]))

            made = server.cli("backup", "create", str(backup))
            assert (backup.stat().st_mode & 0o777) == 0o600
            assert "deployments: 1" in made.stderr and "jobs: 1" in made.stderr and "master key" in made.stderr
            assert "sealed" in made.stderr and b"fermion.db" not in backup.read_bytes()  # encrypted
            refused = server.cli("backup", "restore", str(backup), "--force", check=False)
            assert "a Fermion server is running on" in one_error(refused)

            # started after the backup: once the database is restored, no row knows it
            assert api.post("/jobs", json={**SLEEPER, "name": "after",
                                           "command": ["sh", "-c", "echo started; exec sleep 600"]}).status_code == 201
            (after,) = wait("the job to run", lambda: api.get("/jobs/after").json()["attempts"])
            orphans.append(wait("its pid", lambda: workload_pids(home).get(after["id"])))
            # its wrapper has asked the server for a checkpoint and started the command: it runs on its own now
            wait("its command", lambda: "started" in "".join(api.get("/jobs/after/logs").json().values()))

        (home / "fermion.db").unlink()  # as `rm` would: its -wal and -shm stay
        began = time.monotonic()
        server.proc.wait(10)
        assert server.proc.returncode != 0 and time.monotonic() - began < 5
        log = " ".join(server.log.read_text().split())
        assert f"the database file {home / 'fermion.db'} was deleted while the server ran" in log
        assert "fermion backup restore" in log and "Traceback" not in log
        assert all(alive(pid) for pid in [before_pid, *orphans, *(p for _, p in replicas)])  # they run on

        restored = cli(home, "backup", "restore", str(backup))
        assert restored.returncode == 0, restored.stderr
        assert "kept the previous fermion.db-wal as" in restored.stderr  # a new file must never meet the old WAL
        assert "master.key" not in restored.stderr  # the home's key is the backup's: nothing to replace
        again = cli(home, "backup", "restore", str(backup))
        assert again.returncode == 4 and "is not empty" in one_error(again) and "--force" in again.stderr

        server = start_server(home)  # the same cli.json: the restored database knows its token
        d = server.deployment("keep")
        assert d["status"] == "READY"
        assert {(r["id"], server.pid(r["id"])) for r in d["replica_list"]} == replicas  # re-adopted, not replaced
        assert web.post(f"{server.url}/d/keep/upper", json={"texts": ["back"]}).json() == ["BACK"]
        with server.api() as api:
            job = api.get("/jobs/before").json()
            assert job["status"] == "RUNNING" and [a["id"] for a in job["attempts"]] == [before["id"]]
            assert alive(before_pid)
            assert api.get("/jobs/after").status_code == 404
            wait("the orphan to be stopped", lambda: not alive(orphans[0]), timeout=10)
            events = api.get("/events", params={"object_id": after["id"]}).json()
            assert [(e["kind"], e["new"]) for e in events] == [("orphan", "stopped")]
            assert f"stopped workload {after['id']}" in server.log.read_text()

            # the secret opens: the backup brought the master key it is sealed under
            code = "import hashlib, os; print('sha', hashlib.sha256(os.environ['V'].encode()).hexdigest())"
            assert api.post("/jobs", json={"name": "reads", "command": ["python", "-c", code],
                                           "env": {"V": "secret:api-key"}, **{"resources": SLEEPER["resources"]}}
                            ).status_code == 201
            wait("the job to succeed", lambda: api.get("/jobs/reads").json()["status"] == "SUCCEEDED")
            logs = "".join(api.get("/jobs/reads/logs").json().values())
            assert f"sha {hashlib.sha256(b's3cret-value').hexdigest()}" in logs
    finally:
        stop(server.proc)
        kill_replicas(home)
        for pid in orphans:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_lost_database_is_refused_at_start_and_a_new_one_keeps_the_old_credentials(tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = serving(start_server(home))
    old_token = server.token
    assert stop(server.proc) == 0
    for f in home.glob("fermion.db*"):
        f.unlink()

    refused = one_error(cli(home, "server", "start", "--port", "0"))
    assert f"the database sqlite:///{home / 'fermion.db'} is missing, but this home was used before" in refused
    assert "cli.json" in refused and "server-id" in refused
    assert "fermion backup restore" in refused and "--new-database" in refused
    assert not (home / "fermion.db").exists() and json.loads((home / "cli.json").read_text())["token"] == old_token

    server, said = start_new_database(home)
    try:
        (kept,) = home.glob("cli.json.*.bak")
        assert f"the old cli.json is kept as {kept}" in said
        assert json.loads(kept.read_text())["token"] == old_token and (kept.stat().st_mode & 0o777) == 0o600
        assert server.token != old_token
        with server.api() as api:
            assert api.get("/deployments").status_code == 200
        assert web.get(f"{server.url}/api/v1/deployments", headers={"Authorization": f"Bearer {old_token}"}
                       ).status_code == 401
    finally:
        stop(server.proc)
    again = one_error(cli(home, "server", "start", "--port", "0", "--new-database"))
    assert "--new-database starts anew only where the database is missing, empty or corrupt" in again


def test_a_corrupt_database_is_refused_with_the_way_to_restore(tmp_path: Path) -> None:
    from fermion.store import EventRow, Store

    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "fermion.db").write_bytes(os.urandom(64 << 10))
    # a real database cut in half, as a full disk or a bad copy leaves it
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    store = Store(f"sqlite:///{truncated / 'fermion.db'}")
    with store.session() as s:
        s.add_all(EventRow(kind="cloud", object_id=f"c{i}", reason="x" * 200) for i in range(3000))
    with store.engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    data = (truncated / "fermion.db").read_bytes()
    (truncated / "fermion.db").write_bytes(data[: len(data) // 2])
    for home in (garbage, truncated):
        before = (home / "fermion.db").read_bytes()
        error = one_error(cli(home, "server", "start", "--port", "0"))
        assert f"the database {home / 'fermion.db'} is corrupt" in error
        assert "fermion backup restore BACKUP --force" in error and "--new-database" in error
        assert (home / "fermion.db").read_bytes() == before and not (home / "cli.json").exists()


@contextmanager
def mounted(target: Path, *options: str) -> Iterator[None]:
    """``mount ... target`` for the block (root only: skipped where mounting is not allowed)."""
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", *options, str(target)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def test_a_read_only_home_is_refused_at_start(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with mounted(home, "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"):
        error = one_error(cli(home, "server", "start", "--port", "0"))
    assert f"FERMION_HOME {home} is on a read-only file system" in error and "writable" in error


def test_a_full_disk_answers_507_with_its_cause_and_the_cli_shows_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    archive = tmp_path / "v.photon"
    build_archive(f"{FIXTURE_PHOTONS}:Versioned", archive)
    with mounted(home, "-t", "tmpfs", "-o", "size=16m", "tmpfs"):
        server = start_server(home)
        try:
            serving(server)  # its start's own writes done before the disk fills
            filler = home / "filler"
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
            try:  # fill the disk to the last block
                for size in (1 << 20, 4096, 1):
                    try:
                        while os.write(fd, b"\0" * size):
                            pass
                    except OSError:
                        pass
            finally:
                os.close(fd)
            full = server.cli("secret", "set", "k", "--value", "v", check=False)
            message = " ".join(full.stderr.split())
            assert full.returncode != 0 and "HTTP 507: the disk that holds the server's database is full" in message
            assert "free space" in message and "HTTP 500" not in message and "Traceback" not in message
            with server.api() as api:
                upload = api.post("/photons", files={"file": ("v.photon", archive.read_bytes(), "application/zip")})
                assert upload.status_code == 507 and "disk is full" in upload.json()["error"]["message"]
                filler.unlink()
                assert api.put("/secrets/k", json={"value": "v"}).status_code == 200  # space again: it works
            said = server.log.read_text()
            assert "database or disk is full" in said and "Traceback" not in said  # the server says why, in a line
        finally:
            stop(server.proc)
            kill_replicas(home)


def test_a_second_server_on_the_same_home_is_refused(tmp_path: Path) -> None:
    """Both would have the same identity: both would lead, and place the same replicas twice."""
    home = tmp_path / "home"
    server = start_server(home)
    try:
        second = cli(home, "server", "start", "--port", "0", timeout=60)
        assert second.returncode != 0 and "already running on" in second.stderr, second.stderr
        assert "its own FERMION_HOME" in second.stderr and "Traceback" not in second.stderr
        assert server.proc.poll() is None
    finally:
        stop(server.proc)
