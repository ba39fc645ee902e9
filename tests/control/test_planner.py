"""The pure planners, table by table: no processes, no database, no clock."""

from __future__ import annotations

import pytest

from fermion.control import (
    TRANSITIONS,
    AttemptView,
    DeploymentView,
    JobView,
    Observation,
    ReplicaView,
    plan_deployment,
    plan_job,
)
from fermion.control._planner import MAX_CRASHES, REPLACE_AFTER, STARTUP_TIMEOUT_S, UNHEALTHY_AFTER, step_replica

NOW = 10_000.0
UP = Observation(alive=True, url="http://10.0.0.7:9000", health="ready")
LISTENING = Observation(alive=True, url="http://10.0.0.7:9000", health="starting")
SILENT = Observation(alive=True, url="http://10.0.0.7:9000", health=None)
CRASHED = Observation(alive=False, exit_code=3, last_line="ValueError: bad weights")
LOST = Observation(alive=False, lost=True, note="ray actor or node died")


def replica(state: str, rid: str = "r1", **kw: object) -> ReplicaView:
    return ReplicaView(**{"id": rid, "generation": 1, "state": state, "cloud": "a", "has_handle": True,
                          "state_since": NOW - 1, "created_at": NOW - 10, **kw})  # type: ignore[arg-type]


# (state, observation, extra view fields) -> (next state or None for "same", stop, counts as a crash)
REPLICA_TABLE = [
    ("PROVISIONING", LISTENING, {}, "STARTING", None, False),
    ("PROVISIONING", UP, {}, "READY", None, False),
    ("STARTING", UP, {}, "READY", None, False),
    ("STARTING", LISTENING, {}, None, None, False),
    ("STARTING", LISTENING, {"state_since": NOW - STARTUP_TIMEOUT_S - 1}, "FAILED", "kill", True),
    ("STARTING", CRASHED, {}, "FAILED", None, True),
    ("READY", CRASHED, {}, "FAILED", None, True),
    ("READY", LOST, {}, "FAILED", None, False),  # lost with its node: not the photon's fault
    ("READY", SILENT, {}, None, None, False),  # one failed probe: keep serving
    ("READY", SILENT, {"failed_probes": UNHEALTHY_AFTER - 1}, "UNHEALTHY", None, False),
    ("UNHEALTHY", UP, {"failed_probes": 4}, "READY", None, False),
    ("UNHEALTHY", SILENT, {"failed_probes": REPLACE_AFTER - 1}, "FAILED", "kill", True),
    ("DRAINING", SILENT, {}, None, None, False),
    ("DRAINING", SILENT, {"state_since": NOW - 31}, None, "kill", False),
    ("DRAINING", CRASHED, {}, "TERMINATED", None, False),
    ("PROVISIONING", None, {"has_handle": False}, "TERMINATED", "kill", False),  # start interrupted
    ("READY", None, {"has_handle": False}, "TERMINATED", "kill", False),
]


@pytest.mark.parametrize(("state", "obs", "extra", "after", "stop", "crash"), REPLICA_TABLE)
def test_the_replica_state_machine(state: str, obs: Observation | None, extra: dict, after: str | None,
                                   stop: str | None, crash: bool) -> None:
    change = step_replica(replica(state, **extra), obs, NOW)
    got = (change.state if change else None, change.stop if change else None, change.crashed if change else False)
    assert got == (after, stop, crash)


def test_a_crash_reason_quotes_the_exit_code_and_the_log() -> None:
    change = step_replica(replica("READY", memory_gb=0.5), Observation(alive=False, exit_code=137,
                          note="killed for using more than its memory limit", last_line="Killed"), NOW)
    assert change is not None
    assert change.reason == "exited with code 137 (killed for using more than its memory limit of 0.5 GB): Killed"


def test_every_transition_leads_to_a_known_state() -> None:
    known = {"PENDING", "PROVISIONING", "STARTING", "READY", "UNHEALTHY", "DRAINING", "TERMINATED", "FAILED", None}
    assert all(after in known for after, _, _, _ in TRANSITIONS.values())


