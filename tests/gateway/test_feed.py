"""The routing table gateway processes follow: only a server admin reads it (it holds replica
secrets), a change answers a waiting poll at once, and a gateway refuses what it does not serve."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx

from fermion.testing import running_server, start_gateway, stop, web
from tests.support import FIXTURE_PHOTONS


def test_the_table_is_for_admins_and_a_change_ends_the_long_poll(tmp_path: Path) -> None:
    with running_server(tmp_path / "home") as server:
        viewer = json.loads(server.cli("token", "create", "peek", "--role", "viewer", "--json").stdout)["token"]
        for token, status in ((None, 401), (viewer, 403)):
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            assert web.get(f"{server.url}/api/v1/gateway/table", headers=headers).status_code == status
        with server.api() as api:
            first = api.get("/gateway/table").json()
            assert first["leader"] is True and first["routes"] == [] and first["admins"]
            # no replica: its route is published once, and then nothing changes
            deployed = threading.Timer(1.0, server.cli, ("deploy", f"{FIXTURE_PHOTONS}:Versioned", "--name", "fresh",
                                                         "--public", "--replicas", "0"))
            deployed.start()
            asked = time.monotonic()
            changed = api.get("/gateway/table", params={"after": first["version"], "wait": 20}).json()
            waited = time.monotonic() - asked
            deployed.join()
            assert changed["version"] != first["version"] and 0.5 < waited < 15
            # nothing changes: the poll ends after ``wait`` with the same version
            same = api.get("/gateway/table", params={"after": changed["version"], "wait": 0.3}).json()
            assert same["version"] == changed["version"]
            assert api.get("/gateway/table", params={"wait": 31}).status_code == 422

        gateway = start_gateway(tmp_path / "gw", [server.url], server.token)
        try:
            assert web.get(f"{gateway.url}/api/v1/deployments").status_code == 404  # no API here
            assert web.get(f"{gateway.url}/metrics").status_code == 401
            metrics = web.get(f"{gateway.url}/metrics", headers={"Authorization": f"Bearer {server.token}"})
            assert metrics.status_code == 200 and "fermion_gateway_requests" in metrics.text
            assert web.post(f"{gateway.url}/d/nope/x").status_code == 404
        finally:
            stop(gateway.proc)


def _children(pid: int) -> set[int]:
    return {int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _answering_pids(url: str, connections: int = 60) -> set[int]:
    """The worker pids that answered ``connections`` fresh connections (the kernel picks one per connection)."""
    pids = set()
    for _ in range(connections):
        with httpx.Client() as http:  # a new connection each time
            pids.add(http.get(f"{url}/healthz").json()["pid"])
    return pids


def test_gateway_workers_share_one_port_and_a_dead_one_is_replaced(tmp_path: Path) -> None:
    with running_server(tmp_path / "home") as server:
        server.cli("deploy", f"{FIXTURE_PHOTONS}:Versioned", "--name", "spread", "--public", "--env", "VERSION=w")
        gateway = start_gateway(tmp_path / "gw", [server.url], server.token, workers=2)
        try:
            workers = _children(gateway.proc.pid)
            assert len(workers) == 2
            assert _answering_pids(gateway.url) == workers  # connections are spread over both
            with httpx.Client(base_url=gateway.url) as http:
                for _ in range(5):
                    assert http.post("/d/spread/version").status_code == 200
            victim = sorted(workers)[0]
            os.kill(victim, signal.SIGKILL)
            while _alive(victim):  # until its socket has left the port's group: connections queued
                time.sleep(0.01)   # on it at the moment of death are reset, as on any crash
            # the other worker goes on serving at once; the supervisor starts a replacement
            for _ in range(20):
                with httpx.Client() as http:
                    assert http.post(f"{gateway.url}/d/spread/version").status_code == 200
            deadline = time.monotonic() + 60
            while True:
                now = _children(gateway.proc.pid)
                if len(now) == 2 and victim not in now and len(_answering_pids(gateway.url, 30)) == 2:
                    break
                assert time.monotonic() < deadline, now
                time.sleep(0.5)
        finally:
            stop(gateway.proc)
        assert gateway.proc.returncode == 0
        assert not any(Path(f"/proc/{pid}").exists() for pid in now)  # the workers stopped with it
