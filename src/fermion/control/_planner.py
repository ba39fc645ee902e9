"""Pure planners: from a snapshot of one deployment (or job) and what the backends report now, the
actions to take. No database, no backend, no clock of their own: every test is a table.

The replica state machine is the table TRANSITIONS: (state, signal) → (next state, action, reason).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from ..store import LIVE_ATTEMPT_STATES, LIVE_REPLICA_STATES

FETCH_FAILED = 75  # an attempt's wrapper could not fetch its checkpoint or data (fermion.backends._attempt)
FETCH_RETRY_S = 10.0

MAX_CRASHES = 5  # consecutive crashes before a deployment is FAILED
STARTUP_TIMEOUT_S = 300.0
DRAIN_TIMEOUT_S = 30.0
UNHEALTHY_AFTER = 2  # failed probes of a READY replica
REPLACE_AFTER = 10  # failed probes of an UNHEALTHY replica

Stop = Literal["drain", "kill"] | None


def backoff_s(crashes: int) -> float:
    return min(30.0, 0.5 * 2 ** max(0, crashes - 1))


@dataclass(frozen=True)
class Observation:
    """What the backend (and a health probe) said of one workload during this pass."""

    alive: bool
    url: str | None = None
    health: str | None = None  # "ready", another /healthz status, or None if it did not answer
    exit_code: int | None = None
    note: str = ""
    lost: bool = False  # ended with its cloud or node: not the workload's fault
    last_line: str = ""  # its log's last telling line, once it ended


@dataclass(frozen=True)
class ReplicaView:
    id: str
    generation: int
    state: str
    cloud: str | None = None
    reason: str = ""
    has_handle: bool = False
    failed_probes: int = 0
    state_since: float = 0.0
    created_at: float = 0.0
    memory_gb: float | None = None
    url: str | None = None
    spot: bool = False  # on spot capacity (PENDING: to be started on spot only)


@dataclass(frozen=True)
class DeploymentView:
    name: str
    generation: int
    replicas: int
    status: str
    crash_count: int = 0
    next_start_at: float = 0.0
    target: dict[str, int] | None = None  # replicas per cloud of a move under way
    status_reason: str = ""
    wakes: bool = False  # it may scale to zero: at zero it is IDLE, and the first request wakes it
    canary_generation: int | None = None  # a canary under way: this generation runs beside the stable one
    canary_replicas: int = 0
    spot_share: float = 0.0  # of its replicas on spot; the rest, and stand-ins for reclaimed ones, on-demand
    spot_available: bool = False  # some allowed cloud has spot capacity now (a stand-in may be swapped back)


@dataclass
class ReplicaChange:
    id: str
    state: str | None = None  # None: keep the state
    reason: str = ""
    failed_probes: int | None = None
    url: str | None = None
    stop: Stop = None
    crashed: bool = False  # counts toward a crash loop


@dataclass
class DeploymentPlan:
    changes: list[ReplicaChange] = field(default_factory=list)
    new_replicas: list[str] = field(default_factory=list)  # one reason per replica to create
    new_canaries: list[str] = field(default_factory=list)  # the same, of the canary's generation
    new_spot: int = 0  # how many of new_replicas (the last ones) must go on spot: swaps for stand-ins
    canary_crashed: str = ""  # a canary replica crashed (why): the canary is rolled back
    place: list[str] = field(default_factory=list)  # PENDING replicas to start ("new" for the created)
    only_cloud: str | None = None  # during a move: where the surge replica goes
    status: str | None = None
    status_reason: str = ""
    crash_count: int | None = None
    next_start_at: float | None = None
    last_error: str | None = None
    target: dict[str, int] | None = None
    clear_target: str = ""  # the reason a move ended
    delete: bool = False

    def touches(self) -> bool:
        return bool(self.changes or self.new_replicas or self.new_canaries or self.place or self.status is not None
                    or self.canary_crashed
                    or self.crash_count is not None or self.clear_target or self.delete)


# -- the replica state machine -------------------------------------------------------------------
# signals, computed from an observation by `signal_of`
#   no_handle    a live row the backend never confirmed (the start was interrupted)
#   lost         ended with its cloud or node        gone         ended by itself
#   ready        answered /healthz "ready"            listening    has a URL, not ready yet
#   waiting      alive, no URL yet                    late         not ready within STARTUP_TIMEOUT_S
#   probe_failed a serving replica failed a probe     sick         ... UNHEALTHY_AFTER times in a row
#   hopeless     ... REPLACE_AFTER times in a row     drain_late   still draining after DRAIN_TIMEOUT_S
KEEP = None
CRASH, NO_CRASH = True, False  # whether the transition counts toward a crash loop
TRANSITIONS: dict[tuple[str, str], tuple[str | None, Stop, str, bool]] = {
    **{(s, "no_handle"): ("TERMINATED", "kill", "its start was interrupted (the server stopped mid-start); cleaned up",
                          NO_CRASH) for s in ("PROVISIONING", "STARTING", "READY", "UNHEALTHY", "DRAINING")},
    **{(s, "lost"): ("FAILED", None, "lost: {note}", NO_CRASH) for s in ("PROVISIONING", "STARTING", "READY", "UNHEALTHY")},
    **{(s, "gone"): ("FAILED", None, "{exit}", CRASH) for s in ("PROVISIONING", "STARTING", "READY", "UNHEALTHY")},
    ("DRAINING", "lost"): ("TERMINATED", None, "{keep}", NO_CRASH),
    ("DRAINING", "gone"): ("TERMINATED", None, "{keep}", NO_CRASH),
    ("DRAINING", "drain_late"): (KEEP, "kill", "{keep}", NO_CRASH),
    ("PROVISIONING", "ready"): ("READY", None, "passed health check", NO_CRASH),
    ("STARTING", "ready"): ("READY", None, "passed health check", NO_CRASH),
    ("UNHEALTHY", "ready"): ("READY", None, "passed health check", NO_CRASH),
    ("PROVISIONING", "listening"): ("STARTING", None, "listening; waiting for init()", NO_CRASH),
    ("PROVISIONING", "late"): ("FAILED", "kill", f"not ready within {STARTUP_TIMEOUT_S:.0f}s", CRASH),
    ("STARTING", "late"): ("FAILED", "kill", f"not ready within {STARTUP_TIMEOUT_S:.0f}s", CRASH),
    ("READY", "probe_failed"): (KEEP, None, "{keep}", NO_CRASH),
    ("READY", "sick"): ("UNHEALTHY", None, "{probes} health checks failed", NO_CRASH),
    ("UNHEALTHY", "probe_failed"): (KEEP, None, "{keep}", NO_CRASH),
    ("UNHEALTHY", "sick"): (KEEP, None, "{keep}", NO_CRASH),
    ("UNHEALTHY", "hopeless"): ("FAILED", "kill", "replaced after {probes} failed health checks", CRASH),
}


def signal_of(r: ReplicaView, obs: Observation | None, now: float) -> str | None:
    if r.state == "PENDING":
        return None
    if not r.has_handle:
        return "no_handle"
    if obs is None:
        return None  # not observed this pass (e.g. created after the probes)
    if not obs.alive:
        return "lost" if obs.lost else "gone"
    if r.state == "DRAINING":
        return "drain_late" if now - r.state_since > DRAIN_TIMEOUT_S else None
    if obs.health == "ready":
        return "ready"
    if r.state in ("PROVISIONING", "STARTING"):
        if now - r.state_since > STARTUP_TIMEOUT_S:
            return "late"
        return "listening" if obs.url and r.state == "PROVISIONING" else "waiting"
    probes = r.failed_probes + 1
    if r.state == "UNHEALTHY" and probes >= REPLACE_AFTER:
        return "hopeless"
    return "sick" if probes >= UNHEALTHY_AFTER else "probe_failed"


def exit_text(obs: Observation, memory_gb: float | None) -> str:
    text = f"exited with code {obs.exit_code}" if obs.exit_code is not None else "process exited"
    note = obs.note
    if note and memory_gb and "memory limit" in note:
        note += f" of {memory_gb:g} GB"
    if note:
        text += f" ({note})"
    return f"{text}: {obs.last_line}" if obs.last_line else text


def step_replica(r: ReplicaView, obs: Observation | None, now: float) -> ReplicaChange | None:
    """One replica's next state, by the table."""
    sig = signal_of(r, obs, now)
    if sig is None:
        if obs is not None and obs.url and obs.url != r.url and r.state in ("PROVISIONING", "STARTING", "READY"):
            return ReplicaChange(r.id, url=obs.url)
        return None
    if (r.state, sig) not in TRANSITIONS:
        if sig == "ready" and r.failed_probes:
            return ReplicaChange(r.id, failed_probes=0, url=obs.url if obs else None)
        return None
    state, stop, template, crash = TRANSITIONS[(r.state, sig)]
    probes = r.failed_probes + 1 if sig in ("probe_failed", "sick", "hopeless") else (0 if sig == "ready" else None)
    reason = template.format(
        keep=r.reason, probes=probes, note=obs.note if obs else "",
        exit=exit_text(obs, r.memory_gb) if obs else "",
    )
    return ReplicaChange(r.id, state=state, reason=reason, failed_probes=probes, stop=stop,
                         url=obs.url if obs else None, crashed=crash)


