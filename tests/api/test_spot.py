"""Spot replicas with on-demand fallback end to end: a real server, real replicas, an injected
reclaim that takes a cloud's spot capacity away for a while, real traffic throughout."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from fermion.testing import Load, ServerProc, running_server
from tests.support import FIXTURE_PHOTONS

CLOUDS = """
clouds:
  - name: alpha
    capacity: {cpus: 4, memory_gb: 8}
    pricing: {price_per_hour: 0.10, spot_price_per_hour: 0.03}
    inject: {spot_preempt_after_s: 6, spot_unavailable_s: 5}
  - name: beta
    capacity: {cpus: 4, memory_gb: 8}
    pricing: {price_per_hour: 0.12, spot_price_per_hour: 0.05}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    with running_server(tmp_path_factory.mktemp("spot"), CLOUDS) as srv:
        yield srv


def replica_events(server: ServerProc) -> list[dict]:
    with server.api() as api:
        return sorted((e for e in api.get("/events", params={"limit": 1000}).json() if e["kind"] == "replica"),
                      key=lambda e: e["id"] if "id" in e else e["at"])


def test_reclaimed_spot_replicas_get_on_demand_stand_ins_then_spot_again(server: ServerProc) -> None:
    out = server.cli("deploy", f"{FIXTURE_PHOTONS}:Flaky", "--name", "cheap", "--public", "--replicas", "2",
                     "--spot-share", "1", "--spot-max-reclaim-share", "0.5", "--env", "VERSION=1",
                     "--cpus", "0.25", "--memory-gb", "0.25", "--no-wait")
    assert "spot: 100% of the replicas, fallback on_demand" in out.stdout
    # as placed, before alpha's reclaim (6 s after the start, which a loaded machine may not finish by then):
    # the cheapest spot first, and no more than half of them on one cloud's spot market
    placed = server.wait_for(lambda api: (rs := api.get("/deployments/cheap").json()["replica_list"]) and all(
        r["cloud"] for r in rs) and rs)
    assert sorted((r["cloud"], r["spot"]) for r in placed) == [("alpha", True), ("beta", True)]
    server.wait_for(lambda api: api.get("/deployments/cheap").json()["ready"] >= 1)
    with Load(f"{server.url}/d/cheap/version", {}, workers=2) as load:
        stand_in = server.wait_for(lambda _: next(
            (e for e in replica_events(server) if "on-demand stand-in" in e["reason"]), None), timeout=60)
        assert "no spot capacity on alpha" in stand_in["reason"]
        reclaimed = [e for e in replica_events(server) if e["new"] == "FAILED"]
        assert reclaimed and "spot capacity reclaimed on alpha" in reclaimed[0]["reason"]
        server.wait_for(lambda api: any(not r["spot"] and r["state"] == "READY"
                                        for r in api.get("/deployments/cheap").json()["replica_list"]), timeout=60)
        # alpha's spot capacity comes back after 5 s: a spot replica takes the stand-in's place
        swapped = server.wait_for(lambda _: next(
            (e for e in replica_events(server) if e["new"] == "DRAINING" and e["reason"] == "swapped for a spot replica"),
            None), timeout=60)
        assert swapped["object_id"] == stand_in["object_id"]
        assert any("swapping an on-demand stand-in for spot" in e["reason"] for e in replica_events(server))
        time.sleep(1)
    assert load.failures == [], load.failures[:5]
    assert load.ok > 50
    d = server.deployment("cheap")
    assert d["status"] in ("READY", "DEGRADED")
    live = [r for r in d["replica_list"] if r["state"] not in ("DRAINING",)]
    assert len(live) == 2


def test_without_fallback_a_reclaimed_replica_waits_for_spot_with_the_reason(server: ServerProc) -> None:
    server.cli("deploy", f"{FIXTURE_PHOTONS}:Flaky", "--name", "strict", "--public", "--replicas", "1",
               "--spot-share", "1", "--spot-fallback", "none", "--cloud", "alpha", "--cpus", "0.25",
               "--memory-gb", "0.25")
    waiting = server.wait_for(lambda api: next(
        (r for r in api.get("/deployments/strict").json()["replica_list"]
         if r["state"] == "PENDING" and r["reason"].startswith("waiting for spot capacity")), None), timeout=60)
    assert "no spot capacity on alpha" in waiting["reason"]
    server.wait_for(lambda api: any(r["spot"] and r["state"] == "READY"
                                    for r in api.get("/deployments/strict").json()["replica_list"]), timeout=60)
    bad = server.cli("deploy", f"{FIXTURE_PHOTONS}:Flaky", "--name", "x", "--spot-share", "1.5", check=False)
    assert bad.returncode != 0 and "share" in bad.stderr and "Traceback" not in bad.stderr
