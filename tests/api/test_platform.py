"""The control plane end to end: a real server, real replica processes on two named local
clouds, real HTTP through the gateway."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fermion import Client
from fermion.testing import Load, ServerProc, running_server, web
from tests.support import FIXTURE_PHOTONS, TEXT_PHOTON, report_fault

CLOUDS = """
clouds:
  - name: alpha
    capacity: {cpus: 4, memory_gb: 8}
  - name: beta
    capacity: {cpus: 4, memory_gb: 8}
  - name: tiny
    capacity: {cpus: 1, memory_gb: 2}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    with running_server(tmp_path_factory.mktemp("server"), CLOUDS) as srv:
        yield srv


def ready_replicas(d: dict) -> list[dict]:
    return [r for r in d["replica_list"] if r["state"] == "READY"]


def test_capacity_exhaustion_leaves_replicas_pending_with_a_reason(server: ServerProc) -> None:
    # first in the module, so that no other deployment has taken room on "tiny"
    server.cli("deploy", TEXT_PHOTON, "--name", "big", "--replicas", "3", "--cpus", "1", "--cloud", "tiny",
               "--public", "--no-wait")
    d = server.wait_for(lambda api: (d := api.get("/deployments/big").json())["ready"] == 1 and d)
    pending = [r for r in d["replica_list"] if r["state"] == "PENDING"]
    assert len(pending) == 2
    assert "no cloud can run it" in pending[0]["reason"] and "tiny: 0 cpus" in pending[0]["reason"]
    assert server.cli("deployment", "scale", "big", "1").returncode == 0
    server.wait_for(lambda api: len(api.get("/deployments/big").json()["replica_list"]) == 1)


def test_deploy_on_two_clouds_and_call_through_the_gateway(server: ServerProc) -> None:
    out = server.cli("deploy", TEXT_PHOTON, "--name", "text", "--replicas", "2", "--cloud", "alpha",
                     "--cloud", "beta", "--public")
    assert "READY" in out.stdout
    d = server.deployment("text")
    assert d["status"] == "READY" and {r["cloud"] for r in ready_replicas(d)} == {"alpha", "beta"}
    client = Client(f"{server.url}/d/text")
    assert client.upper(texts=["through the gateway"]) == ["THROUGH THE GATEWAY"]
    assert list(client.count(n=3)) == [{"i": i, "square": i * i} for i in range(3)]  # streaming pass-through
    listing = server.cli("deployment", "list", "--json").stdout
    assert '"name": "text"' in listing
    clouds = server.cli("cloud", "list").stdout
    assert "alpha" in clouds and "beta" in clouds and "tiny" in clouds
    on_alpha = next(r for r in ready_replicas(d) if r["cloud"] == "alpha")
    assert on_alpha["id"] in server.cli("cloud", "status", "alpha").stdout


def test_kill_9_a_replica_under_load(server: ServerProc) -> None:
    server.cli("deploy", f"{FIXTURE_PHOTONS}:Versioned", "--name", "kill9", "--replicas", "2", "--public",
               "--cloud", "alpha", "--cloud", "beta")
    victim = ready_replicas(server.deployment("kill9"))[0]
    with Load(f"{server.url}/d/kill9/version", {}) as load:
        time.sleep(1)
        os.kill(server.pid(victim["id"]), signal.SIGKILL)
        server.wait_for(lambda api: len([r for r in ready_replicas(api.get("/deployments/kill9").json())
                                         if r["id"] != victim["id"]]) == 2, timeout=60)
        time.sleep(0.5)
    report_fault("replica kill -9 (1 of 2)", load.ok + len(load.failures), len(load.failures))
    assert load.failures == []
    assert load.ok > 50
    events = server.cli("events", "--object", victim["id"], "--json").stdout
    assert "FAILED" in events


def test_a_whole_cloud_dies_and_traffic_moves(server: ServerProc) -> None:
    server.cli("deploy", f"{FIXTURE_PHOTONS}:Versioned", "--name", "moves", "--replicas", "2", "--public",
               "--cloud", "alpha", "--cloud", "beta")
    assert {r["cloud"] for r in ready_replicas(server.deployment("moves"))} == {"alpha", "beta"}
    with Load(f"{server.url}/d/moves/version", {}) as load:
        time.sleep(0.5)
        assert "killed" in server.cli("cloud", "fail", "beta").stdout
        after = server.wait_for(lambda api: (d := api.get("/deployments/moves").json())["ready"] == 2
                                and all(r["cloud"] == "alpha" for r in ready_replicas(d)) and d, timeout=60)
        time.sleep(0.5)
    report_fault("cloud fail (1 of 2 replicas' cloud)", load.ok + len(load.failures), len(load.failures))
    assert load.failures == []
    assert {r["cloud"] for r in ready_replicas(after)} == {"alpha"}
    assert "unhealthy" in server.cli("cloud", "list").stdout
    server.cli("cloud", "recover", "beta")
    server.cli("deployment", "scale", "moves", "3")
    grown = server.wait_for(lambda api: (d := api.get("/deployments/moves").json())["ready"] == 3 and d)
    assert "beta" in {r["cloud"] for r in ready_replicas(grown)}  # the recovered cloud is used again


