"""Autoscaling end to end: a real server, real replica processes, real load through the gateway."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from fermion.testing import Load, ServerProc, running_server, start_gateway, stop, web
from tests.chaos import CLOUDS  # two local clouds of 4 cpus
from tests.support import FIXTURE_PHOTONS, TEXT_PHOTON

SLOW = f"{FIXTURE_PHOTONS}:Slow"
SLOW_INIT = f"{FIXTURE_PHOTONS}:SlowInit"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    with running_server(tmp_path_factory.mktemp("autoscale"), CLOUDS) as srv:
        yield srv


def events(server: ServerProc, name: str) -> list[dict]:
    with server.api() as api:
        return api.get("/events", params={"object_id": name, "limit": 500}).json()


def replica_events(server: ServerProc) -> list[dict]:
    with server.api() as api:
        return [e for e in api.get("/events", params={"limit": 1000}).json() if e["kind"] == "replica"]


def test_an_idle_deployment_holds_the_first_request_wakes_and_reports_its_cold_start(server: ServerProc) -> None:
    server.cli("deploy", TEXT_PHOTON, "--name", "sleepy", "--public", "--replicas", "0", "--min-replicas", "0",
               "--max-replicas", "2", "--scale-to-zero-delay", "3", "--cpus", "0.25", "--memory-gb", "0.25")
    d = server.deployment("sleepy")
    assert d["status"] == "IDLE" and d["replicas"] == 0 and d["replica_list"] == []
    assert d["autoscale"]["min"] == 0
    started = time.monotonic()
    r = web.post(f"{server.url}/d/sleepy/upper", json={"texts": ["wake up"]}, timeout=60)
    woke_in = time.monotonic() - started
    assert r.status_code == 200 and r.json() == ["WAKE UP"]
    assert woke_in < 20
    reasons = [e["reason"] for e in events(server, "sleepy")]
    assert any(x == "autoscale 0 → 1: woken by 1 waiting request(s)" for x in reasons), reasons
    ready = [e["reason"] for e in replica_events(server) if e["new"] == "READY" and "cold start" in e["reason"]]
    assert ready, "the READY event carries the cold start by phase"
    for phase in ("schedule", "provision", "init", "ready"):
        assert f"{phase} " in ready[-1]
    # idle past its delay: back to zero, and IDLE
    d = server.wait_for(lambda api: (d := api.get("/deployments/sleepy").json())["status"] == "IDLE"
                        and not d["replica_list"] and d, timeout=30)
    assert d["replicas"] == 0
    assert any(x.startswith("autoscale 1 → 0: no request for") for x in (e["reason"] for e in events(server, "sleepy")))
    time.sleep(3)  # asleep, it stays asleep: only a request wakes it
    d = server.deployment("sleepy")
    assert d["replicas"] == 0 and d["replica_list"] == [] and d["status"] == "IDLE"
    assert sum(e["reason"].startswith("autoscale 0 → 1") for e in events(server, "sleepy")) == 1
    metrics = web.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {server.token}"}).text
    assert 'fermion_replica_cold_start_seconds_count{phase="total"}' in metrics
    assert 'fermion_gateway_queue_wait_seconds_count{deployment="sleepy"} 1.0' in metrics


def test_load_scales_up_within_the_delay_then_down_and_to_zero_with_no_failed_request(server: ServerProc) -> None:
    server.cli("deploy", SLOW, "--name", "busy", "--public", "--min-replicas", "0", "--max-replicas", "3",
               "--target-ongoing-requests", "2", "--upscale-delay", "1", "--downscale-delay", "3",
               "--scale-to-zero-delay", "4", "--cpus", "0.5", "--memory-gb", "0.5")
    url = f"{server.url}/d/busy/work"
    with Load(url, {"seconds": 0.2}, workers=6) as heavy:
        started = time.monotonic()
        server.wait_for(lambda api: api.get("/deployments/busy").json()["replicas"] == 3, timeout=20)
        scaled_in = time.monotonic() - started
        server.wait_for(lambda api: api.get("/deployments/busy").json()["ready"] == 3, timeout=60)
    up = [e["reason"] for e in events(server, "busy") if e["reason"].startswith("autoscale 1 → ")]
    assert up and "in flight per replica, target 2 for" in up[0], [e["reason"] for e in events(server, "busy")]
    # 6 clients keep ~6 in flight: the smoothed signal passes 2 per replica within ~1s, then the 1s delay
    assert scaled_in < 10
    with Load(url, {"seconds": 0.05}, workers=1) as light:  # scale-down happens under traffic
        server.wait_for(lambda api: api.get("/deployments/busy").json()["replicas"] == 1, timeout=30)
        server.wait_for(lambda api: len(api.get("/deployments/busy").json()["replica_list"]) == 1, timeout=40)
        time.sleep(1)
    assert heavy.failures == [] and light.failures == [], (heavy.failures + light.failures)[:5]
    assert light.ok > 20
    server.wait_for(lambda api: api.get("/deployments/busy").json()["status"] == "IDLE", timeout=30)
    down = [e["reason"] for e in events(server, "busy") if e["reason"].startswith("autoscale")]
    assert any(x.startswith("autoscale 3 → ") for x in down) and down[-1].startswith("autoscale 1 → 0"), down


def test_the_queue_bound_answers_429_and_its_timeout_503_never_a_hang(server: ServerProc) -> None:
    server.cli("deploy", SLOW_INIT, "--name", "cold", "--public", "--replicas", "0", "--min-replicas", "0",
               "--max-replicas", "1", "--queue-limit", "2", "--queue-timeout", "1.5", "--env", "SLOW_INIT_S=6",
               "--cpus", "0.25", "--memory-gb", "0.25")
    answers: list[tuple[int, float, dict, str | None]] = []

    def call() -> None:
        started = time.monotonic()
        r = web.post(f"{server.url}/d/cold/ping", json={}, timeout=30)
        answers.append((r.status_code, time.monotonic() - started, r.json(), r.headers.get("retry-after")))

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    server.wait_for(lambda api: api.get("/deployments/cold").json()["replicas"] == 1, timeout=10, interval=0.05)
    time.sleep(0.2)  # both are held by now
    call()  # the third: over the bound, refused at once
    for t in threads:
        t.join(30)
    by_status = sorted(answers, key=lambda a: a[0])
    assert [a[0] for a in by_status] == [429, 503, 503], by_status
    refused = by_status[0]
    assert refused[1] < 1 and refused[3] == "1" and "already holds 2 requests" in refused[2]["error"]["message"]
    for status, took, body, retry_after in by_status[1:]:
        assert 1.4 < took < 5 and retry_after is not None
        assert "none came up within 1.5s" in body["error"]["message"]
    # once init() is done the same deployment answers
    server.wait_for(lambda api: api.get("/deployments/cold").json()["ready"] == 1, timeout=60)
    assert web.post(f"{server.url}/d/cold/ping", json={}, timeout=30).json() == "pong"


def test_a_held_caller_that_leaves_frees_its_place_at_once(server: ServerProc) -> None:
    server.cli("deploy", SLOW_INIT, "--name", "cold2", "--public", "--replicas", "0", "--min-replicas", "0",
               "--max-replicas", "1", "--queue-limit", "1", "--queue-timeout", "30", "--env", "SLOW_INIT_S=8",
               "--cpus", "0.25", "--memory-gb", "0.25")
    url = f"{server.url}/d/cold2/ping"
    with pytest.raises(httpx.ReadTimeout):
        web.post(url, json={}, timeout=1)  # held, then the caller gives up
    time.sleep(0.3)
    metrics = web.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {server.token}"}).text
    assert 'fermion_gateway_queued{deployment="cold2"} 0.0' in metrics  # its place is free
    r = web.post(url, json={}, timeout=30)  # held in that place, not refused
    assert r.status_code == 200 and r.json() == "pong"


def test_autoscale_bounds_are_checked(server: ServerProc) -> None:
    server.cli("deploy", TEXT_PHOTON, "--name", "bounded", "--public", "--min-replicas", "1", "--max-replicas", "2",
               "--cpus", "0.25", "--memory-gb", "0.25")
    with server.api() as api:
        r = api.post("/deployments/bounded/scale", json={"replicas": 5})
        assert r.status_code == 400 and "autoscales between 1 and 2 replicas" in r.json()["error"]["message"]
        sha = api.get("/deployments/bounded").json()["photon"]
        r = api.put("/deployments/bad-bounds", json={"photon": sha, "autoscale": {"min": 3, "max": 2}})
        assert r.status_code == 422 and "min (3) is above max (2)" in r.json()["error"]["message"]
        r = api.put("/deployments/bad-bounds", json={"photon": sha, "autoscale": {"min": 0, "max": 2, "queue_limit": 0}})
        assert r.status_code == 422 and "queue_limit" in r.json()["error"]["message"]  # it could never wake
    bad = server.cli("deploy", TEXT_PHOTON, "--name", "x", "--min-replicas", "3", "--max-replicas", "1", check=False)
    assert bad.returncode != 0 and "--min-replicas 3 is above --max-replicas 1" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_traffic_through_a_gateway_process_counts_a_deployment_woken_there_stays_up(server: ServerProc,
                                                                                 tmp_path) -> None:  # noqa: ANN001
    server.cli("deploy", TEXT_PHOTON, "--name", "remote", "--public", "--replicas", "0", "--min-replicas", "0",
               "--max-replicas", "2", "--scale-to-zero-delay", "2", "--cpus", "0.25", "--memory-gb", "0.25")
    gateway = start_gateway(tmp_path / "gw", [server.url], server.token)
    try:
        url = f"{gateway.url}/d/remote/upper"
        server.wait_for(lambda _: web.post(url, json={"texts": ["x"]}, timeout=60).status_code == 200, timeout=30)
        woke = [e["reason"] for e in events(server, "remote") if e["reason"].startswith("autoscale 0 → 1")]
        assert woke == ["autoscale 0 → 1: woken by 1 waiting request(s)"]  # held there, reported to the server
        with Load(url, {"texts": ["busy"]}, workers=2) as load:
            time.sleep(6)  # three times the idle delay, with every request through the gateway process
            d = server.deployment("remote")
        assert d["replicas"] >= 1 and d["status"] != "IDLE"
        assert load.failures == [] and load.ok > 50
        server.wait_for(lambda api: api.get("/deployments/remote").json()["status"] == "IDLE", timeout=30)
    finally:
        stop(gateway.proc)
