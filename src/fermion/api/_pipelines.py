"""/api/v1/pipelines: where a pipeline's steps should run, by ``alpha * time + beta * cost``."""

from __future__ import annotations

import math
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from ..errors import UserInputError, shorten
from ..pipelines import DEFAULT_HOURS, PipelineSpec, StepSpec, parse_pipeline
from ..placement import DataInput, Site, StepNeed, place_pipeline
from ..store import AttemptRow, JobRow
from ._auth import caller, require_token
from ._datasets import dataset_input
from ._principal import Principal
from ._schemas import ERROR_RESPONSES

router = APIRouter(prefix="/api/v1", responses=ERROR_RESPONSES, dependencies=[Depends(require_token)])
EXHAUSTIVE_MAX = 100_000  # assignments an exhaustive search may try


class PlanRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pipeline: dict[str, Any] = Field(description="the pipeline, as its YAML reads")
    alpha: float | None = Field(None, ge=0, le=1e6, description="default: the pipeline's")
    beta: float | None = Field(None, ge=0, le=1e6, description="default: the pipeline's")
    method: Literal["auto", "dp", "ilp", "exhaustive"] = "auto"
    transfer_gb_per_hour: float = Field(360.0, gt=0, le=1e9, description="between two clouds' stores")


@router.post("/pipelines/plan")
def plan_pipeline(request: Request, body: PlanRequest) -> dict[str, Any]:
    """A cloud for each compute step (the gates, deploys and promotions run on the server), with the
    completion time, the cost (machine hours and egress of the data each step fetches) and why."""
    p, me = request.app.state.platform, caller(request)
    spec = parse_pipeline(body.pipeline)
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
        hours, estimates[step.name] = _hours(p, spec, step, me)
        needs.append(StepNeed(name=step.name, hours=hours, after=spec.compute_after(step),
                              inputs=[_input(p, ref, me) for ref in step.datasets],
                              output_gb=step.estimate.output_gb, clouds=step.clouds))
    if not needs:
        raise UserInputError(f"pipeline {spec.name} has no step that runs on a cloud",
                             hint="job, finetune, eval and compress steps are placed; the others run on the server")
    if body.method == "exhaustive":
        tries = math.prod(len([s for s in sites if not n.clouds or s.name in n.clouds]) for n in needs)
        if tries > EXHAUSTIVE_MAX:
            raise UserInputError(f"an exhaustive search would try {tries} placements", hint="use method auto")
    alpha = spec.alpha if body.alpha is None else body.alpha
    beta = spec.beta if body.beta is None else body.beta
    plan = place_pipeline(needs, sites, alpha=alpha, beta=beta, transfer_gb_per_hour=body.transfer_gb_per_hour,
                          method=body.method)
    return {"pipeline": spec.name, "plan": plan.model_dump(), "estimates": estimates,
            "server_steps": [s.name for s in spec.steps if not s.compute], "explanation": plan.explain()}


def _input(p, ref: str, me: Principal) -> DataInput:  # noqa: ANN001
    size, clouds = dataset_input(p, ref, me)
    return DataInput(name=ref, size_gb=size / 1e9, at=clouds or [next(iter(p.configs))])


def _hours(p, spec: PipelineSpec, step: StepSpec, me: Principal) -> tuple[float, str]:  # noqa: ANN001
    """The step's hours on a cloud of speed 1, and where that figure comes from: its spec, the last
    successful run of the job it runs as (``PIPELINE-STEP``, scaled by its cloud's speed), or a guess."""
    if step.estimate.hours is not None:
        return step.estimate.hours, "the spec"
    with p.store.session() as s:
        job = s.get(JobRow, f"{spec.name}-{step.name}")
        attempt = None
        if job is not None and job.status == "SUCCEEDED" and me.visible(job.project):
            attempt = s.scalars(select(AttemptRow).where(AttemptRow.job == job.name, AttemptRow.state == "SUCCEEDED")
                                .order_by(AttemptRow.number.desc()).limit(1)).first()
        if attempt is not None and attempt.started_at and attempt.ended_at and attempt.cloud in p.configs:
            hours = max(0.0, attempt.ended_at - attempt.started_at) / 3600 * p.configs[attempt.cloud].speed
            return hours, f"the last run ({job.name} on {attempt.cloud})"
    return DEFAULT_HOURS, "a guess (give estimate.hours, or run it once)"
