"""The job reconciler: runs each job as attempts on the best healthy cloud; an attempt lost with
its cloud resumes elsewhere from the latest checkpoint, an attempt that fails by its own error
is retried at most ``max_restarts`` times."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..clouds import LocalCloud, ProvisionError, ReplicaHandle, read_untrusted
from ..errors import FermionError
from ..security import env_purpose
from ..store import AttemptRow, JobRow, Store
from ._deployments import DeploymentController, backoff_s, shortfall
from ._loop import ReconcileLoop

JOB_TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_command(command: list[str], workers: int) -> list[str]:
    """The attempt's command line: the server's Python, torchrun for several workers, wrapped."""
    cmd = list(command)
    if cmd and Path(cmd[0]).name in ("python", "python3"):
        cmd[0] = sys.executable
    if workers > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(workers),
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *cmd[1:]]
    return [sys.executable, "-m", "fermion.controllers._attempt", "--", *cmd]


class JobController(ReconcileLoop):
    interval_s = 0.3

    def __init__(self, store: Store, clouds: dict[str, LocalCloud], deployments: DeploymentController,
                 on_success: Any = None) -> None:
        super().__init__()
        self.store, self.clouds, self.deployments = store, clouds, deployments
        self.on_success = on_success  # called with (session, job) when a job succeeds
        self._reclaimed: set[str] = set()  # attempts killed by an (injected) spot preemption

    def tick(self) -> None:
        with self._lock:
            with self.store.session() as s:
                attempts = s.scalars(select(AttemptRow).where(AttemptRow.state == "RUNNING")).all()
                running = [(a.id, a.cloud, ReplicaHandle(pid=a.pid or 0, workdir=Path(a.workdir))) for a in attempts]
                self._preempt_spot(attempts)
            alive = {aid: self.clouds[c].poll(h)[0] if c in self.clouds else False for aid, c, h in running}
            with self.store.session() as s:
                usage: dict[str, dict[str, float]] = {}
                for job in s.scalars(select(JobRow).where(JobRow.status.not_in(JOB_TERMINAL))).all():
                    self._reconcile(s, job, alive)
                for a in s.scalars(select(AttemptRow).where(AttemptRow.state == "RUNNING")).all():
                    held = usage.setdefault(a.cloud, {"cpus": 0.0, "memory_gb": 0.0})
                    held["cpus"] += float(a.resources.get("cpus", 1))
                    held["memory_gb"] += float(a.resources.get("memory_gb", 1))
                self.deployments.job_usage = usage

    def _preempt_spot(self, attempts: list[AttemptRow]) -> None:
        """A local cloud may declare that it reclaims spot capacity after a while: do so."""
        now = time.time()
        for a in attempts:
            cloud = self.clouds.get(a.cloud)
            after = cloud.config.inject.spot_preempt_after_s if cloud is not None else None
            if a.spot and after is not None and now - a.started_at > after and a.id not in self._reclaimed:
                self._reclaimed.add(a.id)
                cloud.stop(ReplicaHandle(pid=a.pid or 0, workdir=Path(a.workdir)), force=True)

    def _set(self, s: Session, job: JobRow, status: str, reason: str) -> None:
        if job.status != status:
            self.store.record(s, "job", job.name, job.status, status, reason)
        job.status, job.reason, job.updated_at = status, reason, time.time()

    def _current(self, s: Session, job: JobRow) -> AttemptRow | None:
        return s.scalars(select(AttemptRow).where(AttemptRow.job == job.name)
                         .order_by(AttemptRow.number.desc()).limit(1)).first()

    def _reconcile(self, s: Session, job: JobRow, alive: dict[str, bool]) -> None:
        attempt = self._current(s, job)
        if job.status == "RUNNING" and attempt is not None and attempt.state == "RUNNING":
            if alive.get(attempt.id, True):
                return
            self._ended(s, job, attempt)
        if job.status == "PENDING" and time.time() >= job.next_start_at:
            self._start(s, job, attempt)

    def _ended(self, s: Session, job: JobRow, a: AttemptRow) -> None:
        cloud = self.clouds.get(a.cloud)
        a.ended_at = time.time()
        try:
            a.exit_code = int(read_untrusted(Path(a.workdir) / "exit_code", 32))
        except (OSError, ValueError):
            a.exit_code = None  # killed with its cloud before it could say
        if cloud is None or cloud.failed or a.exit_code is None or a.id in self._reclaimed:
            # lost with its cloud, or its spot capacity reclaimed: not the job's fault; resume elsewhere
            cause = f"spot capacity reclaimed on {a.cloud}" if a.id in self._reclaimed else f"cloud {a.cloud} failed"
            self._reclaimed.discard(a.id)
            a.state, a.reason = "PREEMPTED", cause
            self.store.record(s, "attempt", a.id, "RUNNING", "PREEMPTED", cause)
            self._set(s, job, "PENDING", f"attempt {a.number} lost ({cause}): resuming from the latest "
                                         "checkpoint on another cloud")
            return
        if a.exit_code == 0:
            a.state, a.reason = "SUCCEEDED", "exit 0"
            self.store.record(s, "attempt", a.id, "RUNNING", "SUCCEEDED", "exit 0")
            if self.on_success is not None:
                try:
                    self.on_success(s, job)
                except Exception as exc:  # noqa: BLE001 - a failed registration fails the job, visibly
                    self._set(s, job, "FAILED", f"finished, but registering its result failed: {exc}")
                    return
            self._set(s, job, "SUCCEEDED", f"attempt {a.number} on {a.cloud} finished")
            return
        handle = ReplicaHandle(pid=a.pid or 0, workdir=Path(a.workdir))
        tail = [ln for ln in cloud.logs(handle, tail=20).splitlines() if ln.strip()]
        note = cloud.exit_note(handle, float((a.resources or {}).get("memory_gb", 0)) or None)
        last = self.deployments.redact_env(s, job.env, env_purpose("job", job.name), job.project, tail[-1] if tail else "")
        a.state, a.reason = "FAILED", f"exit {a.exit_code}{f' ({note})' if note else ''}: {last}".strip()
        self.store.record(s, "attempt", a.id, "RUNNING", "FAILED", f"own error: {a.reason}")
        job.restarts += 1
        if job.restarts > job.max_restarts:
            self._set(s, job, "FAILED", f"own error, not retried again ({job.max_restarts} restarts used): {a.reason}")
        else:
            job.next_start_at = time.time() + backoff_s(job.restarts)
            self._set(s, job, "PENDING", f"own error, restart {job.restarts} of {job.max_restarts}: {a.reason}")

    def _start(self, s: Session, job: JobRow, last: AttemptRow | None) -> None:
        need = job.resources or {"cpus": 1, "memory_gb": 1}
        free = self.deployments.free_capacity(s)
        order, why_not = [], []
        ranked = self.deployments.ranked_clouds(job.clouds or list(self.clouds), need, spot=job.spot)
        if last is not None and last.state == "PREEMPTED" and len(ranked) > 1 and last.cloud in ranked:
            ranked.remove(last.cloud)  # the next best cloud, not the one that just lost the attempt
            ranked.append(last.cloud)
        for name in ranked:
            short = shortfall(name, free[name], need)
            if short:
                why_not.append(short)
            else:
                order.append(name)
        number = (last.number if last else 0) + 1
        try:
            declared = self.deployments.open_env(s, job.env, env_purpose("job", job.name), job.project)
        except FermionError as exc:
            job.reason = f"cannot start: {exc}"
            return
        env = {**declared, "FERMION_CHECKPOINT_DIR": job.checkpoint_dir, "FERMION_JOB": job.name,
               "FERMION_ATTEMPT": str(number), "FERMION_JOB_OUTPUT": job.output_dir}
        read_only = self.deployments.artifact_mounts(s, job.spec.get("base"), job.project)
        for name in order:
            spot = job.spot and self.clouds[name].config.prices()[1] is not None
            attempt = AttemptRow(job=job.name, number=number, cloud=name, resources=dict(need), spot=spot)
            s.add(attempt)
            s.flush()
            try:
                handle = self.clouds[name].run(
                    attempt.id, launch_command(job.command, job.workers), env,
                    mounts=[Path(job.checkpoint_dir), Path(job.output_dir)], memory_gb=float(need.get("memory_gb", 1)),
                    read_only=read_only,
                )
            except ProvisionError as exc:
                s.delete(attempt)
                why_not.append(f"{name}: {exc.message}")
                self.deployments.mark_cloud(s, name, healthy=False, reason=exc.message)
                continue
            attempt.pid, attempt.workdir = handle.pid, str(handle.workdir)
            market = "spot" if spot else "on-demand"
            self.store.record(s, "attempt", attempt.id, "", "RUNNING", f"attempt {number} of {job.name} on {name} ({market})")
            self._set(s, job, "RUNNING", f"attempt {number} on {name} ({market})")
            return
        job.reason = "waiting for a cloud: " + ("; ".join(why_not) or "none allowed")

    def kill_on_cloud(self, cloud: str) -> int:
        """An outage of ``cloud``: its running attempts die at once (their jobs resume elsewhere)."""
        with self._lock, self.store.session() as s:
            running = s.scalars(select(AttemptRow).where(AttemptRow.state == "RUNNING", AttemptRow.cloud == cloud)).all()
            for a in running:
                self.clouds[cloud].stop(ReplicaHandle(pid=a.pid or 0, workdir=Path(a.workdir)), force=True)
            return len(running)

    def cancel(self, name: str) -> None:
        with self._lock, self.store.session() as s:
            job = s.get(JobRow, name)
            if job is None or job.status in JOB_TERMINAL:
                return
            attempt = self._current(s, job)
            if attempt is not None and attempt.state == "RUNNING" and attempt.cloud in self.clouds:
                self.clouds[attempt.cloud].stop(ReplicaHandle(pid=attempt.pid or 0, workdir=Path(attempt.workdir)))
                attempt.state, attempt.reason, attempt.ended_at = "CANCELLED", "cancelled by user", time.time()
            self._set(s, job, "CANCELLED", "cancelled by user")