def deployment(replicas: int = 2, **kw: object) -> DeploymentView:
    return DeploymentView(**{"name": "web", "generation": 1, "replicas": replicas, "status": "DEPLOYING", **kw})  # type: ignore[arg-type]


def test_a_new_deployment_asks_for_its_replicas() -> None:
    plan = plan_deployment(deployment(3), [], {}, frozenset({"a"}), NOW)
    assert len(plan.new_replicas) == 3 and plan.status == "DEPLOYING"


def test_ready_replicas_make_a_ready_deployment_and_nothing_else() -> None:
    rs = [replica("READY", "r1"), replica("READY", "r2")]
    plan = plan_deployment(deployment(2), rs, {"r1": UP, "r2": UP}, frozenset({"a"}), NOW)
    assert plan.changes == [] and plan.new_replicas == [] and plan.status == "READY"


def test_scale_down_drains_the_least_useful_first() -> None:
    rs = [replica("READY", "old", created_at=1), replica("READY", "new", created_at=2), replica("STARTING", "cold", created_at=3)]
    obs = {"old": UP, "new": UP, "cold": LISTENING}
    plan = plan_deployment(deployment(1), rs, obs, frozenset({"a"}), NOW)
    drained = {c.id: (c.state, c.stop) for c in plan.changes if c.state == "DRAINING"}
    assert drained == {"cold": ("DRAINING", "drain"), "new": ("DRAINING", "drain")}


def test_a_rolling_update_keeps_the_old_generation_until_the_new_one_serves() -> None:
    old = replica("READY", "old")
    plan = plan_deployment(deployment(1, generation=2), [old], {"old": UP}, frozenset({"a"}), NOW)
    assert plan.new_replicas and not any(c.state == "DRAINING" for c in plan.changes)
    assert plan.status == "DEGRADED"
    new = replica("STARTING", "new", generation=2)
    plan = plan_deployment(deployment(1, generation=2), [old, new], {"old": UP, "new": UP}, frozenset({"a"}), NOW)
    assert [(c.id, c.state) for c in plan.changes] == [("new", "READY"), ("old", "DRAINING")]


def test_a_crash_loop_fails_the_deployment_and_backs_off() -> None:
    plan = plan_deployment(deployment(1, crash_count=MAX_CRASHES - 1), [replica("STARTING")], {"r1": CRASHED},
                           frozenset({"a"}), NOW)
    assert plan.status == "FAILED" and "crash loop" in plan.status_reason and plan.new_replicas == []
    plan = plan_deployment(deployment(1, crash_count=1), [replica("STARTING")], {"r1": CRASHED}, frozenset({"a"}), NOW)
    assert plan.crash_count == 2 and plan.next_start_at is not None and plan.next_start_at > NOW
    assert plan.new_replicas == []  # backing off: no new replica before next_start_at


def test_a_replica_lost_with_its_node_is_replaced_at_once_without_a_crash() -> None:
    plan = plan_deployment(deployment(1), [replica("READY")], {"r1": LOST}, frozenset({"a"}), NOW)
    assert plan.crash_count is None and len(plan.new_replicas) == 1


def test_deleting_drains_everything_then_deletes() -> None:
    plan = plan_deployment(deployment(2, status="DELETING"), [replica("READY", "r1"), replica("PENDING", "r2", has_handle=False)],
                           {"r1": UP}, frozenset({"a"}), NOW)
    assert {c.id: c.state for c in plan.changes} == {"r1": "DRAINING", "r2": "TERMINATED"} and not plan.delete
    assert plan_deployment(deployment(2, status="DELETING"), [], {}, frozenset({"a"}), NOW).delete


