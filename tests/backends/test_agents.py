"""Agent clouds end to end (issue 29, first step): a real server, a real `fermion agent start`
that dials out to it, real replicas through the server's gateway. The agent's token acts for its
own cloud only; an agent killed and restarted keeps its replicas serving and adopts them; an
agent out of reach has its work moved, and what ran on meanwhile is stopped when it is heard again."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest

from fermion.backends import Isolation, checked_status
from fermion.testing import (
    AgentProc,
    Load,
    ServerProc,
    running_agent,
    running_server,
    start_agent,
    stop,
    wait_connected,
    web,
    workload_processes,
)
from tests.support import TEXT_PHOTON

JOBS = Path(__file__).resolve().parents[2] / "examples" / "jobs"

T = TypeVar("T")
# the agent cloud is the cheapest: placement prefers it; the local one takes what it cannot
CLOUDS = """
clouds:
  - name: edge
    kind: agent
    pricing: {price_per_hour: 0.01}
  - name: home
    pricing: {price_per_hour: 1.0}
"""
LINK_LOST_S = 6  # the server's patience with a silent agent: short for the test, long enough for a restart


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 60.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    with running_server(tmp_path_factory.mktemp("agents") / "home", CLOUDS,
                        env={"FERMION_AGENT_LINK_LOST_S": str(LINK_LOST_S)}) as s:
        yield s


@pytest.fixture
def agent_root(tmp_path: Path) -> Path:
    return tmp_path / "edge"


@pytest.fixture
def agent(server: ServerProc, agent_root: Path) -> Iterator[AgentProc]:
    """The edge cloud's agent over ``agent_root``; afterwards it is stopped and its workloads killed."""
    with running_agent(server, "edge", agent_root) as a:
        yield a


