"""Two servers on one PostgreSQL database: one leads (runs the controllers), both serve the API,
and when the leader is killed under load the other takes over while gateways keep serving."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import httpx

from fermion.testing import Load, kill_workloads, start_gateway, start_server, stop, web, workload_processes
from tests.chaos import CLOUDS, PHOTON
from tests.support import report_fault

TAKEOVER_BOUND_S = 10.0


def leads(url: str) -> bool:
    try:
        return web.get(f"{url}/healthz", timeout=2).json()["leader"]
    except httpx.TransportError:
        return False


def test_the_follower_takes_over_when_the_leader_is_killed_under_load(tmp_path: Path, pg_url: str) -> None:
    workloads = tmp_path / "workloads"  # one machine, two servers: they share the workloads' folders
    env = {"FERMION_WORKLOADS": str(workloads)}
    first = start_server(tmp_path / "a", CLOUDS, db_url=pg_url, env=env)
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "cli.json", tmp_path / "b" / "cli.json")  # the same admin token
    second = start_server(tmp_path / "b", CLOUDS, db_url=pg_url, env=env)
    gateway = None
    try:
        assert leads(first.url) and not leads(second.url)
        # both serve the API: a deployment asked of the follower is carried out by the leader
        second.cli("deploy", PHOTON, "--name", "ha", "--replicas", "2", "--public", "--cloud", "alpha",
                   "--cloud", "beta")
        refused = second.cli("cloud", "fail", "alpha", check=False)
        assert refused.returncode != 0 and "does not run the controllers" in refused.stderr
        assert first.url in refused.stderr  # it names the leader
        gateway = start_gateway(tmp_path / "gw", [first.url, second.url], first.token)
        assert gateway.health()["server"] == first.url

        # a token revoked through the follower stops working at the gateway that follows the leader
        with first.api() as api:
            api.put("/deployments/vault", json={"photon": second.deployment("ha")["photon"], "replicas": 0})
            extra = api.post("/tokens", json={"name": "second-admin", "role": "admin"}).json()
        vault, bearer = f"{gateway.url}/d/vault/x", {"Authorization": f"Bearer {extra['token']}"}
        assert _status_within(vault, bearer, lambda status: status == 503)  # let in: no replica to call
        with second.api() as api:
            assert api.delete(f"/tokens/{extra['id']}").status_code in (200, 204)
        assert _status_within(vault, bearer, lambda status: status == 401)

        # an outage injected through the leader holds on the follower once it leads
        first.cli("cloud", "fail", "beta")
        first.wait_for(lambda api: (d := api.get("/deployments/ha").json())["ready"] == 2
                       and {r["cloud"] for r in d["replica_list"]} == {"alpha"})
        replicas = {r["id"] for r in second.deployment("ha")["replica_list"]}

        with Load(f"{gateway.url}/d/ha/version", {}) as load:
            time.sleep(1)
            first.proc.kill()
            first.proc.wait()
            killed_at = time.monotonic()
            while not leads(second.url):
                assert time.monotonic() - killed_at < TAKEOVER_BOUND_S + 5, second.log.read_text()[-3000:]
                time.sleep(0.1)
            takeover_s = time.monotonic() - killed_at
            # the new leader's controllers act at once (the dead leader's leases are not waited
            # out): a replica killed now is replaced, on the cloud that is not down
            victim = sorted(replicas)[0]
            for pid in [pid for pid, wid in workload_processes(workloads).items() if wid == victim]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass  # a short-lived child of the replica's, gone since it was listed
            after = second.wait_for(lambda api: (d := api.get("/deployments/ha").json())["ready"] == 2
                                    and victim not in {r["id"] for r in d["replica_list"]} and d, timeout=20)
            assert {r["cloud"] for r in after["replica_list"]} == {"alpha"}
            time.sleep(1)
        report_fault(f"leader server killed under load (takeover {takeover_s:.1f} s)", load.ok + len(load.failures),
                     len(load.failures))
        assert load.failures == [] and load.ok > 50
        assert takeover_s < TAKEOVER_BOUND_S
        assert gateway.health()["server"] == second.url  # the gateway follows the new leader
    finally:
        if gateway is not None:
            stop(gateway.proc)
        stop(second.proc)
        stop(first.proc)
        kill_workloads(workloads)


def _status_within(url: str, headers: dict[str, str], ok, timeout: float = 10) -> bool:  # noqa: ANN001
    """Whether a call of ``url`` answers a status ``ok`` accepts within ``timeout`` seconds (a change
    reaches the gateways within a second or so)."""
    deadline = time.monotonic() + timeout
    while not ok(web.post(url, headers=headers).status_code):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_traffic_at_the_follower_counts_for_the_leaders_autoscaler(tmp_path: Path, pg_url: str) -> None:
    workloads = tmp_path / "workloads"
    env = {"FERMION_WORKLOADS": str(workloads)}
    first = start_server(tmp_path / "a", CLOUDS, db_url=pg_url, env=env)
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "cli.json", tmp_path / "b" / "cli.json")
    second = start_server(tmp_path / "b", CLOUDS, db_url=pg_url, env=env)
    try:
        assert leads(first.url) and not leads(second.url)
        first.cli("deploy", PHOTON, "--name", "elastic", "--public", "--replicas", "0", "--min-replicas", "0",
                  "--max-replicas", "2", "--scale-to-zero-delay", "3")
        url = f"{second.url}/d/elastic/version"  # the follower's own gateway: held there, woken by the leader
        second.wait_for(lambda _: web.post(url, timeout=60).status_code == 200, timeout=60)
        reasons = [e["reason"] for e in first.api().get("/events", params={"object_id": "elastic"}).json()]
        assert "autoscale 0 → 1: woken by 1 waiting request(s)" in reasons, reasons
        with Load(url, {}, workers=2) as load:
            time.sleep(8)  # well past the idle delay, every request at the follower
            d = first.deployment("elastic")
        assert d["status"] != "IDLE" and d["replicas"] >= 1 and load.failures == [] and load.ok > 50
        first.wait_for(lambda api: api.get("/deployments/elastic").json()["status"] == "IDLE", timeout=30)
    finally:
        for server in (second, first):
            stop(server.proc)
        kill_workloads(workloads)
