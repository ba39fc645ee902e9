"""Canary rollouts end to end: a real server, real replicas of two versions, real traffic split by
the gateway, judged from its answers."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from fermion.testing import Load, ServerProc, running_server, start_gateway, stop
from tests.support import FIXTURE_PHOTONS

FLAKY = f"{FIXTURE_PHOTONS}:Flaky"
SMALL = ("--cpus", "0.25", "--memory-gb", "0.25")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    with running_server(tmp_path_factory.mktemp("canary"), "clouds:\n  - name: alpha\n    capacity: {cpus: 4, memory_gb: 8}\n") as srv:
        srv.cli("deploy", FLAKY, "--name", "rel", "--public", "--replicas", "2", "--env", "VERSION=1", *SMALL)
        yield srv


def deployment_events(server: ServerProc) -> list[dict]:
    with server.api() as api:
        return api.get("/events", params={"object_id": "rel", "limit": 500}).json()


def last_event(server: ServerProc, new: str) -> dict | None:
    return next((e for e in reversed(deployment_events(server)) if e["new"] == new), None)


def versions(load: Load) -> Counter[str]:
    return Counter(a["version"] for a in load.answers)


def settled_on(server: ServerProc, generation: int) -> None:
    """Every live replica is of ``generation`` and READY."""
    server.wait_for(lambda api: (d := api.get("/deployments/rel").json())["replica_list"]
                    and all(r["generation"] == generation and r["state"] == "READY" for r in d["replica_list"]),
                    timeout=60)


def test_a_bad_canary_is_rolled_back_by_its_numbers(server: ServerProc) -> None:
    before = server.deployment("rel")
    out = server.cli("deploy", FLAKY, "--name", "rel", "--public", "--env", "VERSION=2", "--env", "FAIL_SHARE=0.5",
                     "--canary", "30", "--canary-window", "60", "--canary-min-requests", "30", *SMALL)
    assert "canary: generation 2, 30% of the traffic, 1/1 ready" in out.stdout
    url = f"{server.url}/d/rel/version"
    with Load(url, {}, workers=4) as load:
        event = server.wait_for(lambda _: last_event(server, "ROLLED_BACK"), timeout=60)
    assert "error rate regressed: canary" in event["reason"] and "stable 0.0% errors" in event["reason"], event
    assert versions(load)["2"] > 0 and load.failures, "the canary took a share and failed some of it"
    assert all("500" in f for f in load.failures)
    after = server.deployment("rel")
    assert after["generation"] == before["generation"] == 1 and after["photon"] == before["photon"]
    assert after["canary"] is None
    settled_on(server, 1)
    with Load(url, {}, workers=2) as clean:
        time.sleep(1.5)
    assert clean.failures == [] and set(versions(clean)) == {"1"}


def test_a_good_canary_is_promoted_and_rolls_over_with_no_failed_request(server: ServerProc) -> None:
    url = f"{server.url}/d/rel/version"
    with Load(url, {}, workers=4) as load:
        # the p99 rule is judged in tests/control/test_canary_judge.py: here a fresh replica on two busy
        # cores (other test files run beside this one) may well answer its first requests 1.5x slower
        server.cli("deploy", FLAKY, "--name", "rel", "--public", "--env", "VERSION=3", "--canary", "25",
                   "--canary-window", "4", "--canary-min-requests", "20", "--canary-max-p99-ratio", "20", *SMALL)
        during = versions(load)
        event = server.wait_for(lambda _: next((e for e in reversed(deployment_events(server))
                                                if e["new"] in ("PROMOTED", "ROLLED_BACK")
                                                and e["reason"].startswith("canary generation 3")), None), timeout=60)
        assert event["new"] == "PROMOTED", event
        generation = server.deployment("rel")["generation"]
        settled_on(server, generation)
        time.sleep(0.5)
    assert generation == 3  # a number the rolled-back canary (2) never reuses: its replicas may still drain
    assert event["reason"].startswith("canary generation 3 promoted: held for ") and "0.0% errors" in event["reason"]
    assert load.failures == [], load.failures[:5]
    assert during["1"] > 0
    shares = versions(load)
    assert shares["3"] > 0 and shares["1"] > 0
    with Load(url, {}, workers=2) as clean:
        time.sleep(1)
    assert set(versions(clean)) == {"3"}


def test_callers_pin_or_stick_to_a_version_and_a_manual_canary_ends_by_hand(server: ServerProc) -> None:
    server.cli("deploy", FLAKY, "--name", "rel", "--public", "--env", "VERSION=4", "--canary", "50",
               "--no-canary-auto", *SMALL)
    canary = server.deployment("rel")["canary"]
    assert canary["auto"] is False and canary["ready"] == 1
    url = f"{server.url}/d/rel/version"
    with httpx.Client(timeout=10) as http:
        pinned = [http.post(url, json={}, headers={"X-Fermion-Version": str(canary["generation"])}) for _ in range(10)]
        assert {r.json()["version"] for r in pinned} == {"4"}
        assert {r.headers["x-fermion-version"] for r in pinned} == {str(canary["generation"])}
        for session in ("alice", "bob", "carol", "dave"):
            sticky = {http.post(url, json={}, headers={"X-Fermion-Session": session}).json()["version"] for _ in range(8)}
            assert len(sticky) == 1, (session, sticky)
        mixed = Counter(http.post(url, json={}).json()["version"] for _ in range(200))
    assert 50 <= mixed["4"] <= 150 and mixed["3"] + mixed["4"] == 200, mixed  # 50% each way, by chance
    out = server.cli("deployment", "rollback", "rel")
    assert "canary rolled back" in out.stdout
    reason = last_event(server, "ROLLED_BACK")["reason"]  # type: ignore[index]
    assert reason.endswith("rolled back: by hand (admin)")
    settled_on(server, 3)
    refused = server.cli("deployment", "promote", "rel", check=False)
    assert refused.returncode != 0 and "has no canary to promote" in refused.stderr and "Traceback" not in refused.stderr
    same = server.cli("deploy", FLAKY, "--name", "rel", "--public", "--env", "VERSION=3", "--canary", "10", *SMALL,
                      check=False)
    assert same.returncode != 0 and "nothing to canary" in same.stderr
    new = server.cli("deploy", FLAKY, "--name", "fresh", "--public", "--canary", "10", *SMALL, check=False)
    assert new.returncode != 0 and "a canary needs a running version" in new.stderr


def test_a_canary_served_only_through_a_gateway_process_is_judged_too(server: ServerProc, tmp_path) -> None:  # noqa: ANN001
    gateway = start_gateway(tmp_path / "gw", [server.url], server.token)
    try:
        server.cli("deploy", FLAKY, "--name", "rel", "--public", "--env", "VERSION=5", "--env", "FAIL_SHARE=0.5",
                   "--canary", "40", "--canary-min-requests", "30", *SMALL)
        started = time.time()
        with Load(f"{gateway.url}/d/rel/version", {}, workers=4) as load:  # none through the server's own gateway
            event = server.wait_for(lambda _: (e := last_event(server, "ROLLED_BACK")) and e["at"] > started and e,
                                    timeout=60)
        assert versions(load)["5"] > 0 and "error rate regressed" in event["reason"]
        assert "stable 0.0% errors" in event["reason"]
    finally:
        stop(gateway.proc)
