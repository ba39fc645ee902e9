"""/api/v1/pipelines: register pipelines, plan where their steps run (``alpha * time + beta *
cost``), start runs (by hand or by trigger), and read their steps and logs."""

from __future__ import annotations

import math
import time
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from ..control import token_purpose
from ..errors import ConflictError, NotFoundError, UserInputError, shorten
from ..pipelines import DEFAULT_HOURS, PipelineSpec, StepSpec, parse_pipeline
from ..placement import DataInput, PipelinePlan, Site, StepNeed, place_pipeline
from ..security import hash_token, new_token
from ..store import DatasetRow, DatasetVersionRow, MembershipRow, PipelineRow, PipelineRunRow, StepRunRow, TokenRow, UserRow
from ._auth import caller, require_token
from ._datasets import dataset_input
from ._principal import Principal, require_project
from ._schemas import ERROR_RESPONSES

router = APIRouter(prefix="/api/v1", responses=ERROR_RESPONSES, dependencies=[Depends(require_token)])
EXHAUSTIVE_MAX = 100_000  # assignments an exhaustive search may try
RUN_TOKEN_DAYS = 7  # a run's token outlives no run that long


class PlanRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pipeline: dict[str, Any] = Field(description="the pipeline, as its YAML reads")
    alpha: float | None = Field(None, ge=0, le=1e6, description="default: the pipeline's")
    beta: float | None = Field(None, ge=0, le=1e6, description="default: the pipeline's")
    method: Literal["auto", "dp", "ilp", "exhaustive"] = "auto"
    transfer_gb_per_hour: float = Field(360.0, gt=0, le=1e9, description="between two clouds' stores")


class RegisterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pipeline: dict[str, Any] = Field(description="the pipeline, with each workdir sent as code and each photon uploaded")


@router.post("/pipelines/plan")
def plan_pipeline(request: Request, body: PlanRequest) -> dict[str, Any]:
    """A cloud for each compute step (the gates, deploys and promotions run on the server), with the
    completion time, the cost (machine hours and egress of the data each step fetches) and why."""
    p, me = request.app.state.platform, caller(request)
    spec = parse_pipeline(body.pipeline)
    plan, estimates = place(p, spec, me, body.alpha, body.beta, body.method, body.transfer_gb_per_hour)
    return {"pipeline": spec.name, "plan": plan.model_dump(), "estimates": estimates,
            "server_steps": [s.name for s in spec.steps if not s.compute], "explanation": plan.explain()}


def place(p, spec: PipelineSpec, me: Principal, alpha: float | None = None, beta: float | None = None,  # noqa: ANN001
          method: str = "auto", rate: float = 360.0) -> tuple[PipelinePlan, dict[str, str]]:
    """The placement of ``spec``'s compute steps over the server's clouds, and where each step's
    hours came from."""
    sites = [Site(name=name, price_per_hour=config.prices()[0], speed=config.speed,
                  egress_per_gb=config.egress_per_gb(), healthy=p.scheduler.healthy(name))
             for name, config in sorted(p.configs.items())]
    needs, estimates = [], {}
    for step in spec.steps:
        if not step.compute:
            continue
        unknown = [c for c in step.clouds if c not in p.configs]
        if unknown:
            raise UserInputError(f"step {step.name}: no cloud named {shorten(unknown[0])!r}",
                                 hint=f"clouds: {', '.join(sorted(p.configs))}")
        cpus, memory = float(step.resources.get("cpus", 1)), float(step.resources.get("memory_gb", 1))
        fits = [c for c in (step.clouds or sorted(p.configs))
                if p.configs[c].capacity.cpus >= cpus and p.configs[c].capacity.memory_gb >= memory]
        if not fits:
            raise UserInputError(f"step {step.name} needs {cpus:g} cpus and {memory:g} GB: no allowed cloud is that big",
                                 hint="ask for less, or allow a bigger cloud")
        hours, estimates[step.name] = _hours(p, spec, step, me)
        needs.append(StepNeed(name=step.name, hours=hours, after=spec.compute_after(step),
                              inputs=[_input(p, ref, me) for ref in step.datasets],
                              output_gb=step.estimate.output_gb, clouds=fits))
    if not needs:
        raise UserInputError(f"pipeline {spec.name} has no step that runs on a cloud",
                             hint="job, finetune, eval and compress steps are placed; the others run on the server")
    if method == "exhaustive":
        tries = math.prod(len([s for s in sites if not n.clouds or s.name in n.clouds]) for n in needs)
        if tries > EXHAUSTIVE_MAX:
            raise UserInputError(f"an exhaustive search would try {tries} placements", hint="use method auto")
    plan = place_pipeline(needs, sites, alpha=spec.alpha if alpha is None else alpha,
                          beta=spec.beta if beta is None else beta, transfer_gb_per_hour=rate, method=method)
    return plan, estimates


