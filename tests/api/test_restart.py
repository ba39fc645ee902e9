"""A server restart re-adopts running replicas instead of starting duplicates."""

from __future__ import annotations

from pathlib import Path

import httpx

from fermion.testing import kill_replicas, start_server, stop
from tests.support import TEXT_PHOTON


def test_restart_readopts_running_replicas(tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = start_server(home)
    try:
        server.cli("deploy", TEXT_PHOTON, "--name", "keep", "--replicas", "2", "--public")
        before = {(r["id"], server.pid(r["id"])) for r in server.deployment("keep")["replica_list"]}
        assert len(before) == 2
        assert stop(server.proc) == 0
        # the replicas outlive the server
        for _, pid in before:
            assert Path(f"/proc/{pid}").exists()
        server = start_server(home)
        assert httpx.post(f"{server.url}/d/keep/upper", json={"texts": ["still here"]}).json() == ["STILL HERE"]
        d = server.deployment("keep")
        assert d["status"] == "READY"
        assert {(r["id"], server.pid(r["id"])) for r in d["replica_list"]} == before  # same processes, no duplicates
        with server.api() as api:
            all_replicas = api.get("/replicas", params={"all": True}).json()
        assert len(all_replicas) == 2
    finally:
        stop(server.proc)
        kill_replicas(home)
