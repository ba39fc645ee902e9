"""REST API v1: jobs (commands and fine-tunes) and the model registry."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from .. import registry
from ..backends import read_untrusted
from ..errors import ConflictError, FermionError, NotFoundError, UserInputError, shorten
from ..security import env_purpose
from ..store import AttemptRow, JobRow, ModelVersionRow
from ..train import FinetuneConfig
from ..types import NAME_PATTERN
from ._auth import caller, require_token
from ._code import code_files_of
from ._principal import Principal, require_project
from ._schemas import ERROR_RESPONSES, Resources

router = APIRouter(prefix="/api/v1", responses=ERROR_RESPONSES, dependencies=[Depends(require_token)])


class JobSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(pattern=NAME_PATTERN)
    command: list[str] = Field(default_factory=list)
    resources: Resources = Field(default_factory=Resources)
    clouds: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    workers: int = Field(1, ge=1, le=64)
    spot: bool = Field(False, description="run on spot capacity where a cloud sells it; preemptions resume")
    max_restarts: int = Field(2, ge=0, le=100)
    finetune: dict[str, Any] | None = Field(None, description="FinetuneConfig fields; makes this a fine-tune job")
    compress: dict[str, Any] | None = Field(None, description="model (NAME:VERSION), method and its settings; "
                                            "makes this a compression job (see `fermion compress`)")
    model_name: str | None = Field(None, pattern=NAME_PATTERN, description="fine-tunes: the registry name of the result")
    datasets: list[str] = Field(default_factory=list, max_length=16,
                                description="NAME or NAME@VERSION: fetched into $FERMION_DATA_DIR/NAME on the job's cloud")
    code: str | None = Field(None, pattern="^[0-9a-f]{64}$",
                             description="the digest of code sent to POST /api/v1/code: the command runs in it")
    project: str | None = Field(None, description="default: the token's project, else the user's only one, else default")
    prefer: str | None = Field(None, pattern=NAME_PATTERN,
                               description="the cloud to try first (a pipeline's placement); others if it has no room")
    pipeline: dict[str, Any] | None = Field(None, description="the pipeline run that started it: name, run, step")


def _platform(request: Request):  # noqa: ANN202
    return request.app.state.platform


@router.post("/jobs", status_code=201)
def create_job(request: Request, spec: JobSpec) -> dict[str, Any]:
    p = _platform(request)
    me = caller(request)
    project = spec.project or me.default_project()
    unknown = [c for c in spec.clouds if c not in p.clouds]
    if unknown:
        raise UserInputError(f"unknown cloud(s) {', '.join(unknown)}", hint=f"known: {', '.join(sorted(p.clouds))}")
    out_dir = p.home / "jobs" / spec.name / "output"
    kind, command, stored = "command", list(spec.command), {}
    code_files: set[str] = set()
    if spec.code is not None:
        with p.store.session() as s:
            require_project(s, project, me, "editor")  # before a word on what the project's stores hold
        code_files = code_files_of(p, project, spec.code)
    pinned = {ref: pin_dataset(p, me, ref) for ref in spec.datasets}
    if spec.finetune is not None and spec.compress is not None:
        raise UserInputError("a job fine-tunes or compresses, not both")
    if spec.finetune is not None:
        settings = dict(spec.finetune)
        _place_data(p, me, settings, pinned)
        base_model = None
        base = settings.get("base")
        if isinstance(base, str) and not base.startswith("/") and (":" in base or _registered(p, me, base, project)):
            base_model = pin_model(p, me, base, project)  # a registry reference: NAME:VERSION, or NAME
            # the wrapper puts a model of the stores there, on the attempt's cloud; an older one is shown read-only
            settings["base"] = str(Path(base_model["folder"]) / "encoder") if "folder" in base_model else "base/encoder"
        try:  # the output: a folder of each attempt's, on its cloud, sent to the stores when it succeeds
            cfg = FinetuneConfig.model_validate({**settings, "output_dir": "output", "checkpoint_dir": None})
        except ValueError as exc:
            raise UserInputError(f"invalid fine-tune settings: {exc}") from exc
        _check_data(cfg.model_dump(), code_files)
        if base_model is None and cfg.base is not None:
            _check_base(cfg.base, code_files)
        kind = "finetune"
        stored = {"config": cfg.model_dump(), "model_name": spec.model_name or spec.name, "outputs": "stores"}
        if base_model is not None:
            stored["base_model"] = base_model
        command = ["python", "-m", "fermion.train", "--config-env", "FERMION_FINETUNE_CONFIG"]
    elif spec.compress is not None:
        from ._compress import compress_job

        kind = "compress"
        stored, command, inherited = compress_job(p, me, spec, project, pinned)
        if inherited.get("code") and spec.code is None:  # the parent's data came with its job's code
            code_files = code_files_of(p, project, inherited["code"])
            stored["code"] = inherited["code"]
        for pin in inherited.get("datasets", []):
            pinned.setdefault(f"{pin['name']}@{pin['number']}", {**pin, "paths": set()})
        _check_data(stored["config"], code_files)
    elif not command:
        raise UserInputError("a job needs a command (after --) or fine-tune settings")
    else:  # the output: a folder of each attempt's, on its cloud, sent to the stores when it succeeds
        stored["outputs"] = "stores"
        if spec.model_name:  # what it writes under model/ becomes a version, with result.json's metrics
            stored["model_name"] = spec.model_name
    if spec.code is not None:
        stored["code"] = spec.code
    if spec.prefer is not None:
        if spec.prefer not in p.clouds:
            raise UserInputError(f"unknown cloud {spec.prefer!r}", hint=f"known: {', '.join(sorted(p.clouds))}")
        stored["prefer"] = spec.prefer
    if spec.pipeline is not None:
        stored["pipeline"] = {k: spec.pipeline.get(k) for k in ("name", "run", "step")}
        models = spec.pipeline.get("models") or {}
        if not isinstance(models, dict) or not all(
                isinstance(k, str) and re.fullmatch(r"[A-Z0-9_]{1,60}", k) and isinstance(v, str) and len(v) < 200
                for k, v in models.items()):
            raise UserInputError("pipeline.models must map STEP names (A-Z, 0-9, _) to model references")
        stored["pipeline"]["models"] = models
    if not p.public_url:  # its wrapper could send and fetch nothing
        raise UserInputError("this server has no URL its job attempts could reach it by",
                             hint="run it with `fermion server start`, which serves at that URL")
    if pinned:
        by_name: dict[str, set[str]] = {}
        for pin in pinned.values():
            by_name.setdefault(pin["name"], set()).add(pin["digest"])
        twice = next((n for n, digests in by_name.items() if len(digests) > 1), None)
        if twice is not None:
            raise UserInputError(f"dataset {twice} is asked for at two versions", hint="give the job one version of it")
        unique = {pin["name"]: pin for pin in pinned.values()}
        stored["datasets"] = [{k: v for k, v in pin.items() if k != "paths"} for pin in unique.values()]
    if spec.workers > 1 and Path(command[0]).name not in ("python", "python3"):
        raise UserInputError("--workers needs a Python command", hint="e.g. -- python train.py")
    with p.store.session() as s:
        require_project(s, project, me, "editor")
        if s.get(JobRow, spec.name) is not None:
            raise ConflictError(f"job {spec.name!r} exists", hint="pick another name or delete the old job")
        model = stored.get("model_name") or spec.model_name or spec.name
        other = s.scalars(select(ModelVersionRow.project).where(ModelVersionRow.name == model)).first()
        if (kind in ("finetune", "compress") or stored.get("model_name")) and other is not None and other != project:
            raise ConflictError(f"model name {model!r} belongs to another project", hint="pick another --model-name")
        p.secrets.check_references(s, spec.env, project)
        out_dir.mkdir(parents=True, exist_ok=True)  # the server's own: the metrics its attempts send
        s.add(JobRow(name=spec.name, kind=kind, command=command, resources=spec.resources.model_dump(),
                     clouds=spec.clouds, env=p.secrets.seal_env(spec.env, env_purpose("job", spec.name)),
                     workers=spec.workers, spot=spec.spot, max_restarts=spec.max_restarts,
                     checkpoint_dir="", output_dir=str(out_dir), spec=stored, status="PENDING",
                     project=project))
        p.store.record(s, "job", spec.name, "", "PENDING", f"{kind} job created")
    return job_out(p, spec.name)


def _place_data(p, me: Principal, settings: dict[str, Any], pinned: dict[str, dict[str, Any]]) -> None:  # noqa: ANN001
    """dataset:NAME[@VERSION]/PATH (a file of a dataset version) in train_data or eval_data becomes
    the path the attempt's wrapper puts it at, on its cloud; the version is pinned with the job."""
    for key in ("train_data", "eval_data"):
        value = settings.get(key)
        if isinstance(value, str) and value.startswith("dataset:"):
            ref, _, inner = value.removeprefix("dataset:").partition("/")
            pin = pinned.setdefault(ref, pin_dataset(p, me, ref))
            if inner not in pin["paths"]:
                raise UserInputError(f"{key}: dataset {pin['name']} v{pin['number']} has no file {shorten(inner)!r}",
                                     hint=f"see `fermion dataset show {pin['name']}`")
            settings[key] = f"data/{pin['name']}/{inner}"


