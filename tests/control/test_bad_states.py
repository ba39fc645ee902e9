"""States that never healed on the old control plane (from the reliability issue): each now ends,
or refuses to start, with its real cause."""

from __future__ import annotations

import subprocess
from pathlib import Path

from fermion.testing import fermion_cmd, kill_replicas, running_server, start_server, stop
from tests.support import FIXTURE_PHOTONS


def test_a_job_whose_command_does_not_exist_fails_with_the_cause(tmp_path: Path) -> None:
    with running_server(tmp_path / "home") as server, server.api() as api:
        assert api.post("/jobs", json={"name": "nowhere", "command": ["/nonexistent/bin"],
                                       "max_restarts": 1}).status_code == 201
        job = server.wait_for(lambda a: (j := a.get("/jobs/nowhere").json())["status"] in ("FAILED", "SUCCEEDED") and j,
                              timeout=60)
    assert job["status"] == "FAILED" and len(job["attempts"]) == 2  # its own error: retried once, not "preempted"
    assert all(a["state"] == "FAILED" and a["exit_code"] == 127 for a in job["attempts"])
    assert "cannot run '/nonexistent/bin'" in job["reason"] and "No such file" in job["reason"]


def test_a_cloud_with_no_region_is_refused_at_start_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "clouds.yaml").write_text("clouds:\n  - name: empty\n    regions: []\n")
    out = subprocess.run(fermion_cmd("server", "start", "--port", "0", "--clouds", str(tmp_path / "clouds.yaml")),
                         capture_output=True, text=True, timeout=60, env={"FERMION_HOME": str(tmp_path / "home"),
                                                                          "PATH": "/usr/bin:/bin"})
    assert out.returncode != 0 and "regions" in out.stderr + out.stdout and "Traceback" not in out.stderr


TWO = """
clouds:
  - name: steady
  - name: flaky
"""


def test_an_injected_outage_survives_a_restart(tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = start_server(home, TWO)
    try:
        server.cli("cloud", "fail", "flaky")
        assert stop(server.proc) == 0
        server = start_server(home, TWO)
        with server.api() as api:
            clouds = {c["name"]: c for c in api.get("/clouds").json()}
            assert clouds["flaky"]["health"] == "unhealthy" and clouds["steady"]["health"] == "healthy"
            job = api.post("/jobs", json={"name": "where", "command": ["true"], "clouds": ["flaky"]}).json()
        assert job["status"] == "PENDING"
        waiting = server.wait_for(lambda a: (r := a.get("/jobs/where").json()["reason"]) and r)
        assert "flaky" in waiting and "unhealthy" in waiting
        server.cli("cloud", "recover", "flaky")
        server.wait_for(lambda a: a.get("/jobs/where").json()["status"] == "SUCCEEDED", timeout=60)
    finally:
        stop(server.proc)
        kill_replicas(home)


def test_a_renamed_cloud_lists_and_its_old_replica_is_stopped_and_replaced(tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = start_server(home, "clouds:\n  - name: alpha\n    capacity: {cpus: 2, memory_gb: 4}\n")
    try:
        server.cli("deploy", f"{FIXTURE_PHOTONS}:Versioned", "--name", "moved", "--public")
        (old,) = server.deployment("moved")["replica_list"]
        old_pid = server.pid(old["id"])
        assert stop(server.proc) == 0 and Path(f"/proc/{old_pid}").exists()  # replicas outlive the server
        server = start_server(home, "clouds:\n  - name: gamma\n    capacity: {cpus: 2, memory_gb: 4}\n")
        listing = server.cli("cloud", "list", "--json").stdout
        assert '"gamma"' in listing and '"alpha"' not in listing
        d = server.wait_for(lambda api: (d := api.get("/deployments/moved").json())["ready"] == 1 and d)
        assert [r["cloud"] for r in d["replica_list"]] == ["gamma"]
        assert not Path(f"/proc/{old_pid}").exists() or "zombie" in Path(f"/proc/{old_pid}/status").read_text()
        assert "no longer configured" in server.log.read_text()
    finally:
        stop(server.proc)
        kill_replicas(home)