@contextmanager
def frozen(agent: AgentProc) -> Iterator[None]:
    """The agent silent for the ``with`` block (no poll, no report), its workloads running on."""
    os.kill(agent.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(agent.proc.pid, signal.SIGCONT)


def replicas(server: ServerProc, name: str) -> list[dict]:
    return server.deployment(name)["replica_list"]


def running_replicas(root: Path) -> set[str]:
    """The replica ids with a process in the agent's folder (read from /proc, not from the agent)."""
    return {wid for wid in workload_processes(root / "workloads").values() if wid.startswith("r-")}


def test_an_agent_cloud_serves_and_its_token_acts_for_its_cloud_only(
        server: ServerProc, agent_root: Path, agent: AgentProc) -> None:
    try:
        listed = {c["name"]: c for c in server.api().get("/clouds").json()}
        assert listed["edge"]["kind"] == "agent" and "agent connected" in listed["edge"]["isolation"]
        server.cli("deploy", TEXT_PHOTON, "--name", "served", "--cloud", "edge", "--public")
        (replica,) = replicas(server, "served")
        assert replica["cloud"] == "edge" and replica["state"] == "READY"
        answer = web.post(f"{server.url}/d/served/upper", json={"texts": ["through the agent"]}, timeout=30)
        assert answer.status_code == 200 and answer.json() == ["THROUGH THE AGENT"]
        assert running_replicas(agent_root) == {replica["id"]}  # it runs in the agent's folder, not the server's

        bearer = {"Authorization": f"Bearer {agent.token}"}
        # no user API answers an agent token; nor another cloud's agent routes
        for path in ("/api/v1/deployments", "/api/v1/clouds", "/api/v1/secrets"):
            assert web.get(f"{server.url}{path}", headers=bearer, timeout=10).status_code == 401
        assert web.get(f"{server.url}/api/v1/agent/home/config", headers=bearer, timeout=10).status_code == 401
        forged = agent.token.rsplit(".", 1)[0] + ".0" * 32
        assert web.get(f"{server.url}/api/v1/agent/edge/config", headers={"Authorization": f"Bearer {forged}"},
                       timeout=10).status_code == 401
        assert web.get(f"{server.url}/api/v1/agent/edge/config", headers=bearer, timeout=10).status_code == 200
        admin = {"Authorization": f"Bearer {server.token}"}  # nor does a user's token, an admin's included, open them
        assert web.get(f"{server.url}/api/v1/agent/edge/config", headers=admin, timeout=10).status_code == 401
        assert web.post(f"{server.url}/api/v1/agent/edge/report", headers=admin, json={"agent": "x"},
                        timeout=10).status_code == 401
        # an archive no workload of this cloud was given is not served
        assert web.get(f"{server.url}/api/v1/agent/edge/archive/{'0' * 64}", headers=bearer,
                       timeout=10).status_code == 404

        # a new token (what `fermion cloud agent edge` issues) voids the old one at once
        printed = server.cli("cloud", "agent", "edge").stdout
        assert "fermion agent start --server" in printed and "--cloud edge" in printed
        assert web.get(f"{server.url}/api/v1/agent/edge/config", headers=bearer, timeout=10).status_code == 401
        refused = server.cli("cloud", "agent", "home", check=False)
        assert refused.returncode != 0 and "not an agent cloud" in refused.stderr
    finally:
        server.cli("deployment", "delete", "served", check=False)


def test_an_agent_restarted_keeps_its_replicas_serving_and_adopts_them(
        server: ServerProc, agent_root: Path, agent: AgentProc) -> None:
    try:
        server.cli("deploy", TEXT_PHOTON, "--name", "kept", "--cloud", "edge", "--replicas", "2", "--public")
        before = {r["id"] for r in replicas(server, "kept")}
        assert running_replicas(agent_root) == before
        with Load(f"{server.url}/d/kept/upper", {"texts": ["still here"]}, workers=3) as load:
            wait_for("traffic", lambda: load.ok > 20)
            agent.proc.send_signal(signal.SIGKILL)  # the agent dies; its replicas do not
            agent.proc.wait(10)
            served = load.ok
            wait_for("traffic while the agent is gone", lambda: load.ok > served + 20)
            agent.restart()
            wait_connected(server, "edge", agent)
            served = load.ok
            wait_for("traffic after it came back", lambda: load.ok > served + 20)
        assert load.failures == [], load.failures[:5]
        # adopted: the same replicas, READY, none started again, none twice
        after = replicas(server, "kept")
        assert {r["id"] for r in after} == before and all(r["state"] == "READY" for r in after)
        assert running_replicas(agent_root) == before
        assert len(workload_processes(agent_root / "workloads")) == len(
            {pid for pid, wid in workload_processes(agent_root / "workloads").items() if wid in before})
        # a second agent for the same cloud (here over the same folder) replaces this one, which is
        # refused from then on and stops; the second adopts the same replicas
        second = start_agent(server, "edge", agent_root, token=agent.token)
        try:
            wait_for("the replaced agent to stop", lambda: agent.proc.poll() is not None)
            assert agent.proc.returncode != 0 and "replaced by a newer one" in agent.log.read_text()
            assert {r["id"] for r in replicas(server, "kept") if r["state"] == "READY"} == before
        finally:
            stop(second.proc)
    finally:
        server.cli("deployment", "delete", "kept", check=False)


def test_a_silent_agent_has_its_work_moved_and_what_ran_on_is_stopped_when_it_returns(
        server: ServerProc, agent_root: Path, agent: AgentProc) -> None:
    try:
        server.cli("deploy", TEXT_PHOTON, "--name", "moved", "--cloud", "edge", "--cloud", "home", "--public")
        (first,) = replicas(server, "moved")
        assert first["cloud"] == "edge"
        # the link goes silent (the agent frozen: no poll, no report), its replica still runs
        with frozen(agent):
            moved = wait_for("a replacement READY on the other cloud", lambda: next(
                (r for r in replicas(server, "moved") if r["cloud"] == "home" and r["state"] == "READY"), None))
            clouds = {c["name"]: c for c in server.api().get("/clouds").json()}
            assert clouds["edge"]["health"] == "unhealthy" and "lost" in clouds["edge"]["health_reason"]
            assert first["id"] in running_replicas(agent_root)  # out of reach, not dead
            answer = web.post(f"{server.url}/d/moved/upper", json={"texts": ["moved"]}, timeout=30)
            assert answer.status_code == 200
        wait_connected(server, "edge", agent)
        # heard again: the replica the server replaced is stopped, never adopted; nothing runs twice
        wait_for("the replaced replica to be stopped", lambda: first["id"] not in running_replicas(agent_root))
        live = [r for r in replicas(server, "moved") if r["state"] == "READY"]
        assert [r["id"] for r in live] == [moved["id"]]
        events = server.api().get("/events", params={"object_id": first["id"]}).json()
        assert any("lost" in e["reason"] for e in events)
    finally:
        server.cli("deployment", "delete", "moved", check=False)


def test_a_job_on_a_silent_agent_resumes_elsewhere_from_its_checkpoint_and_its_first_attempt_is_ended(
        server: ServerProc, agent_root: Path, agent: AgentProc) -> None:
    server.cli("job", "run", "--name", "steps", "--workdir", str(JOBS), "--cloud", "edge", "--cloud", "home",
               "--", "python", "steps.py", "120", "0.1")  # running well past the link-lost time
    first = wait_for("the job to run on the agent", lambda: (j := job(server, "steps"))["status"] == "RUNNING"
                     and j["attempts"] and j)
    assert first["attempts"][0]["cloud"] == "edge"
    # a checkpoint sent well after step 10 (through the agent's relay: a frozen agent carries none)
    wait_for("a checkpoint past step 10", lambda: re.search(r"step 13 on edge[\s\S]*checkpoint snapshot .* sent",
                                                            job_log(server, "steps", 0)))
    with frozen(agent):
        done = wait_for("the job to end", lambda: (j := job(server, "steps"))["status"] in ("SUCCEEDED", "FAILED")
                        and j, timeout=120)
        # the first attempt kept running, out of reach: the server resumed the job without it
        assert workload_processes(agent_root / "workloads"), "the first attempt should still run, unreachable"
    assert done["status"] == "SUCCEEDED", done
    assert [(a["cloud"], a["state"]) for a in done["attempts"]] == [("edge", "PREEMPTED"), ("home", "SUCCEEDED")]
    second = job_log(server, "steps", 1)
    assert int(re.search(r"resumed from step (\d+) on home", second).group(1)) >= 10
    assert "done: sum of steps 7260" in second  # 1 + ... + 120: no step lost or repeated
    # heard again: the attempt the server gave up on is ended, so the job never runs twice
    wait_for("the first attempt to be ended", lambda: not workload_processes(agent_root / "workloads"))


def job(server: ServerProc, name: str) -> dict:
    with server.api() as api:
        return api.get(f"/jobs/{name}").json()


def job_log(server: ServerProc, name: str, attempt: int) -> str:
    with server.api() as api:
        logs = list(api.get(f"/jobs/{name}/logs").json().values())
    return logs[attempt] if len(logs) > attempt else ""


def test_a_deployment_deleted_while_its_agent_is_silent_is_stopped_when_the_agent_returns(
        server: ServerProc, agent_root: Path, agent: AgentProc) -> None:
    server.cli("deploy", TEXT_PHOTON, "--name", "gone", "--cloud", "edge", "--public")
    (replica,) = replicas(server, "gone")
    with frozen(agent):  # the stop cannot reach the agent: the deletion does not wait on it
        server.cli("deployment", "delete", "gone")
        wait_for("the deployment to go", lambda: server.api().get("/deployments/gone").status_code == 404)
        assert replica["id"] in running_replicas(agent_root)
    wait_for("the deleted deployment's replica to be stopped", lambda: not running_replicas(agent_root))


@pytest.mark.skipif(not Isolation().network, reason="bubblewrap cannot make network namespaces here")
def test_an_agents_workloads_have_no_network_path_but_its_relay_to_their_own_routes(
        server: ServerProc, agent: AgentProc) -> None:
    listed = {c["name"]: c for c in server.api().get("/clouds").json()}
    assert "network: a namespace of its own each" in listed["edge"]["isolation"], listed["edge"]
    port = int(server.url.rsplit(":", 1)[1])
    probe = ("import http.client, os, socket\n"
             "try:\n"
             f"    socket.create_connection(('127.0.0.1', {port}), timeout=3); print('REACHED')\n"
             "except OSError as exc:\n    print('NO-PATH', type(exc).__name__)\n"
             "path = os.environ['FERMION_SERVER_SOCKET']\n"
             "for route in ('/api/v1/deployments', '/api/v1/attempts/self/code'):\n"
             "    conn = http.client.HTTPConnection('fermion'); conn.sock = socket.socket(socket.AF_UNIX)\n"
             "    conn.sock.connect(path); conn.request('GET', route)\n"
             "    print('ROUTE', route, conn.getresponse().status)\n")
    server.cli("job", "run", "--name", "edge-net", "--cloud", "edge", "--follow", "--timeout", "60", "--",
               "python", "-c", probe)
    log = job_log(server, "edge-net", 0)
    assert "NO-PATH" in log and "REACHED" not in log, log
    # the agent's relay: the user API does not exist; the job's own routes reach the server (no token: 401)
    assert "ROUTE /api/v1/deployments 404" in log and "ROUTE /api/v1/attempts/self/code 401" in log, log


def test_what_an_agent_reports_is_taken_only_as_far_as_it_is_well_formed() -> None:
    """A hostile or broken agent cannot point the gateway elsewhere, claim readiness, or break a pass."""
    ok = checked_status({"alive": True, "url": "http://127.0.0.1:8123", "ready": True}, "edge")
    assert ok.alive and ok.url == "http://127.0.0.1:8123" and ok.ready is None  # the server probes readiness itself
    for url in ("http://10.0.0.9:80", "http://127.0.0.1:99999", "http://127.0.0.1:80/x", "file:///etc/passwd", 7):
        assert checked_status({"alive": True, "url": url}, "edge").url is None
    odd = checked_status({"alive": False, "exit_code": "0", "note": "x" * 10_000, "lost": "yes"}, "edge")
    assert odd.exit_code is None and len(odd.note) <= 300 and odd.lost is False
    assert checked_status({"alive": "yes"}, "edge").alive  # malformed: alive, until the link says otherwise
    assert checked_status([1, 2], "edge").alive
