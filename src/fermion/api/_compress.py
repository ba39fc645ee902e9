"""Compression jobs: a registered classifier, made smaller or faster on the best cloud, registered
as the next version of its name with the parent, the method and its settings in its lineage."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..compress import AUTO_CANDIDATES, CompressConfig, CompressResult, StepSettings, parse_chain
from ..errors import UserInputError, shorten
from ..store import JobRow
from ._principal import Principal

CONFIG_ENV = "FERMION_COMPRESS_CONFIG"
COMMAND = ["python", "-m", "fermion.compress", "--config-env", CONFIG_ENV]


class CompressRequest(BaseModel):
    """What a compression job is asked: the JobSpec's ``compress`` field."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="the parent: NAME:VERSION of the job's project")
    method: str = Field(description="quantize, onnx, prune, distill, auto, or steps joined by '+'")
    settings: StepSettings = Field(default_factory=StepSettings)
    candidates: list[str] | None = Field(None, max_length=16, description="auto: the methods to try")
    max_accuracy_drop: float = Field(1.0, ge=0, le=100)
    train_data: str | None = Field(None, description="default: the parent's fine-tune's")
    eval_data: str | None = Field(None, description="default: the parent's fine-tune's")


def _parent_data(p, row: Any) -> tuple[dict[str, Any], dict[str, Any]]:  # noqa: ANN001
    """The data the parent was trained and evaluated on, and what brings it onto a cloud (the
    parent job's code and dataset pins), from the job that made it."""
    job_name = (row.lineage or {}).get("job")
    with p.store.session() as s:
        job = s.get(JobRow, job_name) if job_name else None
        spec = dict(job.spec) if job is not None else {}
    config = spec.get("config") or {}
    if not config.get("train_data"):
        raise UserInputError(f"model {row.name}:{row.version} has no job on record to take its data from",
                             hint="give --data (and --eval-data): the data it was fine-tuned on")
    data = {"train_data": config.get("train_data"), "eval_data": config.get("eval_data")}
    return data, {"code": spec.get("code"), "datasets": spec.get("datasets") or []}


def compress_job(p, me: Principal, spec: Any, project: str,  # noqa: ANN001
                 pinned: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    """(stored spec, command, what it inherits from the parent's job) of a compression job."""
    from ._artifacts import resolve_model
    from ._jobs import _place_data, pin_model

    try:
        req = CompressRequest.model_validate(spec.compress)
    except ValidationError as exc:
        raise UserInputError(f"invalid compress settings: {exc}") from exc
    if req.candidates and req.method != "auto":
        raise UserInputError("--candidates go with --method auto")
    methods = (req.candidates or AUTO_CANDIDATES) if req.method == "auto" else [req.method]
    trains = any(n in ("prune", "distill") for m in methods for n, _ in parse_chain(m))  # parsing checks each
    base = pin_model(p, me, req.model, project)
    with p.store.session() as s:
        row = resolve_model(s, req.model, project)
        s.expunge(row)
    inherited: dict[str, Any] = {}
    data = {"train_data": req.train_data, "eval_data": req.eval_data}
    if req.train_data is None and req.eval_data is None:
        data, inherited = _parent_data(p, row)
    else:
        _place_data(p, me, data, pinned)
    if trains and not data.get("train_data"):
        raise UserInputError(f"{req.method} trains (prune or distill): it needs the model's training data",
                             hint="give --data, or --candidates without prune and distill")
    try:
        cfg = CompressConfig(model_dir=base.get("folder") or "base", parent=base["ref"], method=req.method,
                             settings=req.settings, candidates=req.candidates,
                             max_accuracy_drop=req.max_accuracy_drop, output_dir="output",
                             threads=max(1, int(spec.resources.cpus)), **data)
    except ValidationError as exc:
        raise UserInputError(f"invalid compress settings: {shorten(str(exc), 400)}") from exc
    stored = {"config": cfg.model_dump(), "config_env": CONFIG_ENV, "model_name": spec.model_name or row.name,
              "outputs": "stores", "base_model": base}
    return stored, list(COMMAND), inherited


def register_variant(p, s, job: JobRow) -> None:  # noqa: ANN001
    """A finished compression becomes the next version of its model: its report and its parent's
    in the metrics, the parent, method, steps and settings in the lineage."""
    from .. import registry
    from ._artifacts import job_result, register_output
    from ._jobs import job_lineage

    raw, output, holders = job_result(p, job)
    try:  # the job wrote it: its figures are checked before they become the registry's
        result = CompressResult.model_validate(raw).model_dump()
    except ValidationError as exc:
        raise UserInputError(f"the job's result.json is not a compression report: {shorten(str(exc), 300)}") from exc
    artifact_uri, size, kept = register_output(p, job, output, holders)
    base = job.spec["base_model"]
    lineage = {**result["lineage"], **job_lineage(s, job), "parent": base["ref"], "parent_digest": base.get("digest"),
               "stores": kept, "bytes": size}
    report = result["report"]
    metrics = {"final": {k: report["measured"][k] for k in ("loss", "accuracy", "macro_f1")},
               "report": report, "parent_report": result["parent"], "candidates": result["candidates"],
               "format": report["measured"]["format"]}
    name = job.spec["model_name"]
    row = registry.record(s, p.store, name, registry.next_version(s, name), artifact_uri, metrics, lineage,
                          project=job.project)
    job.result = {"model": f"{row.name}:{row.version}", "parent": base["ref"], "method": result["chosen"],
                  "accuracy": report["measured"]["accuracy"], "parent_accuracy": result["parent"]["accuracy"],
                  "speedup": round(report["speedup"], 3), "size_ratio": round(report["size_ratio"], 3),
                  "agreement": round(report["agreement"], 4)}