def test_a_move_surges_one_replica_then_retires_one() -> None:
    d = deployment(2, status="READY", target={"b": 2})
    rs = [replica("READY", "r1"), replica("READY", "r2")]
    plan = plan_deployment(d, rs, {"r1": UP, "r2": UP}, frozenset({"a", "b"}), NOW)
    assert plan.new_replicas == ["moving a replica to b"] and plan.only_cloud == "b"
    rs.append(replica("READY", "r3", cloud="b"))
    plan = plan_deployment(d, rs, {r.id: UP for r in rs}, frozenset({"a", "b"}), NOW)
    assert [c.state for c in plan.changes] == ["DRAINING"] and plan.new_replicas == []
    plan = plan_deployment(d, rs, {r.id: UP for r in rs}, frozenset({"a"}), NOW)  # b went down: give up
    assert plan.clear_target.startswith("abandoned")


# -- jobs -----------------------------------------------------------------------------------------
JOB = JobView("train", "RUNNING", restarts=0, max_restarts=2, next_start_at=0)
RUNNING = AttemptView("a1", 1, "RUNNING", "a", has_handle=True)

JOB_TABLE = [
    (Observation(alive=True), None, None, False),
    (Observation(alive=False, exit_code=0), "SUCCEEDED", "SUCCEEDED", False),
    (Observation(alive=False, exit_code=1, last_line="boom"), "FAILED", "PENDING", False),
    (Observation(alive=False, exit_code=None), "PREEMPTED", "PENDING", False),  # killed with its cloud
    (Observation(alive=False, lost=True, note="spot capacity reclaimed on a"), "PREEMPTED", "PENDING", False),
    # its wrapper could not fetch the checkpoint or data (server or store out of reach): no restart used
    (Observation(alive=False, exit_code=75, last_line="cannot fetch"), "PREEMPTED", "PENDING", False),
]


@pytest.mark.parametrize(("obs", "attempt_state", "status", "start"), JOB_TABLE)
def test_how_an_attempt_ended_decides_the_job(obs: Observation, attempt_state: str | None, status: str | None,
                                              start: bool) -> None:
    plan = plan_job(JOB, RUNNING, obs, NOW)
    assert (plan.attempt_state, plan.status, plan.start) == (attempt_state, status, start)
    if obs.exit_code == 75:
        assert plan.restarts is None and plan.next_start_at > NOW  # restarts unchanged


def test_an_own_error_is_retried_max_restarts_times() -> None:
    plan = plan_job(JobView("t", "RUNNING", 2, 2, 0), RUNNING, Observation(alive=False, exit_code=127,
                    last_line="cannot run '/nonexistent/bin': No such file or directory"), NOW)
    assert plan.status == "FAILED" and "No such file" in plan.reason and plan.restarts == 3


def test_a_pending_job_starts_when_due_and_not_before() -> None:
    assert plan_job(JobView("t", "PENDING", 1, 2, NOW + 5), None, None, NOW).start is False
    assert plan_job(JobView("t", "PENDING", 1, 2, NOW - 5), None, None, NOW).start is True


def test_an_interrupted_start_is_cleaned_up_and_retried() -> None:
    plan = plan_job(JOB, AttemptView("a1", 1, "STARTING", "a", has_handle=False), None, NOW)
    assert (plan.attempt_state, plan.stop, plan.status) == ("PREEMPTED", "kill", "PENDING")


def test_cancel_drains_the_attempt_then_ends_it() -> None:
    cancelled = JobView("t", "RUNNING", 0, 2, 0, cancel_requested=True)
    plan = plan_job(cancelled, RUNNING, Observation(alive=True), NOW)
    assert (plan.attempt_state, plan.stop, plan.status) == ("CANCELLING", "drain", "CANCELLING")
    draining = AttemptView("a1", 1, "CANCELLING", "a", has_handle=True, cancelling_since=NOW - 1)
    assert plan_job(cancelled, draining, Observation(alive=True), NOW).stop is None  # still draining: wait
    late = AttemptView("a1", 1, "CANCELLING", "a", has_handle=True, cancelling_since=NOW - 60)
    assert plan_job(cancelled, late, Observation(alive=True), NOW).stop == "kill"
    plan = plan_job(cancelled, draining, Observation(alive=False, exit_code=0), NOW)
    assert (plan.attempt_state, plan.status) == ("CANCELLED", "CANCELLED")


