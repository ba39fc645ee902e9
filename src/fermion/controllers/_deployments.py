"""The deployment reconciler: drives actual replicas toward each deployment's desired state.

Each tick: read replicas, observe them (process alive? port? /healthz?) outside any
transaction, then write the consequences in one transaction, start what is missing, drain
what is extra or outdated, and publish the READY replicas to the gateway's routing table.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from ..clouds import LocalCloud, ProvisionError, ReplicaHandle, ReplicaSpec
from ..errors import FermionError
from ..gateway import Endpoint, Route, RoutingTable
from ..security import SecretBox, env_purpose
from ..store import TERMINAL_STATES, CloudRow, DeploymentRow, ModelVersionRow, PhotonRow, ReplicaRow, Store
from ._loop import ReconcileLoop

log = logging.getLogger("fermion.controller")

MAX_CRASHES = 5  # consecutive crashes before a deployment is FAILED
STARTUP_TIMEOUT_S = 300.0
DRAIN_TIMEOUT_S = 30.0
UNHEALTHY_AFTER = 2  # failed probes of a READY replica
REPLACE_AFTER = 10  # failed probes of an UNHEALTHY replica
CLOUD_RETRY_S = 30.0  # a cloud that failed to provision is tried again after this


@dataclass
class Observation:
    alive: bool
    port: int | None
    health: str | None  # "ready", another /healthz status, or None if it did not answer


def backoff_s(crashes: int) -> float:
    return min(30.0, 0.5 * 2 ** max(0, crashes - 1))


def handle_of(r: ReplicaRow) -> ReplicaHandle:
    return ReplicaHandle(pid=r.pid or 0, workdir=Path(r.workdir or "."), port=r.port)


EnvOpener = Callable[[Session, dict[str, str], str, str], dict[str, str]]  # (session, env, purpose, project)


def plain_env(s: Session, env: dict[str, str], purpose: str, project: str) -> dict[str, str]:
    return dict(env)


class DeploymentController(ReconcileLoop):
    def __init__(self, store: Store, clouds: dict[str, LocalCloud], table: RoutingTable, interval_s: float = 0.25,
                 *, open_env: EnvOpener = plain_env):
        super().__init__()
        self.store = store
        self.clouds = clouds
        self.table = table
        self.interval_s = interval_s
        self.open_env = open_env  # the stored (sealed) env -> what the workload gets, secrets resolved
        self._http = httpx.Client(timeout=1.0)
        self.job_usage: dict[str, dict[str, float]] = {}  # cloud -> resources held by running job attempts
        self._targets: dict[str, dict[str, int]] = {}  # deployment -> replicas per cloud it is moving to

    def stop(self) -> None:
        super().stop()
        self._http.close()

    # -- one pass -------------------------------------------------------------------------
    def tick(self) -> None:
        with self._lock:
            with self.store.session() as s:
                live = [(r.id, r.cloud, handle_of(r)) for r in self._live_replicas(s) if r.pid]
            observations = {rid: self._observe(cloud, h) for rid, cloud, h in live}
            with self.store.session() as s:
                for d in s.scalars(select(DeploymentRow)).all():
                    self._reconcile(s, d, observations)
                self._publish(s)

    def _live_replicas(self, s: Session, deployment: str | None = None) -> list[ReplicaRow]:
        q = select(ReplicaRow).where(ReplicaRow.state.not_in(TERMINAL_STATES))
        if deployment is not None:
            q = q.where(ReplicaRow.deployment == deployment)
        return list(s.scalars(q.order_by(ReplicaRow.created_at)).all())

    def _observe(self, cloud_name: str | None, handle: ReplicaHandle) -> Observation:
        cloud = self.clouds.get(cloud_name or "")
        if cloud is None:
            return Observation(False, None, None)
        alive, port = cloud.poll(handle)
        health = None
        if alive and port:
            try:
                health = self._http.get(f"http://127.0.0.1:{port}/healthz").json().get("status")
            except (httpx.HTTPError, ValueError):
                health = None
        return Observation(alive, port, health)

    # -- state changes --------------------------------------------------------------------
    def _set_state(self, s: Session, r: ReplicaRow, state: str, reason: str = "") -> None:
        if r.state == state and r.reason == reason:
            return
        self.store.record(s, "replica", r.id, r.state, state, reason)
        r.state, r.reason, r.state_since = state, reason, time.time()

    def _set_status(self, s: Session, d: DeploymentRow, status: str, reason: str = "") -> None:
        if d.status == status and d.status_reason == reason:
            return
        if d.status != status:  # a new reason alone (e.g. "1/2 ready") is not an event
            self.store.record(s, "deployment", d.name, d.status, status, reason)
        d.status, d.status_reason, d.updated_at = status, reason, time.time()

    def _apply(self, s: Session, d: DeploymentRow, r: ReplicaRow, obs: Observation | None) -> None:
        now = time.time()
        if r.state == "PENDING" or obs is None:
            return
        cloud = self.clouds.get(r.cloud or "")
        if obs.port and r.port != obs.port:
            r.port = obs.port
        if r.state == "DRAINING":
            if not obs.alive:
                self._set_state(s, r, "TERMINATED", r.reason)
            elif now - r.state_since > DRAIN_TIMEOUT_S and cloud is not None:
                cloud.stop(handle_of(r), force=True)
            return
        if not obs.alive:
            self._on_exit(s, d, r, cloud)
            return
        if obs.health == "ready":
            r.failed_probes = 0
            if r.state != "READY":
                self._set_state(s, r, "READY", "passed health check")
                d.crash_count = 0
            return
        if r.state == "PROVISIONING" and obs.port:
            self._set_state(s, r, "STARTING", "listening; waiting for init()")
        elif r.state in ("PROVISIONING", "STARTING") and now - r.state_since > STARTUP_TIMEOUT_S:
            if cloud is not None:
                cloud.stop(handle_of(r), force=True)
            self._crashed(s, d, r, f"not ready within {STARTUP_TIMEOUT_S:.0f}s")
        elif r.state in ("READY", "UNHEALTHY"):
            r.failed_probes += 1
            if r.state == "READY" and r.failed_probes >= UNHEALTHY_AFTER:
                self._set_state(s, r, "UNHEALTHY", f"{r.failed_probes} health checks failed")
            elif r.state == "UNHEALTHY" and r.failed_probes >= REPLACE_AFTER and cloud is not None:
                cloud.stop(handle_of(r), force=True)
                self._crashed(s, d, r, f"replaced after {r.failed_probes} failed health checks")

    def _on_exit(self, s: Session, d: DeploymentRow, r: ReplicaRow, cloud: LocalCloud | None) -> None:
        if cloud is not None and cloud.failed:
            # not the photon's fault: do not count it toward a crash loop
            self._set_state(s, r, "FAILED", f"cloud {cloud.name} failed")
            return
        code = cloud.exit_code(handle_of(r)) if cloud is not None else None
        last = ""
        if cloud is not None:
            lines = [ln for ln in cloud.logs(handle_of(r), tail=40).splitlines() if ln.strip()]
            errors = [ln for ln in lines if "error" in ln.lower() or "failed" in ln.lower()]
            last = self.redact_env(s, d.env, env_purpose("deployment", d.name), d.project,
                                   (errors or lines or [""])[-1].strip())
        exit_text = f"exited with code {code}" if code is not None else "process exited"
        note = cloud.exit_note(handle_of(r), float((r.resources or {}).get("memory_gb", 0)) or None) if cloud else ""
        if note:
            exit_text += f" ({note})"
        self._crashed(s, d, r, f"{exit_text}: {last}" if last else exit_text)

    def _crashed(self, s: Session, d: DeploymentRow, r: ReplicaRow, reason: str) -> None:
        self._set_state(s, r, "FAILED", reason)
        d.crash_count += 1
        d.last_error = reason
        d.next_start_at = time.time() + backoff_s(d.crash_count)
        if d.crash_count >= MAX_CRASHES and d.status != "FAILED":
            self._set_status(s, d, "FAILED", f"crash loop ({d.crash_count} crashes in a row); last error: {reason}")

    # -- reconcile one deployment ---------------------------------------------------------
    def _reconcile(self, s: Session, d: DeploymentRow, observations: dict[str, Observation]) -> None:
        replicas = self._live_replicas(s, d.name)
        for r in replicas:
            self._apply(s, d, r, observations.get(r.id))
        replicas = [r for r in replicas if r.state not in TERMINAL_STATES]
        active = [r for r in replicas if r.state != "DRAINING"]
        current = [r for r in active if r.generation == d.generation]
        outdated = [r for r in active if r.generation != d.generation]
        deleting = d.status == "DELETING"
        desired = 0 if deleting else d.replicas

        if len(current) < desired and d.status != "FAILED" and time.time() >= d.next_start_at:
            for _ in range(desired - len(current)):
                r = ReplicaRow(
                    deployment=d.name, generation=d.generation, photon_sha256=d.photon_sha256,
                    resources=dict(d.resources), state="PENDING", reason="waiting for placement",
                )
                s.add(r)
                s.flush()
                self.store.record(s, "replica", r.id, "", "PENDING", f"deployment {d.name} needs a replica")
                current.append(r)
        target = None if deleting or d.status == "FAILED" else self._targets.get(d.name)
        if target is not None:
            self._rebalance_step(s, d, current, target)
        extra = len(current) - desired
        if target is not None and extra == 1:
            extra = 0  # the surge replica of a move; _rebalance_step retires one when it is READY
        if extra > 0:
            # drop the least useful first: not ready, then newest
            for r in sorted(current, key=lambda r: (r.state == "READY", -r.created_at))[:extra]:
                self._drain(s, r, "scaled down" if not deleting else "deployment deleted")
        for r in [r for r in current if r.state == "PENDING"]:
            self._place(s, d, r, only=self._surge_cloud(d, current) if target is not None else None)
        ready_now = sum(r.state == "READY" for r in current)
        if outdated and (ready_now >= desired or deleting):
            for r in outdated:  # rolling update: the new version is serving, retire the old
                self._drain(s, r, f"replaced by generation {d.generation}")

        if deleting:
            if not self._live_replicas(s, d.name):
                self.store.record(s, "deployment", d.name, d.status, "DELETED", "all replicas stopped")
                # explicit order: the replica rows reference the deployment row
                s.execute(delete(ReplicaRow).where(ReplicaRow.deployment == d.name))
                s.flush()
                s.delete(d)
            return
        if d.status == "FAILED":
            return
        ready_all = ready_now + sum(r.state == "READY" for r in outdated)
        if ready_now >= desired:
            self._set_status(s, d, "READY", f"{ready_now}/{desired} replicas ready")
        elif ready_all > 0:
            self._set_status(s, d, "DEGRADED", f"{ready_all}/{desired} replicas ready")
        else:
            pending = [r.reason for r in current if r.state == "PENDING"]
            self._set_status(s, d, "DEPLOYING", pending[0] if pending else f"0/{desired} replicas ready")

    # -- moving replicas to a better placement ---------------------------------------------
    def _surge_cloud(self, d: DeploymentRow, current: list[ReplicaRow]) -> str | None:
        target = self._targets.get(d.name, {})
        counts = _per_cloud(current)
        return next((c for c in sorted(target) if counts.get(c, 0) < target[c]), None)

    def _rebalance_step(self, s: Session, d: DeploymentRow, current: list[ReplicaRow], target: dict[str, int]) -> None:
        """One move at a time: surge a replica where the target wants more, and once it is READY,
        retire one where there are too many. READY replicas never drop below the desired count."""
        counts = _per_cloud(current)
        down = [c for c in target if c not in self.clouds or self.clouds[c].failed
                or self.clouds[c].unhealthy_until > time.time()]
        if down:
            del self._targets[d.name]
            self.store.record(s, "deployment", d.name, "REBALANCING", d.status, f"abandoned: {', '.join(down)} unhealthy")
            return
        if {c: n for c, n in counts.items() if n} == {c: n for c, n in target.items() if n} and len(current) == d.replicas:
            del self._targets[d.name]
            self.store.record(s, "deployment", d.name, "REBALANCING", d.status, f"now placed as {target}")
            return
        if any(r.state != "READY" for r in current):
            return  # a move is under way (or the deployment is not settled): wait
        if len(current) == d.replicas and self._surge_cloud(d, current) is not None:
            r = ReplicaRow(deployment=d.name, generation=d.generation, photon_sha256=d.photon_sha256,
                           resources=dict(d.resources), state="PENDING", reason="rebalancing")
            s.add(r)
            s.flush()
            self.store.record(s, "replica", r.id, "", "PENDING", f"moving a replica to {self._surge_cloud(d, current)}")
            current.append(r)
        elif len(current) > d.replicas:
            over = next((c for c in sorted(counts) if counts[c] > target.get(c, 0)), None)
            victim = next((r for r in current if r.cloud == over), None)
            if victim is not None:
                self._drain(s, victim, f"moved to a better placement ({target})")
                current.remove(victim)

    def plan_rebalance(self, name: str) -> dict[str, Any]:
        """The optimal placement of a deployment's replicas over the healthy clouds, vs. now."""
        from ..placement import CloudState, Constraints, PlacementRequest, optimize

        with self._lock, self.store.session() as s:
            d = s.get(DeploymentRow, name)
            assert d is not None
            current = [r for r in self._live_replicas(s, name) if r.state != "DRAINING" and r.generation == d.generation]
            counts = _per_cloud(current)
            need = d.resources or {"cpus": 1, "memory_gb": 1}
            free = self.free_capacity(s)
            allowed = [n for n in self.clouds if not d.clouds or n in d.clouds]
            offerings, states, prices = [], {}, {}
            for n in allowed:
                cloud = self.clouds[n]
                offering = local_offering(cloud)
                prices[n] = offering.price
                offerings.append(offering)
                # this deployment's own replicas would move, so their room counts as free
                room_cpus = free[n]["cpus"] + counts.get(n, 0) * float(need.get("cpus", 1))
                room_mem = free[n]["memory_gb"] + counts.get(n, 0) * float(need.get("memory_gb", 1))
                states[n] = CloudState(
                    healthy=not cloud.failed and cloud.unhealthy_until <= time.time(),
                    max_replicas=int(min(room_cpus / float(need.get("cpus", 1)), room_mem / float(need.get("memory_gb", 1)))),
                )
            spread = min(2, len(allowed)) or 1
            request = PlacementRequest(cpus=float(need.get("cpus", 1)), memory_gb=float(need.get("memory_gb", 1)),
                                       replicas=max(1, d.replicas),
                                       constraints=Constraints(max_per_cloud=max(1, math.ceil(d.replicas / spread))))
            plan = optimize(request, offerings, states)
            current_cost = sum(prices.get(c, 0.0) * k for c, k in counts.items())
            return {
                "deployment": name, "current": counts, "current_cost_per_hour": round(current_cost, 6),
                "plan": plan.model_dump(), "target": plan.clouds() if plan.feasible else None,
                "target_cost_per_hour": plan.cost_per_hour if plan.feasible else None,
                "saving": round(1 - plan.cost_per_hour / current_cost, 6) if plan.feasible and current_cost > 0 else 0.0,
                "moving": name in self._targets,
            }

    def start_rebalance(self, name: str, target: dict[str, int], reason: str) -> None:
        with self._lock, self.store.session() as s:
            self._targets[name] = dict(target)
            d = s.get(DeploymentRow, name)
            self.store.record(s, "deployment", name, d.status if d else "", "REBALANCING", reason)

    def _drain(self, s: Session, r: ReplicaRow, reason: str) -> None:
        cloud = self.clouds.get(r.cloud or "")
        if r.pid and cloud is not None:
            cloud.stop(handle_of(r))  # SIGTERM: the photon finishes in-flight requests, then exits
            self._set_state(s, r, "DRAINING", reason)
        else:
            self._set_state(s, r, "TERMINATED", reason)

    # -- placement ------------------------------------------------------------------------
    def free_capacity(self, s: Session) -> dict[str, dict[str, float]]:
        used: dict[str, dict[str, float]] = {name: {"cpus": 0.0, "memory_gb": 0.0} for name in self.clouds}
        for r in self._live_replicas(s):
            if r.cloud in used:
                used[r.cloud]["cpus"] += float(r.resources.get("cpus", 1))
                used[r.cloud]["memory_gb"] += float(r.resources.get("memory_gb", 1))
        for cloud, held in self.job_usage.items():
            if cloud in used:
                used[cloud]["cpus"] += held["cpus"]
                used[cloud]["memory_gb"] += held["memory_gb"]
        return {
            name: {
                "cpus": cloud.config.capacity.cpus - used[name]["cpus"],
                "memory_gb": cloud.config.capacity.memory_gb - used[name]["memory_gb"],
            }
            for name, cloud in self.clouds.items()
        }

    def _candidates(self, s: Session, d: DeploymentRow, need: dict[str, Any]) -> tuple[list[str], list[str]]:
        free = self.free_capacity(s)
        ok, why_not = [], []
        for name in sorted(self.clouds):
            cloud = self.clouds[name]
            if d.clouds and name not in d.clouds:
                continue
            if cloud.failed or cloud.unhealthy_until > time.time():
                why_not.append(f"{name}: unhealthy")
                continue
            short = shortfall(name, free[name], need)
            if short:
                why_not.append(short)
                continue
            ok.append(name)
        return ok, why_not

    def _observed_latency(self) -> dict[str, float]:
        """Mean gateway-measured latency per cloud, over the replicas serving now."""
        samples: dict[str, list[float]] = {}
        for route in self.table.routes():
            for e in route.endpoints:
                if e.latency_ewma_ms is not None:
                    samples.setdefault(e.cloud, []).append(e.latency_ewma_ms)
        return {cloud: sum(v) / len(v) for cloud, v in samples.items()}

    def _rank(self, s: Session, d: DeploymentRow, candidates: list[str], need: dict[str, Any]) -> tuple[list[str], str]:
        """Order the feasible clouds by the optimizer's score; also return its explanation."""
        from ..placement import CloudState, Constraints, Objective, PlacementRequest, optimize

        per_cloud: dict[str, int] = {}
        for r in self._live_replicas(s, d.name):
            if r.cloud and r.state != "DRAINING" and r.generation == d.generation:
                per_cloud[r.cloud] = per_cloud.get(r.cloud, 0) + 1
        allowed = [n for n in self.clouds if not d.clouds or n in d.clouds]
        spread = min(2, len(allowed)) or 1  # by default, at most half the replicas on one cloud
        max_per_cloud = max(1, math.ceil(d.replicas / spread))
        observed = self._observed_latency()
        offerings, states = [], {}
        for name in candidates:
            offerings.append(local_offering(self.clouds[name]))
            states[name] = CloudState(max_replicas=max(0, max_per_cloud - per_cloud.get(name, 0)),
                                      observed_latency_ms=observed.get(name))
        request = PlacementRequest(
            cpus=float(need.get("cpus", 1)), memory_gb=float(need.get("memory_gb", 1)), replicas=1,
            constraints=Constraints(), objective=Objective(),
        )
        plan = optimize(request, offerings, states)
        if not plan.feasible:  # the spread cap is full everywhere (e.g. after a failure): any free cloud
            plan = optimize(request, offerings, {k: v.model_copy(update={"max_replicas": None}) for k, v in states.items()})
        chosen = [p.cloud for p in plan.placements]  # then the rest, should provisioning there fail
        order = chosen + [n for n in self.ranked_clouds(candidates, need) if n not in chosen]
        why = ""
        if plan.placements:
            p = plan.placements[0]
            why = f"${p.price_per_hour:.4f}/h, score {p.score:.4f}"
            alt = next((x for x in plan.rejected if x.cloud in candidates), None)
            if alt is not None:
                why += f"; next best {alt.cloud}: {alt.reason}"
        return order, why

    def ranked_clouds(self, names: list[str], need: dict[str, Any], *, spot: bool = False) -> list[str]:
        """Healthy clouds among ``names``, best first by the optimizer (price, latency); with
        ``spot``, clouds that sell spot capacity are priced at it."""
        from ..placement import CloudState, Constraints, PlacementRequest, optimize

        healthy = [n for n in names if n in self.clouds and not self.clouds[n].failed
                   and self.clouds[n].unhealthy_until <= time.time()]
        if not healthy:
            return []
        observed = self._observed_latency()
        request = PlacementRequest(cpus=float(need.get("cpus", 1)), memory_gb=float(need.get("memory_gb", 1)),
                                   replicas=len(healthy), constraints=Constraints(spot_share=1.0 if spot else 0.0))
        plan = optimize(request, [local_offering(self.clouds[n]) for n in healthy],
                        {n: CloudState(max_replicas=1, observed_latency_ms=observed.get(n)) for n in healthy})
        ranked = [p.cloud for p in sorted(plan.placements, key=lambda p: (p.score, p.cloud))]
        return ranked + [n for n in healthy if n not in ranked]

    def _place(self, s: Session, d: DeploymentRow, r: ReplicaRow, only: str | None = None) -> None:
        need = r.resources or {"cpus": 1, "memory_gb": 1}
        candidates, why_not = self._candidates(s, d, need)
        if only is not None and only in candidates:
            candidates = [only]
        photon = s.get(PhotonRow, r.photon_sha256)
        assert photon is not None
        order, why = self._rank(s, d, candidates, need) if candidates else ([], "")
        if order:
            try:
                env = self.open_env(s, d.env, env_purpose("deployment", d.name), d.project)
            except FermionError as exc:
                self._set_state(s, r, "PENDING", f"cannot start: {exc}")
                return
            spec = ReplicaSpec(replica_id=r.id, archive=Path(photon.archive_path), env=env,
                               secret=r.auth_secret or secrets.token_urlsafe(32), memory_gb=float(need.get("memory_gb", 1)),
                               mounts=self.artifact_mounts(s, env.get("FERMION_MODEL_DIR"), d.project))
        for name in order:
            cloud = self.clouds[name]
            try:
                handle = cloud.provision(spec)
            except ProvisionError as exc:
                why_not.append(f"{name}: {exc.message}")
                self.mark_cloud(s, name, healthy=False, reason=exc.message)
                continue
            self.mark_cloud(s, name, healthy=True, reason="provisioned a replica")
            r.cloud, r.pid, r.workdir, r.auth_secret = name, handle.pid, str(handle.workdir), spec.secret
            self._set_state(s, r, "PROVISIONING", f"process {handle.pid} on cloud {name} ({why})" if why
                            else f"process {handle.pid} on cloud {name}")
            return
        wanted = ", ".join(f"{k}={v}" for k, v in need.items())
        self._set_state(s, r, "PENDING", f"no cloud can run it ({wanted}): " + "; ".join(why_not or ["no cloud allowed"]))

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
        if resolved.is_dir() and any(resolved.is_relative_to(Path(uri).resolve()) for uri in versions):
            return [resolved]
        return []

    def mark_cloud(self, s: Session, name: str, *, healthy: bool, reason: str) -> None:
        """A cloud that fails to provision is unhealthy for a while, then probed again by the next placement."""
        cloud = self.clouds[name]
        cloud.unhealthy_until = 0.0 if healthy else time.time() + CLOUD_RETRY_S
        row = s.get(CloudRow, name)
        state = "healthy" if healthy else "unhealthy"
        if row is not None and row.health != state and not cloud.failed:
            self.store.record(s, "cloud", name, row.health, state, reason)
            row.health, row.health_reason = state, "" if healthy else reason

    # -- the routing table ----------------------------------------------------------------
    def _publish(self, s: Session) -> None:
        routes: dict[str, Route] = {}
        for d in s.scalars(select(DeploymentRow)).all():
            if d.status == "DELETING":
                continue
            ready = [r for r in self._live_replicas(s, d.name) if r.state == "READY" and r.port]
            routes[d.name] = Route(
                deployment=d.name, public=d.public, idempotent=d.idempotent, token_hash=d.token_hash,
                rate_limit=_bucket_size(d.rate_limit),
                endpoints=[Endpoint(r.id, r.cloud or "", f"http://127.0.0.1:{r.port}", r.auth_secret) for r in ready],
            )
        self.table.publish(routes)

    # -- cloud outages (injected) ---------------------------------------------------------
    def fail_cloud(self, name: str, reason: str) -> int:
        with self._lock, self.store.session() as s:
            cloud = self.clouds[name]
            cloud.fail()
            row = s.get(CloudRow, name)
            if row is not None and row.health != "unhealthy":
                self.store.record(s, "cloud", name, row.health, "unhealthy", reason)
                row.health, row.health_reason = "unhealthy", reason
            killed = 0
            for r in self._live_replicas(s):
                if r.cloud == name and r.pid:
                    cloud.stop(handle_of(r), force=True)
                    killed += 1
            return killed

    def recover_cloud(self, name: str) -> None:
        with self._lock, self.store.session() as s:
            self.clouds[name].recover()
            row = s.get(CloudRow, name)
            if row is not None and row.health != "healthy":
                self.store.record(s, "cloud", name, row.health, "healthy", "recovered")
                row.health, row.health_reason = "healthy", ""


