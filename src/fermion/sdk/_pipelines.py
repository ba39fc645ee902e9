"""Pipelines through the SDK: register (sending each step's code and photon), run, follow, plan."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field

from ..errors import UserInputError
from ..pipelines import PipelineSpec, load_pipeline, parse_pipeline
from ..placement import PipelinePlan
from ._deployments import CLASSIFIER, Deployments
from ._http import Transport
from ._jobs import ship_code, ship_local_data
from ._progress import ProgressFactory, quiet
from ._results import Result


class PipelinePlacement(Result):
    """A cloud for each compute step, with the figures and the reasons."""

    pipeline: str
    plan: PipelinePlan
    estimates: dict[str, str] = Field(default_factory=dict, description="per step: where its hours came from")
    server_steps: list[str] = Field(default_factory=list, description="steps the server runs (gates, deploys)")
    explanation: str = ""


class Pipeline(Result):
    name: str
    project: str
    owner: str
    steps: int
    triggers: list[dict[str, Any]] = Field(default_factory=list)
    runs: int = 0
    last_run: dict[str, Any] | None = None
    spec: dict[str, Any] = Field(default_factory=dict)


class StepRun(Result):
    step: str
    kind: str
    after: list[str] = Field(default_factory=list)
    status: str
    reason: str = ""
    job: str = ""
    cloud: str = ""
    outputs: dict[str, Any] = Field(default_factory=dict)
    cached_from: str = ""
    started_at: float | None = None
    ended_at: float | None = None


class PipelineRun(Result):
    pipeline: str
    number: int
    status: str
    reason: str = ""
    trigger: str = ""
    plan: dict[str, str] = Field(default_factory=dict, description="step → the cloud the placement chose")
    created_at: float = 0.0
    ended_at: float | None = None
    steps: list[StepRun] = Field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.status in ("SUCCEEDED", "FAILED", "CANCELLED")

    def step(self, name: str) -> StepRun:
        return next(s for s in self.steps if s.step == name)


def _spec_and_base(pipeline: PipelineSpec | str | Path | dict[str, Any]) -> tuple[PipelineSpec, Path]:
    if isinstance(pipeline, str | Path):
        return load_pipeline(pipeline), Path(pipeline).resolve().parent
    if isinstance(pipeline, PipelineSpec):
        return pipeline, Path.cwd()
    return parse_pipeline(pipeline), Path.cwd()


class Pipelines:
    """``conn.pipelines()`` lists them; ``conn.pipelines.run(path)`` registers one and starts a run."""

    def __init__(self, http: Transport) -> None:
        self._http = http

    def __call__(self) -> list[Pipeline]:
        return [Pipeline.model_validate(p) for p in self._http.get("/pipelines")]

    def get(self, name: str) -> Pipeline:
        return Pipeline.model_validate(self._http.get(f"/pipelines/{name}"))

    def plan(self, pipeline: PipelineSpec | str | Path | dict[str, Any], *, alpha: float | None = None,
             beta: float | None = None, method: str = "auto", transfer_gb_per_hour: float = 360.0) -> PipelinePlacement:
        """Place the pipeline's steps over the server's clouds by ``alpha * hours + beta * $`` (default:
        the pipeline's own weights): exactly, by dynamic programming on a chain, else by an ILP."""
        spec, _ = _spec_and_base(pipeline)
        return PipelinePlacement.model_validate(self._http.request("POST", "/pipelines/plan", json={
            "pipeline": spec.model_dump(mode="json", by_alias=True), "alpha": alpha, "beta": beta, "method": method,
            "transfer_gb_per_hour": transfer_gb_per_hour}))

    def register(self, pipeline: PipelineSpec | str | Path | dict[str, Any], *,
                 progress: ProgressFactory = quiet) -> Pipeline:
        """Send what its steps need (each workdir's files, local data files, each deploy's photon) and
        create or replace the pipeline on the server. Paths are relative to the pipeline's file."""
        spec, base = _spec_and_base(pipeline)
        body = spec.model_dump(mode="json", by_alias=True)
        for step in body["steps"]:
            settings = step.get("with") or {}
            if step.get("workdir"):
                step["code"] = ship_code(self._http, base / step["workdir"], spec.project, progress=progress).digest
            elif step["kind"] in ("finetune", "compress"):
                for key in ("train_data", "eval_data"):  # a local file goes with the step, as its code
                    if settings.get(key) and not str(settings[key]).startswith("dataset:"):
                        settings[key] = str(base / settings[key])
                ship_local_data(self._http, settings, step, spec.project, progress)
            if step["kind"] == "deploy":
                photon = settings.get("photon")
                if photon:
                    file, _, cls = str(photon).partition(":")
                    ref = f"{base / file}:{cls}" if cls else str(base / file)
                elif settings.get("model"):
                    ref = f"{CLASSIFIER}:Classifier"  # a registry model is served by the classifier photon
                else:
                    raise UserInputError(f"deploy step {step['name']} names no photon and no model",
                                         hint="with: {photon: photon.py:Class} or {model: step:train}")
                settings["photon_sha"] = Deployments(self._http).upload(ref)
            step["with"] = settings
        return Pipeline.model_validate(self._http.request("POST", "/pipelines", json={"pipeline": body}))

    def run(self, pipeline: PipelineSpec | str | Path | dict[str, Any], *, reason: str = "", wait: bool = False,
            timeout: float = 3600, on_update: Callable[[PipelineRun], None] | None = None,
            progress: ProgressFactory = quiet) -> PipelineRun:
        """Register the pipeline (a spec, its file, or the NAME of one registered already) and start a
        run; with ``wait``, follow it to its end."""
        if isinstance(pipeline, str) and not Path(pipeline).exists() and "/" not in pipeline \
                and not pipeline.endswith((".yaml", ".yml")):
            name = pipeline
        else:
            name = self.register(pipeline, progress=progress).name
        run = PipelineRun.model_validate(self._http.request("POST", f"/pipelines/{name}/runs",
                                                            json={"reason": reason}))
        return self.wait(name, run.number, timeout, on_update) if wait else run

    def runs(self, name: str) -> list[PipelineRun]:
        return [PipelineRun.model_validate(r) for r in self._http.get(f"/pipelines/{name}/runs")]

    def status(self, name: str, run: int | str = "latest") -> PipelineRun:
        """A run (a number, or latest) with each step's state, reason, job, cloud and outputs."""
        return PipelineRun.model_validate(self._http.get(f"/pipelines/{name}/runs/{run}"))

    def wait(self, name: str, run: int | str = "latest", timeout: float = 3600,
             on_update: Callable[[PipelineRun], None] | None = None) -> PipelineRun:
        """Poll until the run ends (or ``timeout`` passes: the run as it stands)."""
        deadline = time.monotonic() + timeout
        while True:
            current = self.status(name, run)
            if on_update is not None:
                on_update(current)
            if current.done or time.monotonic() > deadline:
                return current
            time.sleep(0.5)

    def logs(self, name: str, run: int | str = "latest", tail: int = 100) -> dict[str, dict[str, str]]:
        """Each step's job logs, per attempt, by step."""
        return self._http.get(f"/pipelines/{name}/runs/{run}/logs", tail=tail)

    def cancel(self, name: str, run: int | str = "latest") -> PipelineRun:
        return PipelineRun.model_validate(self._http.request("POST", f"/pipelines/{name}/runs/{run}/cancel"))

    def delete(self, name: str) -> None:
        """Forget the pipeline and its runs (what they made stays)."""
        self._http.request("DELETE", f"/pipelines/{name}")