def _check_data(settings: dict[str, Any], code_files: set[str]) -> None:
    """Each data file is one the attempt will have: a dataset's, a file of the job's code, or the server's."""
    for key in ("train_data", "eval_data"):
        value = settings.get(key)
        if value is None or value.startswith("data/"):
            continue
        if value.startswith("code/"):  # a file sent with the job (the CLI sends local files so)
            if value.removeprefix("code/") not in code_files:
                raise UserInputError(f"{key} {shorten(value)!r} is not a file of the code sent with the job")
        elif not Path(value).is_file():
            raise UserInputError(f"{key} {value!r} is not a file on the server")


def _registered(p, me: Principal, name: str, project: str) -> bool:  # noqa: ANN001
    """Whether ``name`` is a model of ``project``'s registry (a fine-tune's base given by name alone)."""
    if "/" in name:
        return False
    with p.store.session() as s:
        require_project(s, project, me, "viewer")  # before a word on what its registry holds
        return s.scalars(select(ModelVersionRow.name).where(ModelVersionRow.name == name,
                                                             ModelVersionRow.project == project)).first() is not None


def _check_base(base: str, code_files: set[str]) -> None:
    """A fine-tune's base that is not a registered model is a model folder the attempt will have:
    one sent with the job's code, a dataset's, or the server's. Anything else would be a Hugging
    Face Hub name, fetched at the attempt, where nothing is downloaded: every attempt would fail."""
    if base.startswith("data/"):
        return
    if base.startswith("code/"):
        inner = base.removeprefix("code/").rstrip("/") + "/"
        if any(f.startswith(inner) for f in code_files):
            return
        raise UserInputError(f"base {shorten(base)!r} is not a folder of the code sent with the job")
    if Path(base).is_absolute():
        try:
            if (Path(base) / "config.json").is_file():
                return
            found = Path(base).is_dir()
        except (OSError, ValueError):
            found = False
        raise UserInputError(f"base {shorten(base)!r} is " + ("a folder without config.json, not a transformers "
                             "model" if found else "not a model folder on the server"), hint=BASE_HINT)
    raise UserInputError(f"base model {shorten(base)!r} is neither a model folder nor a registered model, and "
                         "models are not downloaded from the Hugging Face Hub: jobs run offline", hint=BASE_HINT)


