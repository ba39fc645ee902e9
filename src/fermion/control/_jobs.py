"""The job controller: one pass per job (claim → snapshot → plan → act → write back), as for
deployments. Each job runs as attempts on the best healthy cloud; an attempt lost with its cloud
resumes elsewhere from the latest checkpoint, an attempt that fails by its own error is retried
at most ``max_restarts`` times."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..backends import Handle, NoSpotCapacity, ProvisionError, Workload
from ..errors import FermionError
from ..security import env_purpose
from ..store import LIVE_ATTEMPT_STATES, AttemptRow, JobRow, Store
from ._deployments import LEASE_S, DeploymentController, StartFailed, start_or_clean_up
from ._loop import ReconcileLoop
from ._planner import AttemptView, JobPlan, JobView, Observation, plan_job
from ._scheduler import Moves, Need, Scheduler

log = logging.getLogger("fermion.controller")
JOB_TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})


class JobController(ReconcileLoop):
    interval_s = 0.3

    def __init__(self, store: Store, scheduler: Scheduler, deployments: DeploymentController,
                 on_success: Callable[[Session, JobRow], None] | None = None, owner: str | None = None,
                 attempt_env: Callable[[str], dict[str, str]] | None = None,
                 data_moves: Callable[[list[dict]], Moves] | None = None) -> None:
        super().__init__()
        self.store, self.scheduler, self.deployments = store, scheduler, deployments
        # what lets an attempt send its checkpoints to the stores (the server's URL, its token)
        self.attempt_env = attempt_env
        self.data_moves = data_moves  # what bringing a job's datasets to each cloud costs (asked of the stores)
        self.on_success = on_success  # called with (session, job) when a job succeeds
        self.owner = owner or f"jobs-{uuid.uuid4().hex[:12]}"

    def tick(self) -> None:
        with self._lock:
            self.scheduler.refresh()
            self.store.claim(JobRow, self.owner, LEASE_S, JobRow.status.not_in(JOB_TERMINAL))
            snapshot = self._snapshot(None)
            self._passes(snapshot)

    def _snapshot(self, name: str | None) -> list[tuple[JobRow, AttemptRow | None]]:
        with self.store.session() as s:
            q = select(JobRow).where(JobRow.lease_owner == self.owner, JobRow.status.not_in(JOB_TERMINAL))
            if name is not None:
                q = q.where(JobRow.name == name)
            jobs = list(s.scalars(q))
            latest: dict[str, AttemptRow] = {}
            for a in s.scalars(select(AttemptRow).where(AttemptRow.job.in_([j.name for j in jobs]))
                               .order_by(AttemptRow.number)):
                latest[a.job] = a
            return [(j, latest.get(j.name)) for j in jobs]

    def _passes(self, snapshot: list[tuple[JobRow, AttemptRow | None]]) -> None:
        live = [a for _, a in snapshot if a is not None and a.state in LIVE_ATTEMPT_STATES and a.handle]
        observations = self.deployments.observer.observe_all(
            [(a.id, self.scheduler.backends.get(a.cloud), a.handle) for a in live], probe=False)
        for job, attempt in snapshot:
            try:
                self._pass(job, attempt, observations.get(attempt.id) if attempt is not None else None)
            except Exception:  # noqa: BLE001 - a bug in one job stays in that job
                log.exception("reconciling job %s failed", job.name)

    def _pass(self, job: JobRow, a: AttemptRow | None, obs: Observation | None) -> None:
        view = JobView(job.name, job.status, job.restarts, job.max_restarts, job.next_start_at, job.cancel_requested)
        attempt = AttemptView(a.id, a.number, a.state, a.cloud, a.handle is not None,
                              cancelling_since=a.ended_at if a.state == "CANCELLING" else None) if a is not None else None
        plan = plan_job(view, attempt, obs, time.time())
        if plan.stop is not None and a is not None:
            backend = self.scheduler.backends.get(a.cloud)
            if backend is not None:
                backend.stop(a.handle or {"id": a.id}, force=plan.stop == "kill")
        started = self._write_plan(job.name, a, plan, job.cancel_requested)
        if started is None:
            return
        attempt_id, cloud, workload = started
        self._write_start(job.name, attempt_id, cloud, start_or_clean_up(self.scheduler.backends[cloud], workload))

    def _write_plan(self, name: str, a: AttemptRow | None, plan: JobPlan,
                    cancel_seen: bool) -> tuple[str, str, Workload] | None:
        """Write the plan; return the start it decided (intent written), if any."""
        if plan.attempt_state is None and plan.status is None and not plan.start:
            return None
        with self.scheduler.tentative(), self.store.session() as s:
            if self.store.renew(s, JobRow, name, self.owner, LEASE_S) is None:
                return None
            job = s.get(JobRow, name)
            if job is None or job.cancel_requested != cancel_seen:
                return None  # cancelled since the snapshot: the next pass carries that out
            if a is not None and plan.attempt_state is not None:
                attempt = s.get(AttemptRow, a.id)
                if attempt is not None:
                    reason = plan.attempt_reason
                    if plan.attempt_state == "FAILED":  # quotes the job's log: mask its secrets
                        reason = self.deployments.redact_env(s, job.env, env_purpose("job", name), job.project, reason)
                    self.store.record(s, "attempt", a.id, attempt.state, plan.attempt_state,
                                      f"own error: {reason}" if plan.attempt_state == "FAILED" else reason)
                    attempt.state, attempt.reason, attempt.ended_at = plan.attempt_state, reason, time.time()
                    attempt.exit_code = plan.exit_code
                    if plan.attempt_state not in LIVE_ATTEMPT_STATES:  # CANCELLING still holds its capacity
                        self.scheduler.release(a.id)
                    if plan.status is not None and plan.attempt_state == "FAILED":
                        plan.reason = self.deployments.redact_env(s, job.env, env_purpose("job", name), job.project,
                                                                  plan.reason)
            if plan.restarts is not None:
                job.restarts = plan.restarts
            if plan.next_start_at is not None:
                job.next_start_at = plan.next_start_at
            if plan.succeeded and self.on_success is not None:
                try:
                    self.on_success(s, job)
                except Exception as exc:  # noqa: BLE001 - a failed registration fails the job, visibly
                    plan.status, plan.reason = "FAILED", f"finished, but registering its result failed: {exc}"
            if plan.status is not None:
                self._set(s, job, plan.status, plan.reason)
            if plan.start:
                return self._decide_start(s, job, a)
        return None

    def _decide_start(self, s: Session, job: JobRow, last: AttemptRow | None) -> tuple[str, str, Workload] | None:
        need = Need.of(job.resources)
        number = (last.number if last else 0) + 1
        try:
            declared = self.deployments.open_env(s, job.env, env_purpose("job", job.name), job.project)
        except FermionError as exc:
            job.reason = f"cannot start: {exc}"
            return None
        attempt_id = f"a-{uuid.uuid4().hex[:10]}"
        preempted = last is not None and last.state == "PREEMPTED"
        moves = self.data_moves(job.spec["datasets"]) if self.data_moves and job.spec.get("datasets") else None
        # a pipeline's placement names the cloud for the first attempt; a later one goes where the scheduler says
        prefer = job.spec.get("prefer") if number == 1 else None
        choice = self.scheduler.choose(attempt_id, need, job.clouds or list(self.scheduler.backends), spot=job.spot,
                                       last=last.cloud if preempted and last is not None else None, moves=moves,
                                       prefer=prefer)
        if choice.cloud is None:
            job.reason = "waiting for a cloud: " + "; ".join(choice.why_not or ["none allowed"])
            return None
        spot = job.spot and self.scheduler.spot_ok(choice.cloud)  # no spot capacity now: on-demand
        s.add(AttemptRow(id=attempt_id, job=job.name, number=number, cloud=choice.cloud, resources=asdict(need),
                         spot=spot, state="STARTING", reason="starting"))
        if choice.why:  # the plan's reasons: price, score, the data it must bring, the next best cloud
            self.store.record(s, "attempt", attempt_id, "", "STARTING", f"attempt {number} of {job.name} placed on "
                              f"{choice.cloud}: {choice.why}")
        # checkpoints: a folder of the attempt's own, on its own cloud; they reach another cloud
        # only through the stores (the attempt's wrapper sends and restores them)
        env = {**declared, "FERMION_CHECKPOINT_DIR": "checkpoints", "FERMION_JOB": job.name,
               "FERMION_ATTEMPT": str(number), "FERMION_JOB_OUTPUT": job.output_dir,
               **_pipeline_env(job.spec.get("pipeline")),
               **(self.attempt_env(attempt_id) if self.attempt_env else {})}
        writable = []
        if job.spec.get("outputs") == "stores":  # the job writes its output on its cloud; the wrapper sends it
            env["FERMION_JOB_OUTPUT"] = "output"
        else:  # a job made before outputs went through the stores keeps its folder
            writable.append(Path(job.output_dir))
        if job.spec.get("config") is not None:  # a fine-tune's (or compression's) settings, read by its module
            env[job.spec.get("config_env", "FERMION_FINETUNE_CONFIG")] = json.dumps(job.spec["config"])
        base = job.spec.get("base_model") or {}
        if base.get("digest"):  # a registered model in the stores: fetched onto the cloud like the data
            env["FERMION_BASE_MODEL"] = base["digest"]
        if job.checkpoint_dir:  # a job made before checkpoints went through the stores keeps its folder
            env["FERMION_CHECKPOINT_DIR"] = job.checkpoint_dir
            writable.append(Path(job.checkpoint_dir))
        if job.spec.get("code"):  # the command runs in the job's code, fetched onto the cloud the same way
            env["FERMION_CODE"] = job.spec["code"]
            if job.kind in ("finetune", "compress"):  # its paths are the attempt folder's (code/..., data/..., base/...)
                env["FERMION_CODE_CWD"] = "no"
        if job.spec.get("datasets"):  # fetched by the attempt's wrapper from the nearest store that holds them
            env.update({"FERMION_DATA_DIR": "data", "FERMION_DATASETS": ",".join(d["name"] for d in job.spec["datasets"])})
        workload = Workload(id=attempt_id, kind="job", env=env, cpus=need.cpus, memory_gb=need.memory_gb, spot=spot,
                            egress=need.egress,
                            command=list(job.command), workers=job.workers, writable=writable,
                            read_only=[] if base.get("digest") else
                            self.deployments.artifact_mounts(s, base.get("folder") or (job.spec.get("config") or
                                                                                       job.spec).get("base"),
                                                             job.project))
        return attempt_id, choice.cloud, workload

    def _write_start(self, name: str, attempt_id: str, cloud: str, result: Handle | ProvisionError) -> None:
        with self.store.session() as s:
            owned = self.store.renew(s, JobRow, name, self.owner, LEASE_S) is not None
            job, attempt = s.get(JobRow, name), s.get(AttemptRow, attempt_id)
            if isinstance(result, ProvisionError):
                self.scheduler.release(attempt_id)
                if not isinstance(result, StartFailed | NoSpotCapacity):  # the cloud itself is fine
                    self.scheduler.mark(s, cloud, healthy=False, reason=result.message)
                if attempt is not None and owned:
                    s.delete(attempt)
                if job is not None and owned:
                    job.reason = f"waiting for a cloud: {cloud}: {result.message}"
                return
            if not owned or job is None or attempt is None:  # nobody may record it: do not leave it running
                self.scheduler.release(attempt_id)
                self.scheduler.backends[cloud].stop(result, force=True)
                return
            self.scheduler.mark(s, cloud, healthy=True, reason="started a job attempt")
            market = "spot" if attempt.spot else "on-demand"
            attempt.handle, attempt.state, attempt.reason = result, "RUNNING", f"on {cloud} ({market})"
            attempt.started_at = time.time()
            self.store.record(s, "attempt", attempt_id, "STARTING", "RUNNING",
                              f"attempt {attempt.number} of {name} on {cloud} ({market})")
            self._set(s, job, "RUNNING", f"attempt {attempt.number} on {cloud} ({market})")

    def _set(self, s: Session, job: JobRow, status: str, reason: str) -> None:
        if job.status != status:
            self.store.record(s, "job", job.name, job.status, status, reason)
        job.status, job.reason, job.updated_at = status, reason, time.time()

    def stop(self) -> None:
        """Stop the loop and free this controller's leases (a restarted server claims them at once)."""
        super().stop()
        self.store.release_all(JobRow, self.owner)

    # -- what the API asks for ---------------------------------------------------------------
    def kill_on_cloud(self, cloud: str) -> int:
        """An outage of ``cloud``: its running attempts die at once (their jobs resume elsewhere)."""
        with self.store.session() as s:
            live = [(a.id, a.handle) for a in s.scalars(select(AttemptRow).where(
                AttemptRow.cloud == cloud, AttemptRow.state.in_(LIVE_ATTEMPT_STATES)))]
        backend = self.scheduler.backends[cloud]
        for aid, handle in live:
            backend.stop(handle or {"id": aid}, force=True)
        return len(live)

    def cancel(self, name: str, wait_s: float = 10.0) -> None:
        """Desired state first (it survives a restart), then passes now to carry it out, for at
        most ``wait_s`` (an attempt that drains slowly ends CANCELLED on a later pass)."""
        with self.store.session() as s:
            job = s.get(JobRow, name)
            if job is None or job.status in JOB_TERMINAL:
                return
            job.cancel_requested = True
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self._lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                try:
                    if self.store.claim(JobRow, self.owner, LEASE_S, JobRow.name == name):
                        self._passes(self._snapshot(name))
                finally:
                    self._lock.release()
            with self.store.session() as s:
                job = s.get(JobRow, name)
                if job is None or job.status in JOB_TERMINAL:
                    return
            time.sleep(0.1)


def _pipeline_env(pipeline: dict[str, Any] | None) -> dict[str, str]:
    """A pipeline step's job is told its run, and the models the steps before it registered (not
    part of its env, so not masked in its logs as the env's values are)."""
    if not pipeline:
        return {}
    return {"FERMION_PIPELINE": str(pipeline.get("name")), "FERMION_PIPELINE_RUN": str(pipeline.get("run")),
            "FERMION_PIPELINE_STEP": str(pipeline.get("step")),
            **{f"FERMION_INPUT_{step}_MODEL": ref for step, ref in (pipeline.get("models") or {}).items()}}