def test_a_steady_deployment_plans_nothing_to_write() -> None:
    d = deployment(2, status="READY", status_reason="2/2 replicas ready")
    rs = [replica("READY", "r1"), replica("READY", "r2")]
    assert not plan_deployment(d, rs, {"r1": UP, "r2": UP}, frozenset({"a"}), NOW).touches()


def test_scaling_during_a_move_abandons_it() -> None:
    d = deployment(1, status="READY", target={"a": 1, "b": 1})
    plan = plan_deployment(d, [replica("READY", "r1"), replica("READY", "r2")], {"r1": UP, "r2": UP},
                           frozenset({"a", "b"}), NOW)
    assert plan.clear_target.startswith("abandoned") and plan.new_replicas == []


def test_a_crash_while_deleting_never_undoes_the_delete() -> None:
    d = deployment(1, status="DELETING", crash_count=MAX_CRASHES - 1, target={"a": 1})
    plan = plan_deployment(d, [replica("STARTING", "r1"), replica("READY", "r2")], {"r1": CRASHED, "r2": UP},
                           frozenset({"a"}), NOW)
    assert plan.status is None and plan.clear_target.startswith("abandoned")
    assert [c.state for c in plan.changes if c.id == "r2"] == ["DRAINING"]


# -- canaries and spot ------------------------------------------------------------------------------
def test_a_crashing_canary_is_rolled_back_and_never_fails_the_deployment() -> None:
    rs = [replica("READY", "s1"), replica("READY", "s2"), replica("READY", "c1", generation=2)]
    crashed = Observation(alive=False, exit_code=1, last_line="ImportError: no module named torch2")
    d = deployment(2, status="READY", canary_generation=2, canary_replicas=1, crash_count=MAX_CRASHES - 1)
    plan = plan_deployment(d, rs, {"s1": UP, "s2": UP, "c1": crashed}, frozenset({"a"}), NOW)
    assert "ImportError" in plan.canary_crashed
    assert plan.status != "FAILED" and plan.crash_count is None and plan.last_error is None
    assert plan.new_canaries == [] and plan.new_replicas == []  # no replacement: the canary ends


def test_a_spot_swap_surge_is_kept_until_ready_then_the_stand_in_drains() -> None:
    stand_in = replica("READY", "od", spot=False, created_at=1)
    spot = replica("READY", "sp", spot=True, created_at=2)
    d = deployment(2, status="READY", spot_share=1.0, spot_available=True)
    plan = plan_deployment(d, [stand_in, spot], {"od": UP, "sp": UP}, frozenset({"a"}), NOW)
    assert plan.new_spot == 1 and len(plan.new_replicas) == 1 and not any(c.state == "DRAINING" for c in plan.changes)
    surge = replica("STARTING", "new", spot=True, created_at=3)
    plan = plan_deployment(d, [stand_in, spot, surge], {"od": UP, "sp": UP, "new": LISTENING}, frozenset({"a"}), NOW)
    assert not any(c.state == "DRAINING" for c in plan.changes) and plan.new_replicas == []
    ready = replica("READY", "new", spot=True, created_at=3)
    plan = plan_deployment(d, [stand_in, spot, ready], {"od": UP, "sp": UP, "new": UP}, frozenset({"a"}), NOW)
    assert [(c.id, c.reason) for c in plan.changes if c.state == "DRAINING"] == [("od", "swapped for a spot replica")]


def test_scaling_down_keeps_each_market_at_its_share() -> None:
    rs = [replica("READY", f"s{i}", spot=True, created_at=10 + i) for i in range(2)]
    rs += [replica("READY", f"o{i}", spot=False, created_at=i) for i in range(2)]
    d = deployment(2, status="READY", spot_share=0.5)
    plan = plan_deployment(d, rs, {r.id: UP for r in rs}, frozenset({"a"}), NOW)
    drained = [c.id for c in plan.changes if c.state == "DRAINING"]
    assert len(drained) == 2 and sum(x.startswith("s") for x in drained) == 1  # one of each: 1 spot, 1 on-demand left