def _input(p, ref: str, me: Principal) -> DataInput:  # noqa: ANN001
    size, clouds = dataset_input(p, ref, me)
    if not clouds:
        raise ConflictError(f"no reachable store holds {ref} now", hint="`fermion dataset verify` it, or sync it")
    return DataInput(name=ref, size_gb=size / 1e9, at=clouds)


def _hours(p, spec: PipelineSpec, step: StepSpec, me: Principal) -> tuple[float, str]:  # noqa: ANN001
    """The step's hours on a cloud of speed 1, and where that figure comes from: its spec, its last
    successful run (scaled by the speed of the cloud it ran on), or a guess."""
    if step.estimate.hours is not None:
        return step.estimate.hours, "the spec"
    with p.store.session() as s:
        last = s.execute(select(StepRunRow, PipelineRunRow.number, PipelineRunRow.project).join(
            PipelineRunRow, PipelineRunRow.id == StepRunRow.run_id).where(
            PipelineRunRow.pipeline == spec.name, StepRunRow.step == step.name, StepRunRow.status == "SUCCEEDED",
            StepRunRow.ended_at.is_not(None), StepRunRow.started_at.is_not(None)).order_by(
            PipelineRunRow.number.desc()).limit(1)).first()
    if last is not None and me.visible(last[2]) and last[0].cloud in p.configs:
        row, number, _ = last
        hours = max(0.0, row.ended_at - row.started_at) / 3600 * p.configs[row.cloud].speed
        return hours, f"run {number} (on {row.cloud})"
    return DEFAULT_HOURS, "a guess (give estimate.hours, or run it once)"


# -- registering and running ------------------------------------------------------------------
@router.post("/pipelines", status_code=201)
def register_pipeline(request: Request, body: RegisterRequest) -> dict[str, Any]:
    """Create or replace a pipeline (its runs so far stay). Its triggers count from now: a dataset's
    versions that exist already start nothing."""
    p, me = request.app.state.platform, caller(request)
    spec = parse_pipeline(body.pipeline)
    project = spec.project or me.default_project()
    now = time.time()
    with p.store.session() as s:
        require_project(s, project, me, "editor")
        row = s.get(PipelineRow, spec.name)
        if row is not None:
            me.require(row.project, "editor", NotFoundError(f"pipeline name {spec.name!r} is taken", hint="pick another"))
            if row.project != project:
                raise ConflictError(f"pipeline {spec.name!r} belongs to project {row.project!r}")
        state: dict[str, Any] = {"registered_with": me.token_id}  # its triggers act only while that token lives
        for trigger in spec.triggers:
            if trigger.dataset:
                ds = s.get(DatasetRow, trigger.dataset)
                if ds is None or ds.project != project or not me.visible(ds.project):
                    raise NotFoundError(f"no dataset named {shorten(trigger.dataset)!r} in project {project}",
                                        hint="a trigger watches a dataset of the pipeline's own project")
                latest = s.scalar(select(func.max(DatasetVersionRow.number)).where(
                    DatasetVersionRow.dataset == trigger.dataset))
                state[f"dataset:{trigger.dataset}"] = int(latest or 0)
            if trigger.cron:
                state[f"cron:{trigger.cron}"] = now
        stored = spec.model_dump(mode="json", by_alias=True)
        if row is None:
            s.add(PipelineRow(name=spec.name, project=project, owner=me.user, spec=stored, trigger_state=state,
                              created_at=now, updated_at=now))
            p.store.record(s, "pipeline", spec.name, "", "registered", f"{len(spec.steps)} steps, by {me.user}")
        else:
            row.spec, row.owner, row.updated_at = stored, me.user, now
            row.trigger_state = {**state, **{k: v for k, v in (row.trigger_state or {}).items()
                                             if k in state and k != "registered_with"}}
            p.store.record(s, "pipeline", spec.name, "registered", "registered", f"replaced by {me.user}")
    return pipeline_out(p, spec.name, me)