# -- one deployment -------------------------------------------------------------------------------
def plan_deployment(d: DeploymentView, replicas: list[ReplicaView], observations: dict[str, Observation],
                    healthy: frozenset[str], now: float) -> DeploymentPlan:
    """What to do for ``d`` now: replica transitions, scaling, the rolling update, a move, status."""
    plan = DeploymentPlan()
    deleting, failed = d.status == "DELETING", d.status == "FAILED"
    crash_count, last_error, next_start = d.crash_count, None, d.next_start_at
    states: dict[str, str] = {}
    for r in replicas:
        change = step_replica(r, observations.get(r.id), now)
        states[r.id] = r.state
        if change is None:
            continue
        plan.changes.append(change)
        if change.state is not None:
            states[r.id] = change.state
        if d.canary_generation is not None and r.generation == d.canary_generation:
            if change.crashed:  # the canary's failure, not the deployment's: the canary is rolled back
                plan.canary_crashed = change.reason
            continue
        if change.state == "READY":
            crash_count = 0
        if change.crashed:
            crash_count += 1
            last_error = change.reason
            next_start = now + backoff_s(crash_count)
    if crash_count != d.crash_count or next_start != d.next_start_at:
        plan.crash_count, plan.next_start_at = crash_count, next_start
    if last_error is not None:
        plan.last_error = last_error
        if crash_count >= MAX_CRASHES and not failed and not deleting:
            plan.status, failed = "FAILED", True
            plan.status_reason = f"crash loop ({crash_count} crashes in a row); last error: {last_error}"

    alive = [r for r in replicas if states[r.id] in LIVE_REPLICA_STATES]
    active = [r for r in alive if states[r.id] != "DRAINING"]
    current = [r for r in active if r.generation == d.generation]
    canaries = [r for r in active if d.canary_generation is not None and r.generation == d.canary_generation]
    outdated = [r for r in active if r.generation != d.generation and r not in canaries]
    desired = 0 if deleting else d.replicas
    by_id = {c.id: c for c in plan.changes}

    def drain(r: ReplicaView, reason: str) -> None:
        change = by_id.get(r.id)
        if change is None:
            change = by_id[r.id] = ReplicaChange(r.id)
            plan.changes.append(change)
        if states[r.id] == "PENDING" or not r.has_handle:
            change.state, change.reason = "TERMINATED", reason
        else:
            change.state, change.reason, change.stop = "DRAINING", reason, "drain"
        states[r.id] = change.state

    new = 0
    if len(current) < desired and not failed and now >= next_start:
        new = desired - len(current)
        plan.new_replicas = [f"deployment {d.name} needs a replica"] * new
    target = None if deleting or failed else d.target
    if d.target is not None and target is None:
        plan.clear_target = "abandoned: the deployment is being deleted" if deleting else "abandoned: the deployment FAILED"
    counts = _per_cloud([r for r in current if states[r.id] != "PENDING"], states)
    if target is not None and sum(target.values()) != d.replicas:
        plan.clear_target = f"abandoned: scaled to {d.replicas} replicas during the move"
        target = None
    if target is not None:
        down = sorted(c for c in target if c not in healthy)
        settled = all(states[r.id] == "READY" for r in current)
        if down:
            plan.clear_target = f"abandoned: {', '.join(down)} unhealthy"
            target = None
        elif {c: n for c, n in counts.items() if n} == {c: n for c, n in target.items() if n} \
                and len(current) == d.replicas and settled:
            plan.clear_target = f"now placed as {target}"
            target = None
        elif settled and new == 0:
            surge = _surge_cloud(target, counts)
            if len(current) == d.replicas and surge is not None:
                plan.new_replicas.append(f"moving a replica to {surge}")
                new += 1
            elif len(current) > d.replicas:
                over = next((c for c in sorted(counts) if counts[c] > target.get(c, 0)), None)
                victim = next((r for r in current if r.cloud == over), None)
                if victim is not None:
                    drain(victim, f"moved to a better placement ({target})")
                    current.remove(victim)
        if target is not None:
            plan.only_cloud = _surge_cloud(target, counts)
    spot_wanted = math.floor(d.spot_share * desired + 1e-9)
    spot_count = sum(r.spot for r in current)
    stand_ins = (len(current) - spot_count) - (desired - spot_wanted)  # on-demand beyond the on-demand share
    swapping = stand_ins > 0 and any(r.spot and states[r.id] != "READY" for r in current)
    if spot_wanted and target is None and new == 0 and not swapping and d.spot_available and stand_ins > 0 \
            and spot_count < spot_wanted and len(current) == desired and all(states[r.id] == "READY" for r in current):
        plan.new_replicas.append("swapping an on-demand stand-in for spot capacity, which is back")
        plan.new_spot, new, swapping = 1, 1, True
    extra = len(current) + new - desired
    if (target is not None or swapping) and extra == 1:
        extra = 0  # the surge replica of a move or a swap; it retires one where there are too many once READY

    def surplus(r: ReplicaView) -> bool:  # its market has more than its share (counted again after each drain)
        return spot_count > spot_wanted if r.spot else stand_ins > 0 or not spot_wanted

    for _ in range(max(0, extra) if current else 0):
        # drop the least useful first: not ready, then of a market over its share, then newest
        r = min(current, key=lambda r: (states[r.id] == "READY", not surplus(r), -r.created_at))
        swapped = not deleting and spot_wanted and not r.spot and stand_ins > 0 and states[r.id] == "READY"
        drain(r, "deployment deleted" if deleting else "swapped for a spot replica" if swapped else "scaled down")
        current.remove(r)
        spot_count -= r.spot
        stand_ins -= not r.spot
    if canaries or d.canary_generation is not None:
        wanted = 0 if deleting or failed else d.canary_replicas
        if len(canaries) < wanted and not plan.canary_crashed:
            plan.new_canaries = [f"canary of generation {d.canary_generation}"] * (wanted - len(canaries))
        for r in sorted(canaries, key=lambda r: (states[r.id] == "READY", -r.created_at))[:max(0, len(canaries) - wanted)]:
            drain(r, "deployment deleted" if deleting else "fewer canaries")
        canaries = [r for r in canaries if states[r.id] not in ("DRAINING", "TERMINATED")]
    plan.place = [r.id for r in current + canaries if states[r.id] == "PENDING"]
    ready_now = sum(states[r.id] == "READY" for r in current)
    if outdated and (ready_now >= desired or deleting):
        for r in outdated:  # rolling update: the new version is serving, retire the old
            drain(r, f"replaced by generation {d.generation}")

    if deleting:
        plan.delete = all(states[r.id] not in LIVE_REPLICA_STATES for r in replicas)
        plan.new_replicas, plan.new_canaries, plan.place, plan.new_spot = [], [], [], 0
        return plan
    if failed:
        plan.new_replicas, plan.new_canaries, plan.place, plan.new_spot = [], [], [], 0
        return plan
    ready_all = ready_now + sum(states[r.id] == "READY" for r in outdated)
    canary_note = ""
    if d.canary_generation is not None:
        canary_note = (f"; canary generation {d.canary_generation}: "
                       f"{sum(states[r.id] == 'READY' for r in canaries)}/{d.canary_replicas} ready")
    if desired == 0 and d.wakes:
        status = ("IDLE", "scaled to zero; the first request wakes it")
    elif ready_now >= desired:
        status = ("READY", f"{ready_now}/{desired} replicas ready")
    elif ready_all > 0:
        status = ("DEGRADED", f"{ready_all}/{desired} replicas ready")
    else:
        pending = [r.reason for r in current if states[r.id] == "PENDING" and r.reason]
        status = ("DEPLOYING", pending[0] if pending else f"0/{desired} replicas ready")
    status = (status[0], status[1] + canary_note)
    if status != (d.status, d.status_reason):  # nothing to write when nothing changed
        plan.status, plan.status_reason = status
    return plan


