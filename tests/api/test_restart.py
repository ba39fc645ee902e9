"""A server restart re-adopts running replicas instead of starting duplicates."""

from __future__ import annotations

from pathlib import Path

from fermion.testing import ServerProc, kill_replicas, start_server, stop, web
from tests.support import EXAMPLES, TEXT_PHOTON

JOBS = EXAMPLES / "jobs"


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
        assert web.post(f"{server.url}/d/keep/upper", json={"texts": ["still here"]}).json() == ["STILL HERE"]
        d = server.deployment("keep")
        assert d["status"] == "READY"
        assert {(r["id"], server.pid(r["id"])) for r in d["replica_list"]} == before  # same processes, no duplicates
        with server.api() as api:
            all_replicas = api.get("/replicas", params={"all": True}).json()
        assert len(all_replicas) == 2
    finally:
        stop(server.proc)
        kill_replicas(home)


def test_a_running_job_keeps_sending_checkpoints_to_a_restarted_server(tmp_path: Path) -> None:
    """A job attempt reaches its server through the server's workload socket: one that outlived a server
    reaches the new process (on a new port) the moment it serves, with no path to either port."""
    home = tmp_path / "home"
    server = start_server(home)
    try:
        server.cli("job", "run", "--name", "steps", "--workdir", str(JOBS), "--", "python", "steps.py", "80", "0.15")

        def log(srv: ServerProc) -> str:
            with srv.api() as api:
                return "\n".join(api.get("/jobs/steps/logs").json().values())

        server.wait_for(lambda _: "checkpoint snapshot" in log(server))
        assert stop(server.proc) == 0
        server = start_server(home)
        done = server.wait_for(lambda api: (j := api.get("/jobs/steps").json())["status"] in ("SUCCEEDED", "FAILED")
                               and j, timeout=90)
        assert done["status"] == "SUCCEEDED" and len(done["attempts"]) == 1, done  # the same attempt, re-adopted
        text = log(server)
        assert "done: sum of steps 3240" in text
        sent = [i for i, line in enumerate(text.splitlines()) if "checkpoint snapshot" in line and " sent " in line]
        refused = [i for i, line in enumerate(text.splitlines()) if "not sent" in line]
        assert sent and (not refused or sent[-1] > refused[-1]), text  # sent again once the new server served
    finally:
        stop(server.proc)
        kill_replicas(home)