@router.get("/pipelines")
def list_pipelines(request: Request) -> list[dict[str, Any]]:
    p, me = request.app.state.platform, caller(request)
    with p.store.session() as s:
        names = [r.name for r in s.scalars(select(PipelineRow).order_by(PipelineRow.name)) if me.visible(r.project)]
    return [pipeline_out(p, n, me) for n in names]


@router.get("/pipelines/{name}")
def get_pipeline(request: Request, name: str) -> dict[str, Any]:
    return pipeline_out(request.app.state.platform, name, caller(request))


@router.delete("/pipelines/{name}")
def delete_pipeline(request: Request, name: str) -> dict[str, Any]:
    """Forget a pipeline and its runs (what they made stays: jobs, models, deployments)."""
    p, me = request.app.state.platform, caller(request)
    with p.store.session() as s:
        row = _pipeline(s, name, me, "editor")
        # a write first: the row locked (PostgreSQL), the database's write lock taken (SQLite), so no
        # run can start between the look at its runs below and the delete (see _write_run)
        s.execute(update(PipelineRow).where(PipelineRow.name == name).values(updated_at=time.time())
                  .execution_options(synchronize_session=False))
        runs = s.execute(select(PipelineRunRow.id, PipelineRunRow.number, PipelineRunRow.status)
                         .where(PipelineRunRow.pipeline == name)).all()
        active = [number for _, number, status in runs if status in ("RUNNING", "CANCELLING")]
        if active:
            raise ConflictError(f"pipeline {name!r} has a run under way (run {active[0]}): it is not deleted",
                                hint=f"`fermion pipeline cancel {name}`, then delete it once the run has ended")
        ids = [run_id for run_id, _, _ in runs]
        # statements, in foreign-key order: the session's unit of work knows no relationship between
        # these rows, so deleting them as objects could send a run's DELETE before its steps' (a 500)
        if ids:
            s.execute(delete(StepRunRow).where(StepRunRow.run_id.in_(ids)).execution_options(synchronize_session=False))
            s.execute(delete(PipelineRunRow).where(PipelineRunRow.id.in_(ids))
                      .execution_options(synchronize_session=False))
        s.delete(row)
        p.store.record(s, "pipeline", name, "registered", "deleted", f"by {me.user}, with {len(ids)} run(s)")
    return {"deleted": name, "runs_deleted": len(runs)}


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field("", max_length=200, description="why, for the run's record")


@router.post("/pipelines/{name}/runs", status_code=201)
def run_pipeline(request: Request, name: str, body: RunRequest) -> dict[str, Any]:
    """Start a run on the pipeline's current spec; the controller takes it from there."""
    p, me = request.app.state.platform, caller(request)
    with p.store.session() as s:
        _pipeline(s, name, me, "editor")
    p.require_leader("start a pipeline run")
    why = f"started by {me.user}" + (f": {body.reason}" if body.reason else "")
    number = start_run(p, name, why, starter=me.user)
    return run_out(p, name, str(number), me)


def start_run(p, name: str, trigger: str, starter: str | None = None) -> int:  # noqa: ANN001
    """A new run of pipeline ``name``: its steps PENDING, its placement decided now, and a token for
    the controller to act with in the pipeline's project: as ``starter`` (who asked for the run), or,
    for a trigger, as the pipeline's owner while the token it was registered with lives. Returns its
    number."""
    with p.store.session() as s:
        row = s.get(PipelineRow, name)
        if row is None:
            raise NotFoundError(f"no pipeline named {shorten(name)!r}", hint="see `fermion pipeline list`")
        if s.scalars(select(PipelineRunRow.id).where(PipelineRunRow.pipeline == name,
                                                     PipelineRunRow.status.in_(("RUNNING", "CANCELLING")))).first():
            raise ConflictError(f"pipeline {name!r} has a run under way", hint="wait for it, or cancel it")
        spec, stored, project = PipelineSpec.model_validate(row.spec), dict(row.spec), row.project
        if starter is None:  # a trigger: the owner's rights, only while the token that registered it is live
            registered = s.get(TokenRow, str((row.trigger_state or {}).get("registered_with") or ""))
            if registered is None or registered.revoked_at is not None or \
                    (registered.expires_at is not None and registered.expires_at <= time.time()):
                raise ConflictError(f"pipeline {name!r} was registered with a token that is revoked or expired: its "
                                    "triggers start nothing", hint="register it again (`fermion pipeline run FILE`)")
        owner = _principal(s, starter or row.owner, project)
        if not owner.can(project, "editor"):
            raise ConflictError(f"{owner.user} is no longer an editor of project {project}: the run could do nothing",
                                hint="register the pipeline again as an editor")
        number = (s.scalar(select(func.max(PipelineRunRow.number)).where(PipelineRunRow.pipeline == name)) or 0) + 1
    try:
        plan, _ = place(p, spec, owner)
        assignment = plan.assignment if plan.feasible else {}
    except (UserInputError, NotFoundError, ConflictError):  # e.g. a dataset with no version yet: the step will say
        assignment = {}
    token = new_token("fmt")
    try:
        return _write_run(p, name, number, project, stored, spec, assignment, owner, token, trigger)
    except IntegrityError:  # another start took this number first
        raise ConflictError(f"pipeline {name!r} has a run under way", hint="wait for it, or cancel it") from None