def _bucket_size(rate_limit: dict[str, Any] | None) -> tuple[float, float] | None:
    """(requests per second, burst) for the gateway's token buckets."""
    if not rate_limit:
        return None
    rps = float(rate_limit["requests_per_second"])
    return rps, float(rate_limit.get("burst") or max(1.0, rps))


def _per_cloud(replicas: list[ReplicaRow]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in replicas:
        if r.cloud:
            counts[r.cloud] = counts.get(r.cloud, 0) + 1
    return counts


def shortfall(cloud: str, free: dict[str, float], need: dict[str, Any]) -> str | None:
    """Why ``need`` does not fit in ``free`` on ``cloud``, or None if it fits."""
    if free["cpus"] + 1e-9 < float(need.get("cpus", 1)) or free["memory_gb"] + 1e-9 < float(need.get("memory_gb", 1)):
        return f"{cloud}: {max(free['cpus'], 0):g} cpus / {max(free['memory_gb'], 0):g} GB free"
    return None


def local_offering(cloud: LocalCloud) -> Any:
    """A local cloud as an optimizer offering: its capacity, declared prices and latency."""
    from ..placement import Offering

    cfg = cloud.config
    price, spot, itype = cfg.prices()
    return Offering(cloud=cloud.name, region=cfg.regions[0], instance_type=itype, vcpus=cfg.capacity.cpus,
                    memory_gb=cfg.capacity.memory_gb, price=price, spot_price=spot, latency_ms=cfg.inject.latency_ms)