BASE_HINT = ("give a local model folder (a transformers model with its config.json), a registered model NAME:VERSION "
             "(see `fermion model list`), or no base for the shipped all-MiniLM-L6-v2")


def pin_model(p, me: Principal, ref: str, project: str) -> dict[str, str]:  # noqa: ANN001
    """A fine-tune's base: a registry version of its project's, pinned by digest (or, registered
    before models went to the stores, by its folder)."""
    from ._artifacts import resolve_model, stored_digest

    with p.store.session() as s:
        require_project(s, project, me, "viewer")
        row = resolve_model(s, ref, project)
        digest, pinned, folder = stored_digest(row.artifact_uri), f"{row.name}:{row.version}", row.artifact_uri
    return {"ref": pinned, "digest": digest} if digest else {"ref": pinned, "folder": folder}


def pin_dataset(p, me: Principal, ref: str) -> dict[str, Any]:  # noqa: ANN001
    """A job's dataset, NAME or NAME@VERSION, pinned to one version's digest when the job is made."""
    from ._datasets import _dataset, _read, _resolve

    name, _, version = ref.partition("@")
    with p.store.session() as s:
        row = _dataset(s, name, me)
        v = _resolve(s, row, version or None)
        s.expunge(row)
        number, digest = v.number, v.digest
    paths = {f.path for f in _read(p, row, digest).files}
    return {"name": name, "number": number, "digest": digest, "paths": paths}


