"""The deployment controller: one pass per deployment, in four steps.

1. claim: take the deployment's lease (one UPDATE claims every free deployment at once);
2. snapshot: read it and its live replicas, then observe them all concurrently (no session open);
3. plan: the pure planner (`_planner.plan_deployment`) turns snapshot and observations into actions;
4. act and write back: kill what the plan kills, write the new states and the *intent* of each
   start (the row PROVISIONING, its capacity held in the scheduler's ledger), then drain what it
   drains and start on the backends with no session open, then write the handles back; each write
   is guarded by the lease and gives up if the API changed the desired state since the snapshot.

A crash after the intent and before the handle leaves a row with no handle: the next pass stops
whatever the backend may have started under that id and lets the planner replace it. An error in
one deployment's pass stays in that deployment.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from ..backends import Backend, Handle, NoSpotCapacity, ProvisionError, Workload
from ..errors import FermionError
from ..gateway import Endpoint, Route, RoutingTable, VersionTraffic
from ..security import SecretBox, env_purpose
from ..store import TERMINAL_STATES, DeploymentRow, EventRow, ModelVersionRow, PhotonRow, ReplicaRow, Store, new_id
from ._loop import ReconcileLoop
from ._observe import Observer
from ._autoscale import AutoscalePolicy, Load, ScalerState, decide
from ._canary import CanaryPolicy, VersionStats, judge, promote, roll_back
from ._planner import DeploymentPlan, DeploymentView, Observation, ReplicaView, plan_deployment
from ._scheduler import Choice, Need, Scheduler, max_per_cloud

if TYPE_CHECKING:
    from ..placement import Objective

log = logging.getLogger("fermion.controller")
LEASE_S = 30.0
LEDGER_RESYNC_S = 5.0  # how often the capacity ledger is read again from the store
FAST_INTERVAL_S = 0.05  # the pace of passes while a replica starts: its readiness is seen sooner
# a drained replica leaves the routes at once, and is told to stop this much later: a request a
# gateway sent it just before then lands, and no new one races its closing listener
DRAIN_GRACE_S = 1.0
PHASES = ("schedule", "provision", "init", "ready")  # of a replica's cold start
ARCHIVE_RETRY_S = 10.0  # a photon archive no reachable store held is looked for again after this

EnvOpener = Callable[[Session, dict[str, str], str, str], dict[str, str]]  # (session, env, purpose, project)
LoadSignal = Callable[[str], tuple[int, int, float]]  # deployment -> (in flight, held, last request's wall time)


def plain_env(s: Session, env: dict[str, str], purpose: str, project: str) -> dict[str, str]:
    return dict(env)


@dataclass(frozen=True)
class _Version:
    """What replicas of one generation run: the stable spec of a deployment, or its canary's."""

    generation: int
    photon_sha256: str
    resources: dict[str, Any]
    env: dict[str, str]  # sealed, as stored

    @classmethod
    def stable(cls, d: DeploymentRow) -> _Version:
        return cls(d.generation, d.photon_sha256, dict(d.resources), dict(d.env))

    @classmethod
    def canary(cls, d: DeploymentRow) -> _Version | None:
        c = d.canary
        return None if not c else cls(int(c["generation"]), c["photon_sha256"], dict(c["resources"]), dict(c["env"]))


@dataclass(frozen=True)
class _Pending:
    """A replica to place: a PENDING row (its state), or one to create (state "")."""

    id: str
    secret: str | None
    state: str
    reason: str
    must_spot: bool = False  # a swap for an on-demand stand-in: on spot or not at all


class _Market:
    """The spot policy of one deployment during one pass: how many of its replicas run on spot,
    and where, so that a single reclaim takes at most ``max_reclaim_share`` of them."""

    def __init__(self, d: DeploymentRow, on_spot: dict[str, int]) -> None:
        policy = d.spot or {}
        self.fallback = str(policy.get("fallback", "on_demand"))
        self.wanted = math.floor(float(policy.get("share", 0.0)) * d.replicas + 1e-9)
        self.per_cloud = max(1, math.floor(float(policy.get("max_reclaim_share", 0.5)) * d.replicas + 1e-9))
        self.on_spot = dict(on_spot)

    def wants_spot(self) -> bool:
        return sum(self.on_spot.values()) < self.wanted

    def room(self, cloud: str) -> int:
        return self.per_cloud - self.on_spot.get(cloud, 0)

    def placed(self, cloud: str) -> None:
        self.on_spot[cloud] = self.on_spot.get(cloud, 0) + 1


@dataclass
class _Start:
    """A start decided in write-back 1 and carried out between the writes."""

    replica_id: str
    cloud: str
    workload: Workload
    why: str
    must_spot: bool = False


