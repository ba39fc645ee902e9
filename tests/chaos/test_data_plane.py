"""Serving under faults of the control plane: load through gateways while the server is killed
and restarted, a gateway dies, the database is locked, or the disk fills up. Every answer is
checked; each test reports requests sent and failed (the table at the end of the run)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fermion.testing import (
    GatewayProc,
    Load,
    ServerProc,
    fermion_cmd,
    kill_replicas,
    kill_workloads,
    start_gateway,
    start_server,
    stop,
    web,
)
from tests.chaos import CLOUDS, PHOTON
from tests.support import report_fault


def deploy(server: ServerProc, name: str, replicas: int = 2) -> None:
    server.cli("deploy", PHOTON, "--name", name, "--replicas", str(replicas), "--public",
               "--cloud", "alpha", "--cloud", "beta")


def record(fault: str, load: Load) -> None:
    report_fault(fault, load.ok + len(load.failures), len(load.failures))


def answers(url: str, timeout: float = 15) -> dict:
    """The first 200 answer from ``url``, waiting for the route to reach a gateway."""
    deadline = time.monotonic() + timeout
    while True:
        response = web.post(url, json={}, timeout=10)
        if response.status_code == 200:
            return response.json()
        assert time.monotonic() < deadline, f"{url}: {response.status_code} {response.text}"
        time.sleep(0.1)


@pytest.fixture()
def home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "home"
    yield home
    kill_replicas(home)


def test_server_kill_and_restart_lose_no_request_through_gateways(tmp_path: Path, home: Path) -> None:
    server = start_server(home, CLOUDS)
    gateways: list[GatewayProc] = []
    try:
        deploy(server, "steady")
        port = int(server.url.rsplit(":", 1)[1])
        states = [tmp_path / f"gw{i}" / "table.json" for i in range(2)]
        gateways = [start_gateway(tmp_path / f"gw{i}", [server.url], server.token, state=states[i]) for i in range(2)]
        replicas = {r["id"] for r in server.deployment("steady")["replica_list"]}
        answers(f"{gateways[0].url}/d/steady/version")

        with Load(f"{gateways[0].url}/d/steady/version", {}) as load:
            time.sleep(1)
            server.proc.kill()  # kill -9: no drain, no goodbye
            server.proc.wait()
            time.sleep(3)
            while_down = load.ok
            server = start_server(home, CLOUDS, port=port)
            time.sleep(2)
        record("server kill -9, 3 s down, restart (through a gateway)", load)
        assert load.failures == []
        assert load.ok - while_down > 20 and while_down > 20
        assert {a["replica"] for a in load.answers} == replicas  # the same replicas throughout

        # the gateways follow the restarted server: a deployment made now reaches both
        deploy(server, "later", replicas=1)
        for gateway in gateways:
            assert answers(f"{gateway.url}/d/later/version")["version"] == "?"

        # one gateway dies; the other serves on
        with Load(f"{gateways[1].url}/d/steady/version", {}) as load:
            time.sleep(0.5)
            gateways[0].proc.kill()
            gateways[0].proc.wait()
            time.sleep(1.5)
        record("one of two gateways killed (load on the other)", load)
        assert load.failures == [] and load.ok > 20

        # with the server down, a gateway started anew serves from the table it saved
        server.proc.kill()
        server.proc.wait()
        reborn = start_gateway(tmp_path / "gw0", [server.url], server.token, state=states[0])
        gateways.append(reborn)
        assert reborn.health()["routes"] == 2 and reborn.health()["last_error"]
        assert answers(f"{reborn.url}/d/steady/version", timeout=2)["version"] == "?"
        assert states[0].stat().st_mode & 0o777 == 0o600  # it holds the replicas' secrets
    finally:
        for gateway in gateways:
            stop(gateway.proc)
        stop(server.proc)


def test_in_process_gateway_serves_through_a_restart(home: Path) -> None:
    """With no gateway process, the server's own gateway is down while the server is, but has
    every route again the moment it listens: no request fails after the restart."""
    server = start_server(home, CLOUDS)
    try:
        deploy(server, "own")
        port = int(server.url.rsplit(":", 1)[1])
        assert stop(server.proc) == 0
        server = start_server(home, CLOUDS, port=port)
        with Load(f"{server.url}/d/own/version", {}) as load:
            time.sleep(2)
        record("server restart (its own gateway, load from the moment it listens)", load)
        assert load.failures == [] and load.ok > 20
    finally:
        stop(server.proc)


def scale_through_an_outage(server: ServerProc, name: str, fault: str, begin, end) -> None:  # noqa: ANN001
    """Load on ``name`` while the database is out for 5 s (``begin()`` .. ``end()``), with a scale
    to 3 asked for during the outage: no request may fail, and the scale happens afterwards."""
    deploy(server, name)
    with Load(f"{server.url}/d/{name}/version", {}) as load:
        time.sleep(0.5)
        begin()
        scale = subprocess.Popen(fermion_cmd("deployment", "scale", name, "3"), env=server.env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(5)
        end()
        assert scale.wait(60) == 0, scale.stdout.read() if scale.stdout else ""
        server.wait_for(lambda api: api.get(f"/deployments/{name}").json()["ready"] == 3, timeout=60)
        time.sleep(0.5)
    record(fault, load)
    assert load.failures == [] and load.ok > 50
    assert server.proc.poll() is None


def test_database_locked_for_5_s_under_load(home: Path) -> None:
    """Another process holds SQLite's write lock for 5 s."""
    server = start_server(home, CLOUDS)
    blocker = sqlite3.connect(home / "fermion.db", timeout=30)
    try:
        scale_through_an_outage(server, "locked", "database write-locked for 5 s (SQLite)",
                                lambda: blocker.execute("BEGIN EXCLUSIVE"), blocker.rollback)
    finally:
        blocker.close()
        stop(server.proc)