def _require_job(p, name: str, me: Principal, role: str) -> None:  # noqa: ANN001
    with p.store.session() as s:
        _get_job(s, name, me, role)


def _get_job(s, name: str, me: Principal | None, role: str = "viewer") -> JobRow:  # noqa: ANN001
    job = s.get(JobRow, name)
    hidden = NotFoundError(f"no job named {shorten(name)!r}", hint="see `fermion job list`")
    if job is None:
        raise hidden
    if me is not None:
        me.require(job.project, role, hidden)
    return job


def job_out(p, name: str, me: Principal | None = None) -> dict[str, Any]:  # noqa: ANN001
    with p.store.session() as s:
        job = _get_job(s, name, me)
        attempts = s.scalars(select(AttemptRow).where(AttemptRow.job == name).order_by(AttemptRow.number)).all()
        metrics = []
        path = Path(job.output_dir) / "metrics.jsonl"
        try:  # written by the job: read like anything a workload controls
            metrics = [json.loads(x) for x in read_untrusted(path, 4 << 20, tail=True).decode(errors="replace")
                       .splitlines() if x.strip().startswith("{")]
        except (OSError, ValueError):
            metrics = []
        return {
            "name": job.name, "kind": job.kind, "status": job.status, "reason": job.reason, "command": job.command,
            "resources": job.resources, "workers": job.workers, "restarts": job.restarts,
            "max_restarts": job.max_restarts, "result": job.result,
            "created_at": job.created_at, "updated_at": job.updated_at,
            "spot": job.spot, "project": job.project,
            "attempts": [{"number": a.number, "id": a.id, "cloud": a.cloud, "spot": a.spot, "state": a.state,
                          "reason": a.reason,
                          "exit_code": a.exit_code, "started_at": a.started_at, "ended_at": a.ended_at}
                         for a in attempts],
            "metrics": metrics,
        }


@router.get("/jobs")
def list_jobs(request: Request) -> list[dict[str, Any]]:
    p = _platform(request)
    me = caller(request)
    with p.store.session() as s:
        names = [j.name for j in s.scalars(select(JobRow).order_by(JobRow.created_at)).all() if me.visible(j.project)]
    return [job_out(p, n) for n in names]


@router.get("/jobs/{name}")
def get_job(request: Request, name: str) -> dict[str, Any]:
    return job_out(_platform(request), name, caller(request))


@router.get("/jobs/{name}/logs")
def job_logs(request: Request, name: str, tail: int = 200) -> dict[str, str]:
    """Each attempt's log (its last ``tail`` lines), by attempt."""
    p = _platform(request)
    with p.store.session() as s:
        _get_job(s, name, caller(request))
    return job_log_texts(p, name, tail)


