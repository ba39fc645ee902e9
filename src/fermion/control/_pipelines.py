"""The pipeline controller: each pass reads the runs under way, decides each step's next move
(start, poll, skip as cached, block behind a failure, end the run) and acts through the SDK, as
the user who started the run (a token of the run's own, revoked when it ends); then it writes
back. Triggers (a new dataset version, a cron time) start runs from the same loop."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from ..errors import ConflictError, FermionError, NotFoundError, RemoteError, TransportError, UserInputError
from ..pipelines import COMPUTE_KINDS, PipelineSpec, StepSpec, next_fire
from ..security import run_token_purpose
from ..store import PipelineRow, PipelineRunRow, StepRunRow, Store
from ._loop import ReconcileLoop

if TYPE_CHECKING:
    from ..sdk import Connection

log = logging.getLogger("fermion.pipelines")
DONE = frozenset({"SUCCEEDED", "CACHED", "FAILED", "BLOCKED", "CANCELLED"})
GOOD = frozenset({"SUCCEEDED", "CACHED"})
DEPLOY_TIMEOUT_S = 900.0  # a deploy step (its canary included) that has not settled by then fails


def job_name(pipeline: str, step: str, run: int, run_id: str = "") -> str:
    """The job a step of a run runs as: PIPELINE-STEP-RUN (with the run's id when that name is taken),
    shortened (with a hash) past 63 characters."""
    name = f"{pipeline}-{step}-{run}" + (f"-{run_id.removeprefix('pr-')}" if run_id else "")
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{pipeline[:24]}-{step[:20]}-{run}-{digest}"[:63]


token_purpose = run_token_purpose  # what a run's sealed token is bound to


def order(spec: PipelineSpec) -> list[StepSpec]:
    """The steps, each after those it needs (the spec is checked to be a DAG)."""
    done: list[StepSpec] = []
    names: set[str] = set()
    while len(done) < len(spec.steps):
        for s in spec.steps:
            if s.name not in names and set(s.after) <= names:
                done.append(s)
                names.add(s.name)
    return done


class PipelineController(ReconcileLoop):
    interval_s = 1.0

    def __init__(self, store: Store, open_token: Callable[[str, str], str], connect: Callable[[str], Connection],
                 start_run: Callable[[str, str], object], revoke: Callable[[str], None]) -> None:
        super().__init__()
        self.store = store
        self._open_token, self._connect, self._start_run, self._revoke = open_token, connect, start_run, revoke

    # -- the pass ----------------------------------------------------------------------------
    def tick(self) -> None:
        with self._lock:
            try:
                self._fire_triggers()
            except Exception:  # triggers must never stop the runs (nor the leader's start)
                log.exception("pipeline triggers: pass failed")
            with self.store.session() as s:
                runs = s.scalars(select(PipelineRunRow.id).where(
                    PipelineRunRow.status.in_(("RUNNING", "CANCELLING"))).order_by(PipelineRunRow.created_at)).all()
            for run_id in runs:
                try:
                    self.advance(run_id)
                except Exception:  # one bad run must not stop the others
                    log.exception("pipeline run %s: pass failed", run_id)

    def advance(self, run_id: str) -> None:
        """One pass over a run: each step's next move, then the run's end when every step has one."""
        with self.store.session() as s:
            run = s.get(PipelineRunRow, run_id)
            if run is None or run.status not in ("RUNNING", "CANCELLING"):
                return
            rows = {r.step: r for r in s.scalars(select(StepRunRow).where(StepRunRow.run_id == run_id))}
            s.expunge_all()
        before = {name: (r.status, r.reason, r.job, json.dumps(r.outputs, sort_keys=True)) for name, r in rows.items()}
        try:
            spec = PipelineSpec.model_validate(run.spec)
            conn = self._connect(self._open_token(run.token_sealed or "", token_purpose(run.id)))
        except TransportError:
            return  # the server's own URL is not answering yet (it is starting): next pass
        except (FermionError, ValueError) as exc:  # no token to act with, or a spec this version cannot read
            why = exc.message if isinstance(exc, FermionError) else str(exc)
            for row in rows.values():
                if row.status not in DONE:
                    _end(row, "CANCELLED" if run.status == "CANCELLING" else "FAILED", f"the run cannot act: {why}")
            self._write(run, rows, before)
            return
        try:
            for step in order(spec):
                row = rows[step.name]
                if row.status in DONE:
                    continue
                try:
                    if run.status == "CANCELLING":
                        self._cancel_step(conn, step, row)
                    elif row.status == "RUNNING":
                        self._poll(conn, run, step, row, rows)
                    else:
                        self._maybe_start(conn, run, spec, step, row, rows)
                except TransportError:
                    continue  # the step's state is unknown, not failed: asked again next pass
                except RemoteError as exc:
                    if exc.status >= 500 or exc.status == 429:
                        continue
                    _end(row, "FAILED", exc.server_message)
                except FermionError as exc:
                    _end(row, "FAILED", exc.message)
                except (ValueError, TypeError, KeyError) as exc:  # a with: value of the wrong kind
                    _end(row, "FAILED", f"step {step.name}: {type(exc).__name__}: {exc}")
        finally:
            conn.close()
        self._write(run, rows, before)

    def _write(self, run: PipelineRunRow, rows: dict[str, StepRunRow], before: dict[str, tuple]) -> None:
        now = time.time()
        token_id = None
        with self.store.session() as s:
            for name, r in rows.items():
                if (r.status, r.reason, r.job, json.dumps(r.outputs, sort_keys=True)) != before[name]:
                    if r.status != before[name][0]:
                        self.store.record(s, "pipeline", run.pipeline, before[name][0], r.status,
                                          f"run {run.number}, step {name}: {r.reason}")
                    s.merge(r)
            if all(r.status in DONE for r in rows.values()):
                live = s.get(PipelineRunRow, run.id, with_for_update=True)  # a cancel may be landing now
                if live is not None and live.status in ("RUNNING", "CANCELLING"):
                    bad = [r for r in rows.values() if r.status not in GOOD]
                    if live.status == "CANCELLING":
                        status, reason = "CANCELLED", "cancelled"
                    elif not bad:
                        cached = sum(r.status == "CACHED" for r in rows.values())
                        status, reason = "SUCCEEDED", f"{len(rows)} steps done" + (f", {cached} of them cached" if cached else "")
                    else:
                        first = next((r for r in bad if r.status == "FAILED"), bad[0])
                        status, reason = "FAILED", f"step {first.step} {first.status.lower()}: {first.reason}"
                    self.store.record(s, "pipeline", run.pipeline, live.status, status, f"run {run.number}: {reason}")
                    live.status, live.reason, live.ended_at, live.updated_at = status, reason, now, now
                    token_id, live.token_sealed = live.token_id, None
        if token_id:  # after the write: the run's token is of no more use
            self._revoke(token_id)

    # -- deciding a step's move ------------------------------------------------------------------
    def _maybe_start(self, conn: Connection, run: PipelineRunRow, spec: PipelineSpec, step: StepSpec,
                     row: StepRunRow, rows: dict[str, StepRunRow]) -> None:
        needs = [rows[a] for a in step.after]
        stopped = next((r for r in needs if r.status in ("FAILED", "BLOCKED", "CANCELLED")), None)
        if stopped is not None:
            _end(row, "BLOCKED", f"not run: step {stopped.step} {stopped.status.lower()}"
                 + (f" ({stopped.reason})" if stopped.status != "BLOCKED" else ""))
            return
        if not all(r.status in GOOD for r in needs):
            return
        if step.kind in COMPUTE_KINDS:
            row.input_hash = self._input_hash(conn, step, rows)
            earlier = self._cached(run, step.name, row.input_hash)
            if earlier is not None and earlier[0].outputs.get("model"):
                try:  # a cached step's model must still be there for the steps after it
                    conn.models.get(str(earlier[0].outputs["model"]))
                except NotFoundError:
                    earlier = None
            if earlier is not None:
                row.outputs, row.cached_from, row.cloud, row.job = dict(earlier[0].outputs), earlier[0].run_id, \
                    earlier[0].cloud, earlier[0].job
                _end(row, "CACHED", f"inputs unchanged since run {earlier[1]}: its outputs are reused")
                return
            self._start_job(conn, run, step, row, rows)
        elif step.kind == "gate":
            self._gate(conn, step, row, rows)
        elif step.kind == "deploy":
            self._deploy(conn, run, step, row, rows)
        elif step.kind == "promote":
            ref = _resolve(step.with_.get("model"), rows, step)
            m = conn.models.promote(ref, str(step.with_.get("stage", "production")))
            row.outputs = {"model": m.ref, "stage": m.stage}
            _end(row, "SUCCEEDED", f"{m.ref} is now {m.stage}")

    def _input_hash(self, conn: Connection, step: StepSpec, rows: dict[str, StepRunRow]) -> str:
        """What decides a step's outputs: its own definition, the versions of the datasets it reads
        (resolved now: 'latest' moves), and what the steps before it produced."""
        named = [str(v).removeprefix("dataset:").split("/")[0] for v in step.with_.values()
                 if isinstance(v, str) and v.startswith("dataset:")]  # a fine-tune's train_data, say
        datasets = {ref: conn.datasets.version(ref).digest for ref in dict.fromkeys([*step.datasets, *named])}
        # what came before, by identity: the job that made it and the model it registered (its metrics
        # may carry timings, which would make every run look new)
        upstream = {a: {k: rows[a].outputs.get(k) for k in ("job", "model", "deployment")} for a in step.after}
        body = {"definition": step.model_dump(by_alias=True, exclude={"after", "retries", "estimate", "clouds",
                                                                     "resources"}),
                "datasets": datasets, "upstream": upstream}
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()

    def _cached(self, run: PipelineRunRow, step: str, input_hash: str) -> tuple[StepRunRow, int] | None:
        with self.store.session() as s:
            hit = s.execute(select(StepRunRow, PipelineRunRow.number).join(
                PipelineRunRow, PipelineRunRow.id == StepRunRow.run_id).where(
                PipelineRunRow.pipeline == run.pipeline, StepRunRow.step == step, StepRunRow.input_hash == input_hash,
                StepRunRow.status.in_(GOOD), StepRunRow.run_id != run.id).order_by(
                PipelineRunRow.number.desc()).limit(1)).first()
            if hit is None:
                return None
            s.expunge(hit[0])
            return hit[0], hit[1]

    # -- acting ------------------------------------------------------------------------------
    def _start_job(self, conn: Connection, run: PipelineRunRow, step: StepSpec, row: StepRunRow,
                   rows: dict[str, StepRunRow]) -> None:
        name = job_name(run.pipeline, step.name, run.number)
        # what came before, by name: e.g. the model an evaluation should load
        models = {_env_name(a): str(rows[a].outputs["model"]) for a in step.after if rows[a].outputs.get("model")}
        spec: dict[str, Any] = {"name": name, "resources": step.resources, "clouds": step.clouds,
                                "max_restarts": step.retries, "project": run.project, "env": dict(step.env),
                                "datasets": step.datasets,
                                "pipeline": {"name": run.pipeline, "run": run.number, "step": step.name,
                                             "models": models}}
        if run.plan.get(step.name):
            spec["prefer"] = run.plan[step.name]
        if step.code:
            spec["code"] = step.code
        settings = {k: _resolve(v, rows, step) if isinstance(v, str) and v.startswith("step:") else v
                    for k, v in step.with_.items()}
        model_name = settings.pop("model_name", None)
        if model_name:
            spec["model_name"] = model_name
        if step.kind == "finetune":
            spec["finetune"] = settings
        elif step.kind == "compress":
            spec["compress"] = settings
        else:
            spec["command"] = step.command
        try:
            job = conn.jobs.submit(spec)
        except ConflictError as exc:
            if "exists" not in exc.message:
                raise
            try:  # a pass that died after submitting: ours, if made since the run began
                theirs = conn.jobs.get(name)
                ours = theirs.created_at >= run.created_at and theirs.project == run.project
            except NotFoundError:  # another project's job holds the name (job names are global): hidden from us
                ours = False
            if ours:
                job = theirs
            else:
                # another job has the name (a deleted pipeline's of the same name): this run's own instead
                spec["name"] = job_name(run.pipeline, step.name, run.number, run.id)
                try:
                    job = conn.jobs.submit(spec)
                except ConflictError as again:  # a pass that died after submitting this one: it is ours
                    if "exists" not in again.message:
                        raise
                    job = conn.jobs.get(spec["name"])
        row.job, row.started_at, row.status = job.name, time.time(), "RUNNING"
        row.reason = f"job {job.name}" + (f", placed on {run.plan[step.name]}" if run.plan.get(step.name) else "")

    def _poll(self, conn: Connection, run: PipelineRunRow, step: StepSpec, row: StepRunRow,
              rows: dict[str, StepRunRow]) -> None:
        if step.kind == "deploy":
            self._poll_deploy(conn, step, row)
            return
        job = conn.jobs.get(row.job)
        if job.attempts:
            row.cloud = job.attempts[-1].cloud or row.cloud
        if job.status == "SUCCEEDED":
            metrics: dict[str, Any] = {}
            for m in job.metrics:  # the last word on each metric
                metrics.update({k: v for k, v in m.items() if isinstance(v, int | float | str)})
            if job.result and isinstance(job.result.get("metrics"), dict):
                metrics.update(job.result["metrics"])
            row.outputs = {"job": job.name, "result": job.result or {}, "metrics": metrics,
                           **({"model": job.result["model"]} if job.result and job.result.get("model") else {})}
            _end(row, "SUCCEEDED", f"job {job.name} succeeded on {row.cloud}"
                 + (f"; registered {job.result['model']}" if row.outputs.get("model") else ""))
        elif job.status in ("FAILED", "CANCELLED"):
            _end(row, "FAILED", f"job {job.name} {job.status.lower()}: {job.reason}")

    def _gate(self, conn: Connection, step: StepSpec, row: StepRunRow, rows: dict[str, StepRunRow]) -> None:
        w = step.with_
        metric = w.get("metric")
        if not metric:
            raise UserInputError(f"gate {step.name} names no metric", hint="with: {metric: accuracy, at_least: 0.8}")
        source = w.get("of") or next((a for a in reversed(step.after) if rows[a].outputs.get("metrics")), None)
        if source not in rows:
            raise UserInputError(f"gate {step.name}: no step before it reported metrics", hint="with: {of: STEP}")
        reported = rows[source].outputs.get("metrics") or {}
        if metric not in reported:
            raise UserInputError(f"gate {step.name}: step {source} reported no {metric!r} "
                                 f"(it reported: {', '.join(sorted(reported)) or 'nothing'})")
        value = float(reported[metric])
        margin = float(w.get("margin", 0.0))
        bar = w.get("at_least")
        if w.get("above") is not None:
            other = str(w["above"])
            if other not in reported:
                raise UserInputError(f"gate {step.name}: step {source} reported no {other!r} to compare with")
            threshold, against = float(reported[other]), f"{other} {float(reported[other]):.4f}"
        elif bar == "production":
            model = str(w.get("model_name") or str(rows[source].outputs.get("model", "")).split(":")[0])
            if not model:
                raise UserInputError(f"gate {step.name}: which model's production version? step {source} registered "
                                     "none", hint="with: {model_name: NAME}")
            live = [m for m in conn.models() if m.name == model and m.stage == "production"]
            if not live or metric not in live[-1].metrics:
                row.outputs = {"metric": metric, "value": value, "threshold": None, "held": True}
                _end(row, "SUCCEEDED", f"{metric} {value:.4f}: no production version of {model or 'the model'} "
                                       "with that metric yet, nothing to beat")
                return
            threshold, against = float(live[-1].metrics[metric]), f"production {live[-1].ref}'s {float(live[-1].metrics[metric]):.4f}"
        elif isinstance(bar, int | float):
            threshold, against = float(bar), f"{float(bar):g}"
        else:
            raise UserInputError(f"gate {step.name}: at_least must be a number or 'production', or give above: METRIC")
        held = value >= threshold + margin
        row.outputs = {"metric": metric, "value": value, "threshold": threshold + margin, "held": held}
        words = f"{metric} {value:.4f} {'≥' if held else '<'} {against}" + (
            f" + {margin:g}" if margin > 0 else f" − {-margin:g}" if margin < 0 else "")
        _end(row, "SUCCEEDED" if held else "FAILED", f"held: {words}" if held else f"did not hold: {words}")

    def _deploy(self, conn: Connection, run: PipelineRunRow, step: StepSpec, row: StepRunRow,
                rows: dict[str, StepRunRow]) -> None:
        w = step.with_
        name = str(w.get("deployment") or run.pipeline)
        photon = w.get("photon_sha")
        if not photon:
            raise UserInputError(f"deploy {step.name} has no photon archive", hint="run the pipeline with "
                                 "`fermion pipeline run`, which builds and sends the photon it names")
        env = dict(w.get("env") or {})
        model = _resolve(w.get("model"), rows, step) if w.get("model") else None
        if model:
            env["FERMION_MODEL"] = model
        try:
            current = conn.deployment(name).get()
        except NotFoundError:
            current = None
        # what the step does not set stays as the deployment has it (its scale, clouds, autoscaler, ...)
        kept = {k: getattr(current, k) for k in ("replicas", "public", "clouds", "autoscale", "spot", "placement",
                                                  "resources")} if current is not None else {}
        body: dict[str, Any] = {"photon": photon, "env": env, "project": run.project,
                                "replicas": int(w.get("replicas", kept.get("replicas", 1))),
                                "public": bool(w.get("public", kept.get("public", False))),
                                "clouds": list(w.get("clouds", kept.get("clouds")) or [])}
        for key in ("resources", "rate_limit", "autoscale", "spot", "placement"):
            value = w.get(key, kept.get(key))
            if value:
                body[key] = value
        if current is not None and w.get("canary"):
            body["canary"] = {"weight": int(w["canary"]), "replicas": int(w.get("canary_replicas", 1)),
                              "window_s": float(w.get("canary_window_s", 60)),
                              "min_requests": int(w.get("canary_min_requests", 50)), "auto": True}
        try:
            out = conn.deployments.apply(name, body)
        except FermionError as exc:
            if "nothing to canary" not in exc.message:
                raise
            row.outputs = {"deployment": name, "model": model, "generation": current.generation if current else 0}
            _end(row, "SUCCEEDED", f"{name} serves this version already")
            return
        row.job, row.started_at, row.status = name, time.time(), "RUNNING"
        canary = (out.canary or {}).get("generation") if body.get("canary") else None
        row.outputs = {"deployment": name, "model": model, "generation": out.generation, "canary_generation": canary}
        row.reason = (f"canary generation {canary} of {name} takes {body['canary']['weight']}% of the traffic"
                      if canary else f"deploying generation {out.generation} of {name}")

    def _poll_deploy(self, conn: Connection, step: StepSpec, row: StepRunRow) -> None:
        d = conn.deployment(row.job).get()
        row.cloud = ",".join(sorted(d.placed))
        canary = row.outputs.get("canary_generation")
        timeout = float(step.with_.get("timeout_s", DEPLOY_TIMEOUT_S))
        if canary:
            if d.canary and d.canary.get("generation") == canary:
                pass  # still judged
            elif d.generation == canary:
                _end(row, "SUCCEEDED", f"canary generation {canary} of {row.job} promoted")
                return
            else:
                why = next((e.reason for e in reversed(conn.deployment(row.job).events(limit=20))
                            if "roll" in e.reason or "regress" in e.reason), "rolled back")
                _end(row, "FAILED", f"canary generation {canary} of {row.job} rolled back: {why}")
                return
        elif d.status == "FAILED":
            _end(row, "FAILED", f"{row.job} FAILED: {d.last_error or d.status_reason}")
            return
        elif d.status == "READY" and d.generation >= int(row.outputs.get("generation", 0)) and d.ready >= d.replicas:
            _end(row, "SUCCEEDED", f"{row.job} serves generation {d.generation} on {row.cloud or 'its clouds'}")
            return
        if row.started_at and time.time() - row.started_at > timeout:
            self._roll_back(conn, row)
            _end(row, "FAILED", f"{row.job} did not settle within {timeout:g}s: {d.status} ({d.status_reason})"
                 + ("; its canary was rolled back" if canary else ""))

    def _cancel_step(self, conn: Connection, step: StepSpec, row: StepRunRow) -> None:
        """Stop what the step runs (its job; a deploy's canary rolls back), then mark it CANCELLED."""
        if row.status == "RUNNING" and step.kind == "deploy":
            self._roll_back(conn, row)
        elif row.status == "RUNNING" and row.job:
            try:
                conn.jobs.cancel(row.job)
            except ConflictError:
                pass  # it ended meanwhile
        _end(row, "CANCELLED", "the run was cancelled")

    @staticmethod
    def _roll_back(conn: Connection, row: StepRunRow) -> None:
        """A deploy step that ends undecided takes its canary back: it must not win later, unwatched."""
        canary = row.outputs.get("canary_generation")
        if canary:
            d = conn.deployment(row.job).get()
            if d.canary and d.canary.get("generation") == canary:
                conn.deployment(row.job).rollback()

    # -- triggers ----------------------------------------------------------------------------
    def _fire_triggers(self) -> None:
        with self.store.session() as s:
            pipelines = [p for p in s.scalars(select(PipelineRow)).all() if p.spec.get("triggers")]
            busy = set(s.scalars(select(PipelineRunRow.pipeline).where(
                PipelineRunRow.status.in_(("RUNNING", "CANCELLING")))).all())
            s.expunge_all()
        now = time.time()
        for p in pipelines:
            if p.name in busy:
                continue  # one run at a time: a trigger that fires meanwhile waits for it
            try:
                self._fire(p, now)
            except Exception:  # one pipeline's bad trigger must not stop the others'
                log.exception("pipeline %s: trigger failed", p.name)

    def _fire(self, p: PipelineRow, now: float) -> None:
        state = dict(p.trigger_state or {})
        reason = None
        for trigger in PipelineSpec.model_validate(p.spec).triggers:
            if trigger.dataset:
                key = f"dataset:{trigger.dataset}"
                latest = self._latest_version(trigger.dataset, p.project)
                if latest is not None and latest > int(state.get(key, 0)):
                    state[key] = latest
                    reason = reason or f"version {latest} of dataset {trigger.dataset} appeared"
            elif trigger.cron:
                key = f"cron:{trigger.cron}"
                last = float(state.get(key, p.created_at))
                if next_fire(trigger.cron, last) <= now:
                    state[key] = now
                    reason = reason or f"cron {trigger.cron!r}"
        if reason is None:
            return
        try:
            self._start_run(p.name, reason)
        except FermionError as exc:
            log.warning("pipeline %s: trigger (%s) could not start a run: %s", p.name, reason, exc.message)
            if not isinstance(exc, ConflictError) or "under way" in exc.message:
                return  # tried again next pass
            with self.store.session() as s:
                self.store.record(s, "pipeline", p.name, "registered", "registered",
                                  f"trigger ({reason}) started no run: {exc.message}")
        with self.store.session() as s:  # seen only once it started a run (or never can)
            row = s.get(PipelineRow, p.name)
            if row is not None:
                row.trigger_state = {**(row.trigger_state or {}), **state}

    def _latest_version(self, dataset: str, project: str) -> int | None:
        """The newest version number of the pipeline's project's dataset (another project's is not its)."""
        from ..store import DatasetRow, DatasetVersionRow

        with self.store.session() as s:
            row = s.get(DatasetRow, dataset)
            if row is None or row.project != project:
                return None
            return s.scalar(select(func.max(DatasetVersionRow.number)).where(DatasetVersionRow.dataset == dataset))


def _end(row: StepRunRow, status: str, reason: str) -> None:
    row.status, row.reason, row.ended_at = status, reason, time.time()


def _env_name(step: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", step.upper())


def _resolve(value: object, rows: dict[str, StepRunRow], step: StepSpec) -> str:
    """A model reference: NAME:VERSION as given, or step:NAME for the model that step registered."""
    text = str(value or "")
    if not text.startswith("step:"):
        if not text:
            raise UserInputError(f"step {step.name} names no model", hint="with: {model: step:train} or NAME:VERSION")
        return text
    source = text.removeprefix("step:")
    if source not in rows:
        raise UserInputError(f"step {step.name}: {text} is not a step of the pipeline")
    model = rows[source].outputs.get("model")
    if not model:
        raise UserInputError(f"step {step.name}: step {source} registered no model")
    return str(model)