def test_rolling_update_under_load_fails_no_request(server: ServerProc) -> None:
    photon = f"{FIXTURE_PHOTONS}:Versioned"
    server.cli("deploy", photon, "--name", "roll", "--replicas", "2", "--public", "--env", "VERSION=1")
    with Load(f"{server.url}/d/roll/version", {}) as load:
        time.sleep(0.5)
        server.cli("deploy", photon, "--name", "roll", "--replicas", "2", "--public", "--env", "VERSION=2")
        server.wait_for(lambda api: all(r["generation"] == 2 for r in api.get("/deployments/roll").json()["replica_list"]))
        rolled_out_at = len(load.answers)
        time.sleep(1.0)
    assert load.failures == []
    versions = [a["version"] for a in load.answers]
    assert versions[0] == "1" and versions[-1] == "2"
    # once only generation 2 is live, only requests already in flight (one per client) may still say 1
    assert "1" not in versions[rolled_out_at + 6 :]
    assert len(versions) - rolled_out_at > 20
    assert server.deployment("roll")["generation"] == 2


def test_crash_looping_photon_ends_failed_with_its_error(server: ServerProc) -> None:
    out = server.cli("deploy", f"{FIXTURE_PHOTONS}:CrashOnInit", "--name", "crashy", "--public", "--timeout", "120",
                     check=False)
    assert out.returncode == 1
    d = server.deployment("crashy")
    assert d["status"] == "FAILED"
    assert "crash loop" in d["status_reason"]
    assert "CUDA driver missing" in d["last_error"]
    status = server.cli("deployment", "status", "crashy").stdout
    assert "CUDA driver missing" in status


def test_tokens_guard_the_api_and_private_deployments(server: ServerProc) -> None:
    assert web.get(f"{server.url}/api/v1/deployments").status_code == 401
    bad = web.get(f"{server.url}/api/v1/deployments", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and "invalid token" in bad.json()["error"]["message"]
    assert web.get(f"{server.url}/healthz").status_code == 200
    out = server.cli("deploy", TEXT_PHOTON, "--name", "private", "--json")
    import json

    token = json.loads(out.stdout)["token"]
    assert token.startswith("fmd_")
    url = f"{server.url}/d/private/upper"
    assert web.post(url, json={"texts": ["x"]}).status_code == 401
    ok = web.post(url, json={"texts": ["x"]}, headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200 and ok.json() == ["X"]
    assert Client(f"{server.url}/d/private", token=server.token).upper(["admin"]) == ["ADMIN"]


def test_bad_specs_get_4xx_with_a_message(server: ServerProc) -> None:
    server.cli("deploy", TEXT_PHOTON, "--name", "spec-check", "--public", "--no-wait")  # uploads a photon
    with server.api() as api:
        sha = api.get("/deployments/spec-check").json()["photon"]
        r = api.put("/deployments/Bad_Name", json={"photon": sha})
        assert r.status_code == 400 and "invalid deployment name" in r.json()["error"]["message"]
        r = api.put("/deployments/x", json={"photon": sha, "clouds": ["mars"]})
        assert r.status_code == 400 and "unknown cloud(s) mars" in r.json()["error"]["message"]
        r = api.put("/deployments/x", json={"photon": "0" * 64})
        assert r.status_code == 404 and "upload it first" in r.json()["error"]["message"]
        r = api.put("/deployments/x", json={"photon": sha, "replicas": -1})
        assert r.status_code == 422 and "replicas" in r.json()["error"]["message"]
        r = api.post("/photons", files={"file": ("x.photon", b"not a zip", "application/zip")})
        assert r.status_code == 400 and "cannot read the uploaded photon archive" in r.json()["error"]["message"]
        assert api.get("/deployments/nope").status_code == 404
    missing = server.cli("deployment", "status", "nope", check=False)
    assert missing.returncode == 3 and "no deployment named 'nope'" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_gateway_and_replica_metrics(server: ServerProc) -> None:
    server.cli("deploy", TEXT_PHOTON, "--name", "metered", "--public")
    for _ in range(5):
        web.post(f"{server.url}/d/metered/upper", json={"texts": ["m"]})
    text = web.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {server.token}"}).text
    line = next(ln for ln in text.splitlines()
                if ln.startswith('fermion_gateway_requests_total{deployment="metered"') and 'status="200"' in ln)
    assert float(line.split()[-1]) == 5
    assert 'fermion_gateway_latency_seconds_count{deployment="metered"} 5.0' in text
    assert 'fermion_gateway_in_flight{deployment="metered"' in text


def test_delete_drains_and_removes(server: ServerProc) -> None:
    server.cli("deploy", TEXT_PHOTON, "--name", "gone", "--public")
    crashed = ready_replicas(server.deployment("gone"))[0]["id"]
    os.kill(server.pid(crashed), signal.SIGKILL)  # leaves a FAILED replica row behind, as real deployments have
    server.wait_for(lambda api: (d := api.get("/deployments/gone").json())["ready"] == 1
                    and ready_replicas(d)[0]["id"] != crashed)
    pid = server.pid(ready_replicas(server.deployment("gone"))[0]["id"])
    server.cli("deployment", "delete", "gone")
    server.wait_for(lambda api: api.get("/deployments/gone").status_code == 404)
    server.wait_for(lambda _: web.post(f"{server.url}/d/gone/upper", json={"texts": ["x"]}).status_code == 404,
                    timeout=5)
    deadline = time.monotonic() + 20
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    assert "tick failed" not in server.log.read_text()