def job_log_texts(p, name: str, tail: int) -> dict[str, str]:  # noqa: ANN001
    """A job's attempts' logs with its env's values masked (the caller checked it may read them)."""
    with p.store.session() as s:
        job = _get_job(s, name, None)
        hide = p.secrets.open_env(s, job.env, env_purpose("job", name), missing_ok=True, project=job.project).values()
        attempts = s.scalars(select(AttemptRow).where(AttemptRow.job == name).order_by(AttemptRow.number)).all()
    return {f"attempt {a.number} ({a.cloud}, {a.state})":
            p.secrets.redact(p.clouds[a.cloud].logs(a.handle or {"id": a.id}, tail=tail), hide)
            for a in attempts if a.cloud in p.clouds}


@router.post("/jobs/{name}/cancel")
def cancel_job(request: Request, name: str) -> dict[str, Any]:
    p = _platform(request)
    _require_job(p, name, caller(request), "editor")
    p.jobs.cancel(name, wait_s=10.0 if p.leads() else 0.0)  # a follower leaves carrying it out to the leader
    return job_out(p, name)


def on_job_success(p, s, job: JobRow) -> None:  # noqa: ANN001
    """A finished fine-tune becomes a new model version with its metrics and lineage: its model
    kept in the stores that hold the job's output (or, for a job from before, copied from its folder)."""
    if job.kind == "compress":
        from ._compress import register_variant

        register_variant(p, s, job)
        return
    if job.kind == "command" and job.spec.get("model_name"):
        _register_command_model(p, s, job)
        return
    if job.kind != "finetune":
        return
    if job.spec.get("outputs") == "stores":
        from ._artifacts import job_result, register_output

        result, output, holders = job_result(p, job)
        artifact_uri, size, kept = register_output(p, job, output, holders)
    else:
        output_dir = Path(job.output_dir).resolve()
        result = json.loads(read_untrusted(output_dir / "result.json", 4 << 20))
        artifact = Path(result["artifact"]).resolve()
        if not artifact.is_relative_to(output_dir) or artifact.is_symlink():  # the job says where: only its own output
            raise UserInputError(f"the job's artifact {shorten(str(artifact))} is not inside its output folder")
    lineage = {**result["lineage"], **job_lineage(s, job)}
    if job.spec.get("base_model"):  # a registry version, not the folder the attempt found it in
        lineage["base_model"] = job.spec["base_model"]["ref"]
        lineage["base_model_digest"] = job.spec["base_model"].get("digest")
    metrics = {"baseline": result["baseline"], "final": result["final"], "best": result["best"],
               "steps": result["steps"], "epochs": result["epochs_done"], "precision": result["precision"],
               "samples_per_second": result["samples_per_second"]}
    name = job.spec["model_name"]
    if job.spec.get("outputs") == "stores":
        row = registry.record(s, p.store, name, registry.next_version(s, name), artifact_uri, metrics,
                              {**lineage, "stores": kept, "bytes": size}, project=job.project)
    else:
        row = registry.register(s, p.store, p.home, name, artifact, metrics, lineage, project=job.project)
    job.result = {"model": f"{row.name}:{row.version}", "accuracy": result["final"]["accuracy"],
                  "baseline_accuracy": result["baseline"]["accuracy"]}


def _register_command_model(p, s, job: JobRow) -> None:  # noqa: ANN001
    """A command job named a model: its output's model/ folder becomes the next version, with the
    metrics (and any lineage) its result.json gives."""
    from ._artifacts import job_result, register_output

    result, output, holders = job_result(p, job)
    metrics = result.get("metrics") if isinstance(result, dict) else None
    if not isinstance(metrics, dict):
        raise UserInputError(f"job {job.name}'s result.json has no metrics mapping",
                             hint='write {"metrics": {...}} to $FERMION_JOB_OUTPUT/result.json')
    artifact_uri, size, kept = register_output(p, job, output, holders)
    extra = result.get("lineage") if isinstance(result.get("lineage"), dict) else {}
    name = job.spec["model_name"]
    row = registry.record(s, p.store, name, registry.next_version(s, name), artifact_uri, metrics,
                          {**extra, **job_lineage(s, job), "stores": kept, "bytes": size}, project=job.project)
    job.result = {"model": f"{row.name}:{row.version}", "metrics": metrics}