class DeploymentController(ReconcileLoop):
    def __init__(self, store: Store, scheduler: Scheduler, table: RoutingTable, interval_s: float = 0.25,
                 *, open_env: EnvOpener = plain_env, owner: str | None = None,
                 model_env: Callable[[Session, str, str, str], dict[str, str]] | None = None,
                 fetch_archive: Callable[[str], Path | None] | None = None,
                 load: LoadSignal | None = None, registry: CollectorRegistry | None = None,
                 traffic: VersionTraffic | None = None) -> None:
        super().__init__()
        self.traffic = traffic  # the gateway's answers per version: a canary's judge reads them
        self._canary_since: dict[str, tuple[int, float]] = {}  # deployment -> (canary generation, first READY)
        self._reoptimized: dict[str, float] = {}  # deployment -> when its placement was last re-optimized
        self.load = load  # the gateway's view of each deployment's load: the autoscaler's signal
        self._scalers: dict[str, ScalerState] = {}
        self._drains: list[tuple[float, str | None, Handle]] = []  # (due, cloud, handle) of stops to send
        self._phases: dict[str, dict[str, float]] = {}  # replica -> when each step of its start happened
        self._fast = False
        self.metrics = ControllerMetrics(registry or CollectorRegistry())
        self.fetch_archive = fetch_archive  # a photon's archive from the stores, onto this server's disk
        self._fetch_lock = threading.Lock()
        self._fetching: set[str] = set()
        self._fetch_after: dict[str, float] = {}  # a failed fetch is tried again after ARCHIVE_RETRY_S
        # (session, model ref, project, replica id) -> how that replica fetches the model from the stores
        self.model_env = model_env
        self.store = store
        self.scheduler = scheduler
        self.table = table
        self.interval_s = interval_s
        self.open_env = open_env  # the stored (sealed) env -> what the workload gets, secrets resolved
        self.owner = owner or f"ctl-{uuid.uuid4().hex[:12]}"
        self.observer = Observer()
        self._archives: dict[str, Path] = {}

    # -- one pass over every deployment ----------------------------------------------------
    def next_interval(self) -> float:
        return FAST_INTERVAL_S if self._fast else self.interval_s

    def tick(self) -> None:
        with self._lock:
            self._send_drains()
            self.scheduler.refresh()
            self.scheduler.rebuild_every(LEDGER_RESYNC_S)
            claimed = set(self._claim_all())
            deployments, replicas = self._snapshot(ReplicaRow.state.not_in(TERMINAL_STATES))
            # faster while a replica starts (its readiness is seen sooner); not for one that waits for room
            self._fast = any(r.state in ("PROVISIONING", "STARTING") for n in claimed
                             for r in replicas.get(n, [])) or bool(self._drains)
            backends = self.scheduler.backends
            observations = self.observer.observe_all(
                [(r.id, backends.get(r.cloud or ""), r.handle) for n in claimed for r in replicas.get(n, []) if r.handle],
                probe=True)
            healthy = self.scheduler.healthy_clouds()
            for name, d in deployments.items():
                if name not in claimed:  # another controller reconciles it; this gateway still routes to it
                    self._publish(d, replicas[name], DeploymentPlan())
                    continue
                try:
                    if d.canary:
                        self._judge_canary(d, replicas[name])
                    elif name in self._canary_since:  # ended by hand: forget its answers
                        self._canary_since.pop(name)
                        if self.traffic is not None:
                            self.traffic.forget(name)
                    if d.autoscale:
                        self._autoscale(d)
                    if d.placement and self._reoptimize(d):
                        continue  # a move begins: the next pass carries it out
                    self._pass(d, replicas[name], observations, healthy)
                except Exception:  # noqa: BLE001 - a bug in one deployment stays in that deployment
                    log.exception("reconciling deployment %s failed", name)
            for memory in (self._scalers, self._reoptimized, self._canary_since):
                for gone in set(memory) - set(deployments):
                    memory.pop(gone)
            self._unpublish_all_but(deployments)

    # -- autoscaling ----------------------------------------------------------------------
    def _autoscale(self, d: DeploymentRow) -> None:
        """Follow the load the gateway sees: write the new replica count (guarded by the lease),
        with an event that carries the numbers that decided it."""
        if d.status in ("DELETING", "FAILED"):
            return
        now = time.time()
        in_flight, queued, last = self.load(d.name) if self.load is not None else (0, 0, 0.0)
        state = self._scalers.setdefault(d.name, ScalerState())
        # idle since the last request, or since this controller first saw the deployment (a restart,
        # or a new deployment, is not idle time)
        idle_s = now - max(last, state.born)
        policy = AutoscalePolicy.of(d.autoscale or {})
        if d.canary and policy.min == 0:  # never to zero during a canary: the canary would take all the traffic
            policy = AutoscalePolicy.of({**(d.autoscale or {}), "min": 1})
        decision = decide(policy, d.replicas, Load(in_flight, queued, idle_s), state, now)
        self.metrics.load.labels(d.name).set(decision.smoothed)
        self.metrics.desired.labels(d.name).set(decision.desired)
        if decision.replicas == d.replicas:
            return
        with self.store.session() as s:
            written = s.execute(update(DeploymentRow).where(
                DeploymentRow.name == d.name, DeploymentRow.lease_owner == self.owner,
                DeploymentRow.replicas == d.replicas).values(replicas=decision.replicas)).rowcount
            if written:
                self.store.record(s, "deployment", d.name, str(d.replicas), str(decision.replicas),
                                  f"autoscale {decision.reason}")
        if written:
            log.info("deployment %s: autoscale %s", d.name, decision.reason)
            self.metrics.decisions.labels(d.name, "up" if decision.replicas > d.replicas else "down").inc()
            d.replicas = decision.replicas

    # -- re-optimization over time --------------------------------------------------------
    def _reoptimize(self, d: DeploymentRow) -> bool:
        """Every ``reoptimize_every_s``, the optimizer's placement on today's prices, measured
        latency and failure rates; a move toward it (one replica at a time) when it saves at least
        ``min_saving`` of the cost per hour. True when a move began."""
        policy, now = d.placement or {}, time.monotonic()
        last = self._reoptimized.setdefault(d.name, now)
        if now - last < float(policy["reoptimize_every_s"]):
            return False
        self._reoptimized[d.name] = now
        if d.status != "READY" or d.target is not None or d.canary or d.spot:
            return False  # busy, or its replicas' markets are the spot policy's to place
        out = self.plan_rebalance(d.name)
        current = {c: n for c, n in out["current"].items() if n}
        target, saving = out["target"], out["saving"]
        if not target or target == current or saving < float(policy.get("min_saving", 0.1)):
            return False
        self.start_rebalance(d.name, target, f"re-optimized: {current} → {target} saves {saving:.0%} "
                                             f"(${out['current_cost_per_hour']:.4f}/h → "
                                             f"${out['target_cost_per_hour']:.4f}/h)")
        return True

    # -- canaries -------------------------------------------------------------------------
    def _judge_canary(self, d: DeploymentRow, rows: list[ReplicaRow]) -> None:
        """Compare the canary with the stable version over the gateway's recent answers; promote
        or roll back when the verdict says (``d`` then holds the new desired state)."""
        canary = d.canary or {}
        policy, generation = CanaryPolicy.of(canary), int(canary["generation"])
        if not policy.auto or self.traffic is None or d.status in ("DELETING", "FAILED"):
            return
        seen = self._canary_since.get(d.name)
        if seen is None or seen[0] != generation:
            if not any(r.generation == generation and r.state == "READY" for r in rows):
                return  # it is judged from its first READY replica on
            seen = self._canary_since[d.name] = (generation, time.time())
        running_s = time.time() - seen[1]
        answers = self.traffic.window(d.name, min(running_s, policy.window_s))
        stats = VersionStats.of(answers.get(generation, []))
        stable = VersionStats.of([a for gen, got in answers.items() if gen != generation for a in got])
        verdict, reason = judge(policy, stats, stable, running_s)
        if not verdict:
            return
        with self.store.session() as s:
            if self.store.renew(s, DeploymentRow, d.name, self.owner, LEASE_S) is None:
                return
            row = s.get(DeploymentRow, d.name)
            if row is None or not row.canary or int(row.canary["generation"]) != generation:
                return  # the API changed it meanwhile
            (promote if verdict == "promote" else roll_back)(self.store, s, row, reason)
            for column in _DESIRED_BY_VERDICT:  # this pass goes on from the new desired state: drains at once
                setattr(d, column, getattr(row, column))
        log.info("deployment %s: canary generation %d %s: %s", d.name, generation, verdict, reason)
        self._canary_since.pop(d.name, None)
        self.traffic.forget(d.name)

    # -- drains ---------------------------------------------------------------------------
    def _drain_later(self, cloud: str | None, handle: Handle) -> None:
        self._drains.append((time.monotonic() + DRAIN_GRACE_S, cloud, handle))

    def _send_drains(self) -> None:
        now = time.monotonic()
        due = [d for d in self._drains if d[0] <= now]
        self._drains = [d for d in self._drains if d[0] > now]
        for _, cloud, handle in due:
            try:
                self._stop_workload(cloud, handle, force=False)
            except Exception:  # noqa: BLE001 - the planner kills it once its drain runs late
                log.exception("draining %s failed", handle.get("id"))

    def start(self) -> None:
        if self.observer.closed:  # stopped before: leadership lost, then taken back
            self.observer = Observer()
        super().start()

    def stop(self) -> None:
        """Stop the loop and free this controller's leases (a restarted server claims them at once)."""
        super().stop()
        self._drains = [(0.0, cloud, handle) for _, cloud, handle in self._drains]
        self._send_drains()  # the drains this controller owes: told now, not lost with it
        self.observer.close()
        self.store.release_all(DeploymentRow, self.owner)

    def publish_from_store(self) -> None:
        """Route as the store says, and count capacity as it says (for `cloud list`), acting on
        nothing: what a server that does not lead does."""
        self.scheduler.rebuild_every(LEDGER_RESYNC_S)
        deployments, replicas = self._snapshot(ReplicaRow.state == "READY")
        for name, d in deployments.items():
            self._publish(d, replicas[name], DeploymentPlan())
        self._unpublish_all_but(deployments)

    def _snapshot(self, replica_filter: Any) -> tuple[dict[str, DeploymentRow], dict[str, list[ReplicaRow]]]:
        """Every deployment, and its replicas that match ``replica_filter``, oldest first."""
        with self.store.session() as s:
            deployments = {d.name: d for d in s.scalars(select(DeploymentRow))}
            replicas: dict[str, list[ReplicaRow]] = {n: [] for n in deployments}
            for r in s.scalars(select(ReplicaRow).where(replica_filter).order_by(ReplicaRow.created_at)):
                replicas.setdefault(r.deployment, []).append(r)
        return deployments, replicas

    def _unpublish_all_but(self, deployments: dict[str, DeploymentRow]) -> None:
        """Drop the routes of deployments that no longer exist."""
        for gone in {r.deployment for r in self.table.routes()} - set(deployments):
            self.table.set(gone, None)

    def _claim_all(self) -> list[str]:
        """Claim every deployment whose lease is free or ours: one write for the whole pass."""
        self.store.claim(DeploymentRow, self.owner, LEASE_S)
        with self.store.session() as s:
            return list(s.scalars(select(DeploymentRow.name).where(DeploymentRow.lease_owner == self.owner)))

    def _pass(self, d: DeploymentRow, rows: list[ReplicaRow], observations: dict[str, Observation],
              healthy: frozenset[str]) -> None:
        now = time.time()
        view = DeploymentView(name=d.name, generation=d.generation, replicas=d.replicas, status=d.status,
                              crash_count=d.crash_count, next_start_at=d.next_start_at, target=d.target,
                              status_reason=d.status_reason,
                              wakes=bool(d.autoscale) and int((d.autoscale or {}).get("min", 1)) == 0,
                              canary_generation=int(d.canary["generation"]) if d.canary else None,
                              canary_replicas=int(d.canary["replicas"]) if d.canary else 0,
                              spot_share=float(d.spot["share"]) if d.spot else 0.0,
                              spot_available=bool(d.spot) and self._spot_room(d, rows))
        replicas = [ReplicaView(id=r.id, generation=r.generation, state=r.state, cloud=r.cloud, reason=r.reason,
                                has_handle=r.handle is not None, failed_probes=r.failed_probes,
                                state_since=r.state_since, created_at=r.created_at,
                                memory_gb=float((r.resources or {}).get("memory_gb", 0)) or None, url=r.url,
                                spot=r.spot)
                    for r in rows]
        plan = plan_deployment(view, replicas, observations, healthy, now)
        handles = {r.id: (r.cloud, r.handle) for r in rows}

        def act(stop: str) -> None:
            for change in plan.changes:
                if change.stop == stop:
                    cloud, handle = handles[change.id]
                    if stop == "drain":
                        self._drain_later(cloud, handle or {"id": change.id})
                    else:
                        self._stop_workload(cloud, handle or {"id": change.id}, force=True)

        # kills before the write (a row written terminal must never leave a process running), drains
        # after it (a replica draining unrecorded would look like a crash when it exits)
        act("kill")
        starts = self._write_plan(d, plan, rows)
        if starts is None:
            return  # the lease is gone, or the API changed what is wanted: the next pass plans anew
        act("drain")
        results = [(st, self._start(st)) for st in starts]
        if results:
            self._write_starts(d.name, results)
        self._publish(d, rows, plan)

    def _stop_workload(self, cloud: str | None, handle: Handle, *, force: bool) -> None:
        backend = self.scheduler.backends.get(cloud or "")
        if backend is not None:
            backend.stop(handle, force=force)

    def _start(self, st: _Start) -> Handle | ProvisionError:
        handle = start_or_clean_up(self.scheduler.backends[st.cloud], st.workload)
        if st.replica_id in self._phases:
            self._phases[st.replica_id]["started"] = time.time()
        return handle

    # -- write back ---------------------------------------------------------------------------
    def _write_plan(self, d: DeploymentRow, plan: DeploymentPlan, rows: list[ReplicaRow]) -> list[_Start] | None:
        """Write the plan's consequences and the intent of each start; None if the lease is lost
        or the desired state moved since the snapshot. Core statements, a few per pass: the
        snapshot is the truth for what this controller alone writes (under its lease)."""
        if not plan.touches():
            return []
        events, ended = Events(), []
        starts = self._write_plan_in(d, plan, rows, events, ended)
        for rid in ended:  # once the commit holds: a failed one leaves them held, as their rows say
            self.scheduler.release(rid)
        return starts

    def _write_plan_in(self, d: DeploymentRow, plan: DeploymentPlan, rows: list[ReplicaRow], events: Events,
                       ended: list[str]) -> list[_Start] | None:
        name = d.name
        with self.scheduler.tentative(), self.store.session() as s:
            if self._hold_and_read(s, name) != _desired(d):
                return None  # the lease is gone, or the API changed what is wanted: the next pass plans anew
            self._write_changes(s, d, plan, {r.id: r for r in rows}, events, ended)
            if plan.canary_crashed:  # a canary whose replica crashes is rolled back at once, auto or not
                row = s.get(DeploymentRow, name)
                if row is not None and row.canary:
                    roll_back(self.store, s, row, f"its replica crashed: {self._redact(s, d, plan.canary_crashed)}")
            values: dict[str, Any] = {}
            if plan.crash_count is not None:
                values.update(crash_count=plan.crash_count, next_start_at=plan.next_start_at or d.next_start_at)
            if plan.last_error is not None:
                values["last_error"] = self._redact(s, d, plan.last_error)
            if plan.clear_target:
                events.add("deployment", name, "REBALANCING", d.status, plan.clear_target)
                values["target"] = None
            if plan.delete:
                events.add("deployment", name, d.status, "DELETED", "all replicas stopped")
                events.write(s)
                # explicit order: the replica rows reference the deployment row
                s.execute(delete(ReplicaRow).where(ReplicaRow.deployment == name))
                s.execute(delete(DeploymentRow).where(DeploymentRow.name == name))
                return []
            if plan.status is not None:
                reason = self._redact(s, d, plan.status_reason) if plan.status == "FAILED" else plan.status_reason
                if plan.status != d.status:  # a new reason alone (e.g. "1/2 ready") is not an event
                    events.add("deployment", name, d.status, plan.status, reason)
                values.update(status=plan.status, status_reason=reason, updated_at=time.time())
            if values:
                s.execute(update(DeploymentRow).where(DeploymentRow.name == name).values(**values))
            after = {c.id: c.state for c in plan.changes if c.state is not None}
            serving: dict[str, int] = {}  # this generation's replicas per cloud, after the plan
            on_spot: dict[str, int] = {}  # ... of them on spot
            for r in rows:
                if r.cloud and r.generation == d.generation and \
                        after.get(r.id, r.state) not in (*TERMINAL_STATES, "DRAINING", "PENDING"):
                    serving[r.cloud] = serving.get(r.cloud, 0) + 1
                    on_spot[r.cloud] = on_spot.get(r.cloud, 0) + r.spot
            to_place = set(plan.place)
            starts = []
            for version, new in ((_Version.stable(d), plan.new_replicas), (_Version.canary(d), plan.new_canaries)):
                if version is None:
                    continue
                pending = [_Pending(r.id, r.auth_secret, r.state, r.reason, r.spot) for r in rows
                           if r.id in to_place and r.generation == version.generation]
                first_swap = len(new) - (plan.new_spot if version.generation == d.generation else 0)  # swaps come last
                pending += [_Pending(new_id("r"), None, "", reason, i >= first_swap) for i, reason in enumerate(new)]
                market = _Market(d, on_spot) if d.spot and version.generation == d.generation else None
                starts += self._decide_starts(s, d, version, pending, plan.only_cloud, serving, events, market)
            events.write(s)
            return starts

    def _hold_and_read(self, s: Session, name: str) -> tuple | None:
        """Renew the lease and read what the API may have changed since the snapshot, in one
        statement (it takes the store's write lock); None if the lease is not ours."""
        c = DeploymentRow
        row = self.store.renew(s, DeploymentRow, name, self.owner, LEASE_S, c.status, c.generation, c.replicas,
                               c.target, c.crash_count, c.next_start_at, c.clouds, c.canary)
        return None if row is None else (*row[1:7], tuple(row[7] or ()), _canary_key(row[8]))

    def _redact(self, s: Session, d: DeploymentRow, text: str) -> str:
        """``text`` with the values of the deployment's env masked, and its canary's (a reason may
        quote either version's log)."""
        for env in (d.env, (d.canary or {}).get("env")):
            if env and text:
                text = self.redact_env(s, env, env_purpose("deployment", d.name), d.project, text)
        return text

    def _write_changes(self, s: Session, d: DeploymentRow, plan: DeploymentPlan, snapshot: dict[str, ReplicaRow],
                       events: Events, ended: list[str]) -> None:
        """The replica transitions of the plan, one UPDATE per shape of change."""
        now, updates = time.time(), []
        for change in plan.changes:
            r = snapshot.get(change.id)
            if r is None:
                continue
            values: dict[str, Any] = {}
            if change.url and r.url != change.url:
                values["url"] = change.url
            if change.failed_probes is not None and change.failed_probes != r.failed_probes:
                values["failed_probes"] = change.failed_probes
            if change.state is not None:
                reason = change.reason
                if change.state == "FAILED" and ":" in reason:  # may quote the workload's log: mask its secrets
                    reason = self._redact(s, d, reason)
                if change.state in ("STARTING", "READY") and r.state in ("PROVISIONING", "STARTING"):
                    reason += self._phase_done(r, "listening" if change.state == "STARTING" else "ready", now)
                if (change.state, reason) != (r.state, r.reason):
                    events.add("replica", r.id, r.state, change.state, reason)
                    values.update(state=change.state, reason=reason, state_since=now)
                if change.state in TERMINAL_STATES:
                    ended.append(r.id)
                    self._phases.pop(r.id, None)
            if values:
                updates.append({"id": r.id, **values})
        _update_by_id(s, updates)

    def _decide_starts(self, s: Session, d: DeploymentRow, version: _Version, pending: list[_Pending],
                       only: str | None, per_cloud: dict[str, int], events: Events,
                       market: _Market | None = None) -> list[_Start]:
        """Choose a cloud (and, under a spot policy, a market) for each PENDING replica of
        ``version`` and write the intent: the row PROVISIONING with its cloud and no handle."""
        if not pending:
            return []
        now = time.time()
        created = {r.id: r.created_at for r in s.scalars(select(ReplicaRow).where(
            ReplicaRow.id.in_([p.id for p in pending if p.state])))} if any(p.state for p in pending) else {}
        archive = self._archive(s, version.photon_sha256)
        try:
            env = self.open_env(s, version.env, env_purpose("deployment", d.name), d.project)
        except FermionError as exc:
            env, why_not_at_all = {}, f"cannot start: {exc}"
        else:
            why_not_at_all = ""
        if archive is None and not why_not_at_all:
            why_not_at_all = "waiting for the photon's archive: this server's disk lacks it, and it is being fetched " \
                             "from the clouds' stores"
        need = Need.of(version.resources)
        allowed = self._allowed(d)
        mounts = self.artifact_mounts(s, env.get("FERMION_MODEL_DIR"), d.project) if not why_not_at_all else []
        model = env.get("FERMION_MODEL") if not why_not_at_all else None
        if model and self.model_env is not None:
            try:  # checked once per pass: a model deleted since stops every start with the reason
                self.model_env(s, model, d.project, "")
            except FermionError as exc:
                why_not_at_all = f"cannot start: {exc}"
        starts, inserts, updates = [], [], []
        for p in pending:
            rid, secret, state, created_for, must_spot = p.id, p.secret, p.state, p.reason, p.must_spot
            if state == "":
                events.add("replica", rid, "", "PENDING", created_for)
            spot, note = False, ""
            if why_not_at_all:
                choice = None
            elif market is not None and (must_spot or market.wants_spot()):
                choice, spot, note = self._choose_market(rid, need, allowed, market, must_spot)
            else:
                choice = self.scheduler.choose(
                    rid, need, allowed, caps=self.scheduler.spread_caps(allowed, d.replicas, per_cloud), only=only)
            if choice is not None and choice.cloud is None and spot:  # waits for spot capacity
                row = {"id": rid, "state": "PENDING", "reason": note, "state_since": now, "cloud": None, "spot": spot}
            elif choice is None or choice.cloud is None:
                reason = why_not_at_all or (f"no cloud can run it ({need.describe()}): "
                                            + "; ".join((choice.why_not if choice else None) or ["no cloud allowed"]))
                # room only shrinks within a pass: once one replica fits nowhere, none after it does,
                # so a thousand PENDING replicas cost one choice, not a thousand
                why_not_at_all = reason
                row = {"id": rid, "state": "PENDING", "reason": reason, "state_since": now, "cloud": None,
                       "spot": must_spot}
            else:
                per_cloud[choice.cloud] = per_cloud.get(choice.cloud, 0) + 1
                self._phases[rid] = {"created": created.get(rid, now), "placed": now}
                secret = secret or secrets.token_urlsafe(32)
                why = "; ".join(x for x in (note, choice.why) if x)
                reason = f"starting on cloud {choice.cloud}" + (" on spot" if spot else "") + (f" ({why})" if why else "")
                events.add("replica", rid, state or "PENDING", "PROVISIONING", reason)
                row = {"id": rid, "state": "PROVISIONING", "reason": reason, "state_since": now,
                       "cloud": choice.cloud, "auth_secret": secret, "handle": None, "url": None, "spot": spot}
                fetch = self.model_env(s, model, d.project, rid) if model and self.model_env is not None else {}
                starts.append(_Start(rid, choice.cloud, Workload(
                    id=rid, kind="replica", env={**env, **fetch}, cpus=need.cpus, memory_gb=need.memory_gb,
                    archive=archive, secret=secret, read_only=mounts, spot=spot,
                    egress=need.egress), why, must_spot))
            if state == "":
                inserts.append({"deployment": d.name, "generation": version.generation,
                                "photon_sha256": version.photon_sha256, "resources": dict(version.resources), "failed_probes": 0, "created_at": now,
                                "auth_secret": None, "handle": None, "url": None, **row})
            elif (row["state"], row["reason"]) != (state, created_for):
                if row["state"] == "PENDING":  # a new reason why it waits (a start records its own event)
                    events.add("replica", rid, state, "PENDING", row["reason"])
                updates.append(row)
        if inserts:
            s.execute(insert(ReplicaRow), inserts)
        _update_by_id(s, updates)
        return starts

    def _spot_room(self, d: DeploymentRow, rows: list[ReplicaRow]) -> bool:
        """Whether an allowed cloud could take one more of ``d``'s spot replicas now."""
        on_spot: dict[str, int] = {}
        for r in rows:
            if r.spot and r.cloud and r.generation == d.generation and r.state not in (*TERMINAL_STATES, "DRAINING"):
                on_spot[r.cloud] = on_spot.get(r.cloud, 0) + 1
        market = _Market(d, on_spot)
        return any(self.scheduler.spot_ok(n) and market.room(n) > 0 for n in self._allowed(d))

    def _allowed(self, d: DeploymentRow) -> list[str]:
        return [n for n in self.scheduler.backends if not d.clouds or n in d.clouds]

    def _choose_market(self, rid: str, need: Need, allowed: list[str], market: _Market,
                       must_spot: bool) -> tuple[Choice | None, bool, str]:
        """A spot cloud within the reclaim spread for a replica that should run on spot; else,
        under the on-demand fallback, an on-demand stand-in. (choice, on spot, note); a choice
        with no cloud and a note: it waits, PENDING, with that note."""
        spot_clouds = [n for n in allowed if self.scheduler.spot_ok(n) and market.room(n) > 0]
        choice = self.scheduler.choose(rid, need, spot_clouds, spot=True) if spot_clouds else None
        if choice is not None and choice.cloud is not None:
            market.placed(choice.cloud)
            return choice, True, ""
        lacking = [n for n in allowed if not self.scheduler.spot_ok(n)]
        why = (f"no spot capacity on {', '.join(lacking)}" if lacking else "no spot capacity") + \
              (f", and at most {market.per_cloud} on spot per cloud elsewhere" if len(lacking) < len(allowed) else "")
        if must_spot or market.fallback != "on_demand":
            return Choice(None), True, f"waiting for spot capacity: {why}"
        choice = self.scheduler.choose(rid, need, allowed)
        return choice, False, f"on-demand stand-in: {why}"

    def _archive(self, s: Session, sha256: str) -> Path | None:
        """A photon's archive on this server's disk (content-addressed: the answer for a digest never
        changes). Where the disk lacks it (lost, or another server's upload), None while it is fetched
        from the stores in the background: never inside a pass, which holds a transaction open."""
        known = self._archives.get(sha256)
        if known is not None and known.is_file():
            return known
        photon = s.get(PhotonRow, sha256)
        if photon is None:
            return None
        path = Path(photon.archive_path)
        if path.is_file() or self.fetch_archive is None:
            self._archives[sha256] = path
            return path
        self._fetch_archive_later(sha256)
        return None

    def _fetch_archive_later(self, sha256: str) -> None:
        with self._fetch_lock:
            if sha256 in self._fetching or time.monotonic() < self._fetch_after.get(sha256, 0.0):
                return
            self._fetching.add(sha256)

        def fetch() -> None:
            try:
                path = self.fetch_archive(sha256) if self.fetch_archive else None
            except Exception:  # noqa: BLE001 - said below, and tried again
                log.exception("fetching the archive of photon %s failed", sha256[:12])
                path = None
            with self._fetch_lock:
                self._fetching.discard(sha256)
                if path is not None:
                    self._archives[sha256] = path
                else:
                    self._fetch_after[sha256] = time.monotonic() + ARCHIVE_RETRY_S
                    log.warning("no reachable store holds a good archive of photon %s; trying again in %gs",
                                sha256[:12], ARCHIVE_RETRY_S)

        threading.Thread(target=fetch, name=f"fetch-photon-{sha256[:8]}", daemon=True).start()

    def _write_starts(self, name: str, results: list[tuple[_Start, Handle | ProvisionError]]) -> None:
        """Write back what the starts gave: handles (one statement for all), or back to PENDING."""
        orphans: list[tuple[str, Handle]] = []
        with self.store.session() as s:
            owned = self.store.renew(s, DeploymentRow, name, self.owner, LEASE_S) is not None
            started = [(st, h) for st, h in results if not isinstance(h, ProvisionError)]
            failed = [(st, h) for st, h in results if isinstance(h, ProvisionError)]
            if owned and started:
                s.execute(update(ReplicaRow), [
                    {"id": st.replica_id, "handle": h,
                     "reason": f"started on cloud {st.cloud}" + (f" ({st.why})" if st.why else "")}
                    for st, h in started])
                for cloud in {st.cloud for st, _ in started}:
                    self.scheduler.mark(s, cloud, healthy=True, reason="started a replica")
            elif started:  # nobody may record them: do not leave them running unrecorded
                orphans = [(st.cloud, h) for st, h in started]
                for st, _ in started:
                    self.scheduler.release(st.replica_id)
            for st, exc in failed:
                self.scheduler.release(st.replica_id)
                if not isinstance(exc, StartFailed | NoSpotCapacity):  # either way the cloud itself is fine
                    self.scheduler.mark(s, st.cloud, healthy=False, reason=exc.message)
                r = s.get(ReplicaRow, st.replica_id)
                if r is not None and owned:
                    r.cloud = None
                    r.spot = st.must_spot  # only a swap must go on spot; the rest may fall back next time
                    self._set_state(s, r, "PENDING", f"{st.cloud}: {exc.message}; trying another cloud")
        for cloud, handle in orphans:
            self._stop_workload(cloud, handle, force=True)

    def _phase_done(self, r: ReplicaRow, step: str, now: float) -> str:
        """Note when a starting replica reached ``step`` ("listening" or "ready"); once ready, the
        cold start by phase, as the end of its READY reason (and in the metrics)."""
        times = self._phases.get(r.id)
        if times is None or "started" not in times:
            return ""  # started before this controller (a restart): its phases are unknown
        times[step] = now
        if step != "ready":
            return ""
        del self._phases[r.id]
        listening = times.get("listening", now)
        spans = dict(zip(PHASES, (times["placed"] - times["created"], times["started"] - times["placed"],
                                  listening - times["started"], now - listening), strict=True))
        total = now - times["created"]
        for phase, seconds in spans.items():
            self.metrics.cold_start.labels(phase).observe(max(0.0, seconds))
        self.metrics.cold_start.labels("total").observe(total)
        return f" (cold start {total:.2f}s: " + ", ".join(f"{k} {max(0.0, v):.2f}s" for k, v in spans.items()) + ")"

    # -- state changes --------------------------------------------------------------------
    def _set_state(self, s: Session, r: ReplicaRow, state: str, reason: str = "") -> None:
        if r.state == state and r.reason == reason:
            return
        self.store.record(s, "replica", r.id, r.state, state, reason)
        r.state, r.reason, r.state_since = state, reason, time.time()

    # -- the routing table ----------------------------------------------------------------
    def _publish(self, d: DeploymentRow, rows: list[ReplicaRow], plan: DeploymentPlan) -> None:
        """This deployment's route: its READY replicas (after the plan) at the URLs their backends
        reported. Built from the pass's snapshot: no query."""
        if d.status == "DELETING" or plan.delete:
            self.table.set(d.name, None)
            return
        changes = {c.id: c for c in plan.changes}
        canary_generation = int(d.canary["generation"]) if d.canary else None
        endpoints = []
        for r in rows:
            change = changes.get(r.id)
            state = change.state if change is not None and change.state is not None else r.state
            url = (change.url if change is not None else None) or r.url
            if r.generation > d.generation and r.generation != canary_generation:
                continue  # a canary rolled back (or replaced): never again in the traffic, even while it drains
            if state == "READY" and url:
                endpoints.append(Endpoint(r.id, r.cloud or "", url, r.auth_secret, generation=r.generation))
        hold = None
        if d.autoscale:
            policy = AutoscalePolicy.of(d.autoscale)
            hold = (policy.queue_limit, policy.queue_timeout_s)
        canary = (int(d.canary["generation"]), int(d.canary["weight"])) if d.canary else None
        route = Route(deployment=d.name, public=d.public, idempotent=d.idempotent, token_hash=d.token_hash,
                      rate_limit=_bucket_size(d.rate_limit), endpoints=endpoints, hold=hold, canary=canary)
        old = self.table.get(d.name)
        if old is None or _route_key(old) != _route_key(route):
            self.table.set(d.name, route)

    # -- moving replicas to a better placement ---------------------------------------------
    def plan_rebalance(self, name: str, objective: Objective | None = None,
                       clouds: list[str] | None = None) -> dict[str, Any]:
        """The optimal placement of a deployment's replicas over the healthy clouds (its allowed
        ones, or ``clouds``), vs. now."""
        from ..placement import CloudState, Constraints, Objective, PlacementRequest, optimize

        with self.store.session() as s:
            d = s.get(DeploymentRow, name)
            if d is None:  # deleted since the caller looked
                from ..errors import NotFoundError

                raise NotFoundError(f"no deployment named {name!r}")
            current = s.scalars(select(ReplicaRow).where(
                ReplicaRow.deployment == name, ReplicaRow.generation == d.generation,
                ReplicaRow.state.not_in((*TERMINAL_STATES, "DRAINING")))).all()
            counts: dict[str, int] = {}
            for r in current:
                if r.cloud:
                    counts[r.cloud] = counts.get(r.cloud, 0) + 1
            need, target, moving = Need.of(d.resources), d.target, d.target is not None
        free = self.scheduler.free()
        latency, failing = self.scheduler.observed_latency(), self.scheduler.observed_failure_rate()
        allowed = [n for n in self.scheduler.backends if n in clouds] if clouds else self._allowed(d)
        offerings, states, prices = [], {}, {}
        for n in allowed:
            offering = self.scheduler.offering(n)
            prices[n] = offering.price
            offerings.append(offering)
            # this deployment's own replicas would move, so their room counts as free
            room_cpus = free[n]["cpus"] + counts.get(n, 0) * need.cpus
            room_mem = free[n]["memory_gb"] + counts.get(n, 0) * need.memory_gb
            states[n] = CloudState(healthy=self.scheduler.healthy(n),
                                   max_replicas=int(min(room_cpus / need.cpus, room_mem / need.memory_gb)),
                                   observed_latency_ms=latency.get(n), failure_rate=failing.get(n, 0.0))
        request = PlacementRequest(cpus=need.cpus, memory_gb=need.memory_gb, replicas=max(1, d.replicas),
                                   constraints=Constraints(max_per_cloud=max_per_cloud(
                                       [n for n in allowed if states[n].healthy] or allowed, d.replicas)),
                                   objective=objective or Objective())
        plan = optimize(request, offerings, states)
        current_cost = sum(prices.get(c, 0.0) * k for c, k in counts.items())
        return {
            "deployment": name, "current": counts, "current_cost_per_hour": round(current_cost, 6),
            "plan": plan.model_dump(), "target": plan.clouds() if plan.feasible else None,
            "target_cost_per_hour": plan.cost_per_hour if plan.feasible else None,
            "saving": round(1 - plan.cost_per_hour / current_cost, 6) if plan.feasible and current_cost > 0 else 0.0,
            "moving": moving and target is not None,
        }

    def start_rebalance(self, name: str, target: dict[str, int], reason: str) -> None:
        """Desired state: move toward ``target``; the passes carry it out one replica at a time."""
        with self.store.session() as s:
            d = s.get(DeploymentRow, name)
            if d is None:
                return
            d.target = dict(target)
            self.store.record(s, "deployment", name, d.status, "REBALANCING", reason)

    # -- cloud outages (injected) ---------------------------------------------------------
    def fail_cloud(self, name: str, reason: str) -> int:
        """Take the cloud down: starts are refused and its replicas die (their rows follow on the
        next pass, as for any real outage)."""
        self.scheduler.fail(name, reason)
        with self.store.session() as s:
            live = [(r.id, r.handle) for r in s.scalars(select(ReplicaRow).where(
                ReplicaRow.cloud == name, ReplicaRow.state.not_in(TERMINAL_STATES)))]
        for rid, handle in live:
            self._stop_workload(name, handle or {"id": rid}, force=True)
        return len(live)

    # -- helpers shared with the job controller and the API -------------------------------
    def redact_env(self, s: Session, stored_env: dict[str, str], purpose: str, project: str, text: str) -> str:
        """``text`` (a workload's log line) with its env values masked, before it becomes a reason
        or an event."""
        try:
            values = list(self.open_env(s, stored_env, purpose, project).values())
        except FermionError:  # a secret deleted since: nothing to show, so nothing from the log either
            return "(log line withheld: its secrets cannot be read to redact it)"
        return SecretBox.redact(text, values)

    def artifact_mounts(self, s: Session, path: str | None, project: str) -> list[Path]:
        """A model's folder to show a workload read-only: only inside a registered version of the
        workload's own project (any other path would let a spec mount what it likes)."""
        if not path:
            return []
        resolved = Path(path).resolve()
        versions = s.scalars(select(ModelVersionRow.artifact_uri).where(ModelVersionRow.project == project)).all()
        folders = [Path(uri).resolve() for uri in versions if not uri.startswith("store:")]  # not the stores' ones
        if resolved.is_dir() and any(resolved.is_relative_to(folder) for folder in folders):
            return [resolved]
        return []

    def logs(self, r: ReplicaRow, tail: int) -> str:
        backend = self.scheduler.backends.get(r.cloud or "")
        if backend is None or r.handle is None:
            return ""
        return backend.logs(r.handle, tail)


class ControllerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.load = Gauge("fermion_autoscale_load", "Requests in flight and held, smoothed: the autoscaler's signal.",
                          ["deployment"], registry=registry)
        self.desired = Gauge("fermion_autoscale_desired_replicas", "The replica count the load asks for now.",
                             ["deployment"], registry=registry)
        self.decisions = Counter("fermion_autoscale_decisions", "Replica counts changed by the autoscaler.",
                                 ["deployment", "direction"], registry=registry)
        self.cold_start = Histogram("fermion_replica_cold_start_seconds", "A replica's start, by phase "
                                    "(schedule, provision, init, ready; total).", ["phase"], registry=registry,
                                    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120))


class StartFailed(ProvisionError):
    """A start that failed by an error of this workload or of Fermion, not the cloud's refusal:
    the cloud stays healthy for everyone else."""


class Events:
    """The events of one write-back, inserted together."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, kind: str, object_id: str, old: str, new: str, reason: str = "") -> None:
        self.rows.append({"at": time.time(), "kind": kind, "object_id": object_id, "old": old, "new": new,
                          "reason": reason})

    def write(self, s: Session) -> None:
        if self.rows:
            s.execute(insert(EventRow), self.rows)
            self.rows = []


def _update_by_id(s: Session, updates: list[dict[str, Any]]) -> None:
    """Replica rows by id: one executemany per set of columns."""
    for keys in {frozenset(u) for u in updates}:
        s.execute(update(ReplicaRow), [u for u in updates if frozenset(u) == keys])


def start_or_clean_up(backend: Backend, workload: Workload) -> Handle | ProvisionError:
    """Start ``workload``, or say why not; a start that failed half-way is stopped by id, so that
    nothing the backend began is left running unrecorded."""
    try:
        return backend.start(workload)
    except Exception as exc:  # noqa: BLE001 - a backend bug is this start's failure, not the pass's
        if not isinstance(exc, ProvisionError):
            log.exception("starting %s on %s failed", workload.id, backend.name)
            exc = StartFailed(f"cloud {backend.name} could not start it: {exc}")
        try:
            backend.stop({"id": workload.id}, force=True)
        except Exception:  # noqa: BLE001 - the row goes back to PENDING; the id is never reused
            log.exception("cleaning up the failed start of %s on %s failed", workload.id, backend.name)
        return exc


def _desired(d: DeploymentRow) -> tuple:
    """What the API may change under a pass (the controller writes the rest, under its lease)."""
    return (d.status, d.generation, d.replicas, d.target, d.crash_count, d.next_start_at, tuple(d.clouds or ()),
            _canary_key(d.canary))


_DESIRED_BY_VERDICT = ("canary", "generation", "photon_sha256", "resources", "env", "status", "crash_count",
                       "next_start_at", "last_error", "updated_at")


def _canary_key(canary: dict[str, Any] | None) -> tuple | None:
    return None if not canary else (canary["generation"], canary.get("weight"), canary.get("replicas"))


def _route_key(route: Route) -> tuple:
    return (route.public, route.idempotent, route.token_hash, route.rate_limit, route.hold, route.canary,
            tuple((e.replica_id, e.url, e.secret, e.generation) for e in route.endpoints))


def _bucket_size(rate_limit: dict[str, Any] | None) -> tuple[float, float] | None:
    """(requests per second, burst) for the gateway's token buckets."""
    if not rate_limit:
        return None
    rps = float(rate_limit["requests_per_second"])
    return rps, float(rate_limit.get("burst") or max(1.0, rps))

