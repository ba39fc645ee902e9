"""The controller places replicas by the optimizer: cheapest healthy clouds, spread, and clouds
that fail to provision are marked unhealthy and avoided."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fermion.testing import Load, ServerProc, running_server
from tests.support import FIXTURE_PHOTONS

CLOUDS = """
clouds:
  - name: broken
    pricing: {price_per_hour: 0.01}
    inject: {fail_start: true}
  - name: aws-c3
    pricing: {catalog: aws, instance_type: c3.xlarge}
  - name: mid
    pricing: {price_per_hour: 0.30}
  - name: pricey
    pricing: {price_per_hour: 0.90}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    with running_server(tmp_path_factory.mktemp("placement"), CLOUDS) as srv:
        yield srv


def test_replicas_go_to_the_cheapest_healthy_clouds_with_spread(server: ServerProc) -> None:
    server.cli("deploy", f"{FIXTURE_PHOTONS}:Versioned", "--name", "priced", "--replicas", "4", "--public")
    d = server.deployment("priced")
    clouds = sorted(r["cloud"] for r in d["replica_list"] if r["state"] == "READY")
    # broken is cheapest but refuses to start; at most half the replicas on one cloud
    assert clouds == ["aws-c3", "aws-c3", "mid", "mid"]
    with server.api() as api:
        events = api.get("/events", params={"object_id": "broken"}).json()
        clouds_now = {c["name"]: c for c in api.get("/clouds").json()}
        placed = [e["reason"] for e in api.get("/events", params={"limit": 200}).json()
                  if e["new"] == "PROVISIONING"]
    assert any(e["new"] == "unhealthy" and "fail_start" in e["reason"] for e in events)
    assert clouds_now["broken"]["health"] == "unhealthy"
    assert any("$0.2100/h" in p for p in placed)  # the aws catalog price of c3.xlarge
    assert any("next best" in p for p in placed)


def test_optimize_cli_explains_its_plan(server: ServerProc, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("replicas: 4\ncpus: 2\nmemory_gb: 4\nconstraints: {min_clouds: 2}\n")
    out = server.cli("optimize", str(spec)).stdout
    assert "per cloud" in out and "not chosen" in out and "total:" in out
    plan = json.loads(server.cli("optimize", str(spec), "--json").stdout)
    assert plan["feasible"] and len({p["cloud"] for p in plan["placements"]}) >= 2
    spec.write_text("replicas: 2\naccelerator: B200\n")
    bad = server.cli("optimize", str(spec), check=False)
    assert bad.returncode == 1 and "no healthy, allowed offering fits" in bad.stdout
    spec.write_text("replicas: -3\n")
    invalid = server.cli("optimize", str(spec), check=False)
    assert invalid.returncode == 2 and "invalid placement spec" in invalid.stderr


def test_optimize_apply_moves_replicas_under_load_without_errors(server: ServerProc) -> None:
    server.cli("cloud", "fail", "aws-c3")  # the cheap cloud is down while we deploy
    server.cli("deploy", f"{FIXTURE_PHOTONS}:Versioned", "--name", "movable", "--replicas", "2", "--public",
               "--cloud", "aws-c3", "--cloud", "mid", "--cloud", "pricey")
    assert sorted(r["cloud"] for r in server.deployment("movable")["replica_list"]) == ["mid", "pricey"]
    server.cli("cloud", "recover", "aws-c3")
    dry = server.cli("optimize", "--deployment", "movable").stdout
    assert "saving" in dry and "aws-c3" in dry
    with Load(f"{server.url}/d/movable/version", {}) as load:
        out = server.cli("optimize", "--deployment", "movable", "--apply").stdout
        assert "moving replicas" in out
        moved = server.wait_for(lambda api: (d := api.get("/deployments/movable").json())
                                and sorted(r["cloud"] for r in d["replica_list"]) == ["aws-c3", "mid"] and d,
                                timeout=60)
        with server.api() as api:
            events = api.get("/events", params={"object_id": "movable"}).json()
        time.sleep(0.5)
    assert load.failures == [] and load.ok > 20
    assert all(r["state"] == "READY" for r in moved["replica_list"])
    assert any(e["new"] == "REBALANCING" for e in events)
    again = server.cli("optimize", "--deployment", "movable", "--apply").stdout
    assert "not moved" in again  # already the best placement


def test_a_cloud_failing_requests_is_avoided_then_the_placement_reoptimizes_back(server: ServerProc) -> None:
    server.cli("deploy", f"{FIXTURE_PHOTONS}:Flaky", "--name", "failing", "--public", "--cloud", "aws-c3",
               "--env", "FAIL_SHARE=0.6", "--env", "FAIL_STATUS=502")
    with Load(f"{server.url}/d/failing/version", {}, workers=2) as bad:
        deadline = time.monotonic() + 60
        while bad.ok + len(bad.failures) < 200 and time.monotonic() < deadline:
            time.sleep(0.1)
    assert len(bad.failures) > 50  # the gateway saw aws-c3 fail these
    server.cli("deploy", f"{FIXTURE_PHOTONS}:Versioned", "--name", "careful", "--public", "--cloud", "aws-c3",
               "--cloud", "mid", "--reoptimize-every", "2", "--min-saving", "0.1")
    replica = server.deployment("careful")["replica_list"][0]
    assert replica["cloud"] == "mid"  # aws-c3 is cheaper, but fails its requests
    with server.api() as api:
        placed = next(e["reason"] for e in api.get("/events", params={"object_id": replica["id"]}).json()
                      if e["new"] == "PROVISIONING")
    assert "failing requests: aws-c3" in placed, placed
    with Load(f"{server.url}/d/careful/version", {}) as load:
        time.sleep(3)  # two re-optimizations: mid is still the best while aws-c3 fails
        assert server.deployment("careful")["replica_list"][0]["cloud"] == "mid"
        server.cli("deployment", "delete", "failing")  # aws-c3's failing replica goes, and its failure rate
        moved = server.wait_for(lambda api: (d := api.get("/deployments/careful").json())["replica_list"]
                                and [(r["cloud"], r["state"]) for r in d["replica_list"]] == [("aws-c3", "READY")]
                                and d, timeout=60)
        time.sleep(0.5)
    assert load.failures == [] and load.ok > 20
    with server.api() as api:
        events = api.get("/events", params={"object_id": "careful"}).json()
    move = next(e["reason"] for e in events if e["new"] == "REBALANCING")
    assert move.startswith("re-optimized: {'mid': 1} → {'aws-c3': 1} saves 30%"), move
    assert moved["status"] == "READY"
    server.cli("deployment", "delete", "careful")