def _write_run(p, name: str, number: int, project: str, stored: dict[str, Any], spec: PipelineSpec,  # noqa: ANN001
               assignment: dict[str, str], owner: Principal, token: str, trigger: str) -> int:
    with p.store.session() as s:
        t = TokenRow(name=f"pipeline {name} run {number}", token_hash=hash_token(token), role="editor",
                     user=owner.user, project=project, expires_at=time.time() + RUN_TOKEN_DAYS * 86400)
        s.add(t)
        s.flush()
        # after a write (SQLite: inside the write lock) and locking the row (PostgreSQL): a delete that
        # came first leaves no pipeline, and one that comes after sees this run under way
        if s.scalars(select(PipelineRow.name).where(PipelineRow.name == name).with_for_update()).first() is None:
            raise NotFoundError(f"no pipeline named {shorten(name)!r}", hint="it was deleted just now")
        run = PipelineRunRow(pipeline=name, number=number, project=project, status="RUNNING", reason="started",
                             trigger=trigger, spec=stored, plan=assignment, token_id=t.id)
        s.add(run)
        s.flush()
        run.token_sealed = p.secrets.seal(token, token_purpose(run.id))
        for step in spec.steps:
            s.add(StepRunRow(run_id=run.id, step=step.name, status="PENDING", reason="waiting"))
        p.store.record(s, "pipeline", name, "", "RUNNING", f"run {number}: {trigger}")
    p.pipelines.nudge()
    return number


def _principal(s, user: str, project: str) -> Principal:  # noqa: ANN001
    """The pipeline's owner as an editor of its project: what its runs may see and do."""
    row = s.get(UserRow, user)
    if row is None:
        raise ConflictError(f"the pipeline's owner {user!r} no longer exists", hint="register it again")
    memberships = {m.project: m.role for m in s.scalars(select(MembershipRow).where(MembershipRow.user == user))}
    return Principal("", "pipeline", user, row.admin, project, "editor", memberships)


@router.get("/pipelines/{name}/runs")
def list_runs(request: Request, name: str) -> list[dict[str, Any]]:
    p, me = request.app.state.platform, caller(request)
    with p.store.session() as s:
        _pipeline(s, name, me)
        numbers = s.scalars(select(PipelineRunRow.number).where(PipelineRunRow.pipeline == name)
                            .order_by(PipelineRunRow.number)).all()
    return [run_out(p, name, str(n), me) for n in numbers]


@router.get("/pipelines/{name}/runs/{ref}")
def get_run(request: Request, name: str, ref: str) -> dict[str, Any]:
    """A run (a number, or latest) with each step's state, reason, job, cloud and outputs."""
    return run_out(request.app.state.platform, name, ref, caller(request))


@router.post("/pipelines/{name}/runs/{ref}/cancel")
def cancel_run(request: Request, name: str, ref: str) -> dict[str, Any]:
    p, me = request.app.state.platform, caller(request)
    with p.store.session() as s:
        _pipeline(s, name, me, "editor")
        run = _run(s, name, ref)
        if run.status != "RUNNING":
            raise ConflictError(f"run {run.number} of {name} is {run.status}", hint="only a running run can be cancelled")
        run.status, run.updated_at = "CANCELLING", time.time()
        p.store.record(s, "pipeline", name, "RUNNING", "CANCELLING", f"run {run.number}: cancelled by {me.user}")
        number = run.number
    p.pipelines.nudge()
    return run_out(p, name, str(number), me)