def job_lineage(s, job: JobRow) -> dict[str, Any]:  # noqa: ANN001
    """What a registered version records of the job that made it: its attempts' clouds, its data, the code."""
    from .. import __version__

    attempts = s.scalars(select(AttemptRow).where(AttemptRow.job == job.name)).all()
    return {"job": job.name, "attempts": len(attempts),
            "datasets": [{"name": d["name"], "version": d["number"], "digest": d["digest"]}
                         for d in job.spec.get("datasets", [])],
            "clouds": [a.cloud for a in sorted(attempts, key=lambda a: a.number)],
            "code_version": f"fermion {__version__}", "python": sys.version.split()[0],
            **({"pipeline": {k: job.spec["pipeline"].get(k) for k in ("name", "run", "step")}}
               if job.spec.get("pipeline") else {})}


def _model_out(r: ModelVersionRow) -> dict[str, Any]:
    return {"name": r.name, "version": r.version, "project": r.project, "stage": r.stage, "artifact_uri": r.artifact_uri,
            "metrics": r.metrics, "lineage": r.lineage, "created_at": r.created_at}


@router.get("/models")
def list_models(request: Request) -> list[dict[str, Any]]:
    me = caller(request)
    with _platform(request).store.session() as s:
        rows = s.scalars(select(ModelVersionRow).order_by(ModelVersionRow.name, ModelVersionRow.version)).all()
        return [_model_out(r) for r in rows if me.visible(r.project)]


def _model(s, ref: str, me: Principal, role: str) -> ModelVersionRow:  # noqa: ANN001
    hidden = NotFoundError(f"no model version {shorten(ref)!r}", hint="see `fermion model list`")
    try:
        row = registry.get_version(s, ref)
    except NotFoundError:
        raise hidden from None
    me.require(row.project, role, hidden)
    return row


@router.get("/models/{ref}")
def show_model(request: Request, ref: str) -> dict[str, Any]:
    """A version, with the variants compressed from it and, for a measured one, what serving it
    costs on each cloud's instance types."""
    from ..compress import cost_per_cloud

    with _platform(request).store.session() as s:
        row = _model(s, ref, caller(request), "viewer")
        out = _model_out(row)
        me = f"{row.name}:{row.version}"
        children = s.scalars(select(ModelVersionRow).where(ModelVersionRow.name == row.name)
                             .order_by(ModelVersionRow.version)).all()
        out["variants"] = [_model_out(c) for c in children if (c.lineage or {}).get("parent") == me]
    report = (row.metrics or {}).get("report")
    if report:
        out["per_cloud"] = cost_per_cloud(report["measured"])
    return out


class PromoteSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    stage: str


@router.post("/models/{ref}/promote")
def promote_model(request: Request, ref: str, spec: PromoteSpec) -> dict[str, Any]:
    p = _platform(request)
    with p.store.session() as s:
        _model(s, ref, caller(request), "editor")
        return _model_out(registry.promote(s, p.store, ref, spec.stage))


@router.delete("/models/{ref}")
def delete_model(request: Request, ref: str) -> dict[str, str]:
    from ._artifacts import models_view, stored_digest

    p = _platform(request)
    with p.store.session() as s:
        row = _model(s, ref, caller(request), "editor")
        digest, project = stored_digest(row.artifact_uri), row.project
        registry.delete(s, p.store, ref, lambda d: p.secrets.open_env(
            s, d.env, env_purpose("deployment", d.name), missing_ok=True, project=d.project))
        s.flush()
        shared = s.scalars(select(ModelVersionRow).where(ModelVersionRow.artifact_uri == row.artifact_uri)).first()
    if digest and shared is None:  # its manifest leaves the stores; its chunks go at a garbage collection
        for cloud in p.reachable_stores():
            try:
                models_view(p, cloud, project).drop(digest)
            except FermionError:
                continue
    return {"deleted": ref, "at": str(time.time())}