def _per_cloud(replicas: list[ReplicaView], states: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in replicas:
        if r.cloud:
            counts[r.cloud] = counts.get(r.cloud, 0) + 1
    return counts


def _surge_cloud(target: dict[str, int], counts: dict[str, int]) -> str | None:
    return next((c for c in sorted(target) if counts.get(c, 0) < target[c]), None)


# -- one job --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobView:
    name: str
    status: str  # PENDING | RUNNING (the planner only sees jobs that have not ended)
    restarts: int
    max_restarts: int
    next_start_at: float
    cancel_requested: bool = False


@dataclass(frozen=True)
class AttemptView:
    id: str
    number: int
    state: str  # STARTING | RUNNING | CANCELLING | ... (ended ones are history)
    cloud: str
    has_handle: bool
    cancelling_since: float | None = None


@dataclass
class JobPlan:
    attempt_state: str | None = None  # the current attempt's new state
    attempt_reason: str = ""
    exit_code: int | None = None
    stop: Stop = None
    status: str | None = None
    reason: str = ""
    restarts: int | None = None
    next_start_at: float | None = None
    start: bool = False  # start a new attempt
    succeeded: bool = False  # register the result (fine-tunes) while writing back


def plan_job(job: JobView, attempt: AttemptView | None, obs: Observation | None, now: float) -> JobPlan:
    """The next step of one job: watch its attempt, classify how it ended, start the next one."""
    plan = JobPlan()
    live = attempt is not None and attempt.state in LIVE_ATTEMPT_STATES
    if job.cancel_requested and attempt is not None and live:
        # the attempt drains (a job may checkpoint on SIGTERM) and holds its capacity until it is gone
        if not attempt.has_handle:
            plan.attempt_state, plan.attempt_reason, plan.stop = "CANCELLED", "cancelled by user", "kill"
        elif obs is not None and not obs.alive:
            plan.attempt_state, plan.attempt_reason, plan.exit_code = "CANCELLED", "cancelled by user", obs.exit_code
        elif attempt.state != "CANCELLING":
            plan.attempt_state, plan.attempt_reason, plan.stop = "CANCELLING", "cancelled by user: draining", "drain"
            plan.status, plan.reason = "CANCELLING", "cancelled by user: waiting for the attempt to stop"
            return plan
        else:
            if attempt.cancelling_since is not None and now - attempt.cancelling_since > DRAIN_TIMEOUT_S:
                plan.stop = "kill"
            return plan
    if job.cancel_requested:
        plan.status, plan.reason = "CANCELLED", "cancelled by user"
        return plan
    if live and attempt is not None:
        if not attempt.has_handle:
            plan.attempt_state, plan.stop = "PREEMPTED", "kill"
            plan.attempt_reason = "its start was interrupted (the server stopped mid-start); cleaned up"
            plan.status, plan.reason = "PENDING", f"attempt {attempt.number} was interrupted: starting it again"
            return plan
        if obs is None or obs.alive:
            return plan
        plan.exit_code = obs.exit_code
        if obs.lost or obs.exit_code is None:
            cause = obs.note or f"cloud {attempt.cloud} failed"
            plan.attempt_state, plan.attempt_reason = "PREEMPTED", cause
            plan.status = "PENDING"
            plan.reason = f"attempt {attempt.number} lost ({cause}): resuming from the latest checkpoint on another cloud"
            return plan
        if obs.exit_code == FETCH_FAILED:  # the server or a store was out of reach: not the job's fault
            plan.attempt_state = "PREEMPTED"
            plan.attempt_reason = f"could not fetch its checkpoint or data: {obs.last_line}".strip().rstrip(":")
            plan.status, plan.next_start_at = "PENDING", now + FETCH_RETRY_S
            plan.reason = f"attempt {attempt.number} could not fetch its checkpoint or data: trying again"
            return plan
        if obs.exit_code == 0:
            plan.attempt_state, plan.attempt_reason, plan.succeeded = "SUCCEEDED", "exit 0", True
            plan.status, plan.reason = "SUCCEEDED", f"attempt {attempt.number} on {attempt.cloud} finished"
            return plan
        note = f" ({obs.note})" if obs.note else ""
        plan.attempt_state = "FAILED"
        plan.attempt_reason = f"exit {obs.exit_code}{note}: {obs.last_line}".strip().rstrip(":")
        plan.restarts = job.restarts + 1
        if plan.restarts > job.max_restarts:
            plan.status = "FAILED"
            plan.reason = f"own error, not retried again ({job.max_restarts} restarts used): {plan.attempt_reason}"
        else:
            plan.status, plan.next_start_at = "PENDING", now + backoff_s(plan.restarts)
            plan.reason = f"own error, restart {plan.restarts} of {job.max_restarts}: {plan.attempt_reason}"
        return plan
    if job.status == "PENDING" and now >= job.next_start_at:
        plan.start = True
    return plan