def test_postgresql_frozen_for_5_s_under_load(tmp_path: Path, postgres, pg_url: str) -> None:  # noqa: ANN001
    """Every PostgreSQL process stopped (SIGSTOP) for 5 s: queries hang rather than fail."""
    workloads = tmp_path / "workloads"
    server = start_server(tmp_path / "home", CLOUDS, db_url=pg_url, env={"FERMION_WORKLOADS": str(workloads)})
    processes = [postgres.proc.pid, *_children(postgres.proc.pid)]

    def signal_all(sig: int) -> None:
        for pid in processes:
            os.kill(pid, sig)

    try:
        scale_through_an_outage(server, "frozen", "database frozen for 5 s (PostgreSQL, SIGSTOP)",
                                lambda: signal_all(signal.SIGSTOP), lambda: signal_all(signal.SIGCONT))
    finally:
        signal_all(signal.SIGCONT)
        stop(server.proc)
        kill_workloads(workloads)


def _children(pid: int) -> list[int]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(proc.name))
            except (OSError, ValueError, IndexError):
                pass
    return out


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs (we are root where CI runs; elsewhere the test is skipped)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        kill_workloads(mount)
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_under_load(small_disk: Path) -> None:
    """FERMION_HOME's disk fills up: serving goes on, and once space is freed the control plane
    carries out what it could not write before."""
    home = small_disk / "home"
    server = start_server(home, CLOUDS)
    filler = small_disk / "filler"
    try:
        deploy(server, "full")
        with Load(f"{server.url}/d/full/version", {}) as load:
            time.sleep(0.5)
            with filler.open("wb", buffering=0) as f:  # every byte left (unbuffered: no flush to fail on close)
                try:
                    while True:
                        f.write(b"\0" * (1 << 20))
                except OSError:
                    pass
            refused = server.cli("deployment", "scale", "full", "3", check=False)
            time.sleep(2)
            filler.unlink()
            if refused.returncode != 0:
                assert "500" not in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
                server.cli("deployment", "scale", "full", "3")
            server.wait_for(lambda api: api.get("/deployments/full").json()["ready"] == 3, timeout=60)
            time.sleep(0.5)
        record("FERMION_HOME's disk full for 2 s", load)
        assert load.failures == [] and load.ok > 50
        assert server.proc.poll() is None
    finally:
        stop(server.proc)