@router.get("/pipelines/{name}/runs/{ref}/logs")
def run_logs(request: Request, name: str, ref: str, tail: int = 100) -> dict[str, dict[str, str]]:
    """Each step's job logs (per attempt), by step."""
    from ._jobs import job_log_texts

    from ..store import JobRow

    p, me = request.app.state.platform, caller(request)
    out = run_out(p, name, ref, me)
    jobs = [step for step in out["steps"] if step["job"] and step["kind"] in ("job", "eval", "finetune", "compress")]
    with p.store.session() as s:  # a step's job, of the pipeline's own project (never another's of that name)
        ours = {j.name for j in s.scalars(select(JobRow).where(JobRow.name.in_([x["job"] for x in jobs])))
                if j.project == out["project"]}
    return {step["step"]: job_log_texts(p, step["job"], tail) for step in jobs if step["job"] in ours}


# -- reading ----------------------------------------------------------------------------------
def _pipeline(s, name: str, me: Principal, role: str = "viewer") -> PipelineRow:  # noqa: ANN001
    row = s.get(PipelineRow, name)
    hidden = NotFoundError(f"no pipeline named {shorten(name)!r}", hint="see `fermion pipeline list`")
    if row is None:
        raise hidden
    me.require(row.project, role, hidden)
    return row


def _run(s, name: str, ref: str) -> PipelineRunRow:  # noqa: ANN001
    q = select(PipelineRunRow).where(PipelineRunRow.pipeline == name)
    if ref == "latest":
        run = s.scalars(q.order_by(PipelineRunRow.number.desc()).limit(1)).first()
    elif ref.isdigit():
        run = s.scalars(q.where(PipelineRunRow.number == int(ref))).first()
    else:
        raise UserInputError(f"invalid run {shorten(ref)!r}", hint="a run number, or latest")
    if run is None:
        raise NotFoundError(f"pipeline {name} has no run {shorten(ref)}", hint="`fermion pipeline run` it first")
    return run


def pipeline_out(p, name: str, me: Principal) -> dict[str, Any]:  # noqa: ANN001
    with p.store.session() as s:
        row = _pipeline(s, name, me)
        last = s.scalars(select(PipelineRunRow).where(PipelineRunRow.pipeline == name)
                         .order_by(PipelineRunRow.number.desc()).limit(1)).first()
        runs = s.scalar(select(func.count()).select_from(PipelineRunRow).where(PipelineRunRow.pipeline == name))
        spec = row.spec if me.can(row.project, "editor") else _masked(row.spec)
        return {"name": row.name, "project": row.project, "owner": row.owner, "spec": spec,
                "steps": len(row.spec.get("steps", [])), "triggers": row.spec.get("triggers", []),
                "trigger_state": row.trigger_state, "runs": runs or 0,
                "last_run": {"number": last.number, "status": last.status, "reason": last.reason,
                             "created_at": last.created_at} if last else None,
                "created_at": row.created_at, "updated_at": row.updated_at}


def run_out(p, name: str, ref: str, me: Principal) -> dict[str, Any]:  # noqa: ANN001
    with p.store.session() as s:
        _pipeline(s, name, me)
        run = _run(s, name, ref)
        steps = {r.step: r for r in s.scalars(select(StepRunRow).where(StepRunRow.run_id == run.id))}
        kinds = {st["name"]: st.get("kind", "job") for st in run.spec.get("steps", [])}
        return {"pipeline": name, "project": run.project, "number": run.number, "status": run.status,
                "reason": run.reason,
                "trigger": run.trigger, "plan": run.plan, "created_at": run.created_at, "ended_at": run.ended_at,
                "steps": [{"step": st["name"], "kind": kinds[st["name"]], "after": st.get("after", []),
                           "status": steps[st["name"]].status, "reason": steps[st["name"]].reason,
                           "job": steps[st["name"]].job, "cloud": steps[st["name"]].cloud,
                           "outputs": steps[st["name"]].outputs, "cached_from": steps[st["name"]].cached_from,
                           "started_at": steps[st["name"]].started_at, "ended_at": steps[st["name"]].ended_at}
                          for st in run.spec.get("steps", []) if st["name"] in steps]}


def _masked(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec as a viewer sees it: env values hidden (secret:NAME references shown as they are)."""
    def hide(env: object) -> object:
        if not isinstance(env, dict):
            return env
        return {k: v if isinstance(v, str) and v.startswith("secret:") else "***" for k, v in env.items()}

    steps = []
    for step in spec.get("steps", []):
        step = {**step, "env": hide(step.get("env", {}))}
        if isinstance(step.get("with"), dict) and "env" in step["with"]:
            step["with"] = {**step["with"], "env": hide(step["with"]["env"])}
        steps.append(step)
    return {**spec, "steps": steps}
