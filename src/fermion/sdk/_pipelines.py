"""Pipelines through the SDK: where their steps should run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from ..pipelines import PipelineSpec, load_pipeline
from ..placement import PipelinePlan
from ._http import Transport
from ._results import Result


class PipelinePlacement(Result):
    """A cloud for each compute step, with the figures and the reasons."""

    pipeline: str
    plan: PipelinePlan
    estimates: dict[str, str] = Field(default_factory=dict, description="per step: where its hours came from")
    server_steps: list[str] = Field(default_factory=list, description="steps the server runs (gates, deploys)")
    explanation: str = ""


class Pipelines:
    def __init__(self, http: Transport) -> None:
        self._http = http

    def plan(self, pipeline: PipelineSpec | str | Path | dict[str, Any], *, alpha: float | None = None,
             beta: float | None = None, method: str = "auto", transfer_gb_per_hour: float = 360.0) -> PipelinePlacement:
        """Place the pipeline's steps over the server's clouds by ``alpha * hours + beta * $`` (default:
        the pipeline's own weights): exactly, by dynamic programming on a chain, else by an ILP."""
        if isinstance(pipeline, str | Path):
            pipeline = load_pipeline(pipeline)
        body = pipeline.model_dump(by_alias=True, exclude_unset=True) if isinstance(pipeline, PipelineSpec) else pipeline
        return PipelinePlacement.model_validate(self._http.request("POST", "/pipelines/plan", json={
            "pipeline": body, "alpha": alpha, "beta": beta, "method": method,
            "transfer_gb_per_hour": transfer_gb_per_hour}))
