"""A pipeline: a DAG of steps, written in YAML (or built in Python), and how its steps map onto
the placement's view of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import UserInputError
from ..types import NAME_PATTERN

StepKind = Literal["job", "finetune", "eval", "compress", "gate", "deploy", "promote"]
COMPUTE_KINDS = ("job", "finetune", "eval", "compress")  # run as jobs on a cloud; the rest run on the server
DEFAULT_HOURS = 0.1  # a step's run time when neither its spec nor an earlier run tells


class Estimate(BaseModel):
    """What the placement assumes of a step before it has run."""

    model_config = ConfigDict(extra="forbid")
    hours: float | None = Field(None, ge=0, description="run time on a cloud of speed 1; default: the last run's")
    output_gb: float = Field(0.0, ge=0, description="what it writes for the steps after it")


class StepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN)
    kind: StepKind = "job"
    after: list[str] = Field(default_factory=list, max_length=50, description="steps that must finish first")
    # job, eval: a command, run in a copy of workdir (relative to the pipeline file)
    command: list[str] = Field(default_factory=list)
    workdir: str | None = None
    datasets: list[str] = Field(default_factory=list, max_length=16, description="NAME or NAME@VERSION: what it reads")
    resources: dict[str, float] = Field(default_factory=lambda: {"cpus": 1, "memory_gb": 1})
    env: dict[str, str] = Field(default_factory=dict)
    clouds: list[str] = Field(default_factory=list, description="allowed clouds; empty: any")
    estimate: Estimate = Field(default_factory=Estimate)
    retries: int = Field(1, ge=0, le=20, description="re-runs of the step after its own failures")
    code: str | None = Field(None, pattern="^[0-9a-f]{64}$",
                             description="the digest of workdir's files as sent to the server (set when it is sent)")
    # finetune, compress, deploy, gate, promote: their own settings (see the docs of each kind)
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")

    @property
    def compute(self) -> bool:
        return self.kind in COMPUTE_KINDS


class Trigger(BaseModel):
    """When the server starts a run by itself: a new version of a dataset, or a cron schedule."""

    model_config = ConfigDict(extra="forbid")
    dataset: str | None = Field(None, pattern=NAME_PATTERN, description="a new version of this dataset")
    cron: str | None = Field(None, description="five fields, UTC: '0 3 * * *' is 03:00 every day")

    @model_validator(mode="after")
    def _one(self) -> Trigger:
        if (self.dataset is None) == (self.cron is None):
            raise ValueError("a trigger is either `dataset: NAME` or `cron: SCHEDULE`")
        if self.cron is not None:
            import time

            from ._cron import next_fire

            try:
                next_fire(self.cron, time.time())  # parses it, and refuses one that never fires
            except UserInputError as exc:
                raise ValueError(exc.message) from None
        return self


class PipelineSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    project: str | None = Field(None, description="default: the token's project, else the user's only one")
    triggers: list[Trigger] = Field(default_factory=list, max_length=16)
    alpha: float = Field(1.0, ge=0, description="weight of the completion time (hours)")
    beta: float = Field(1.0, ge=0, description="weight of the cost ($)")
    steps: list[StepSpec] = Field(min_length=1, max_length=200)

    @model_validator(mode="after")
    def _a_dag(self) -> PipelineSpec:
        names = [s.name for s in self.steps]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"step {twice[0]!r} is named twice")
        for s in self.steps:
            unknown = [a for a in s.after if a not in names]
            if unknown:
                raise ValueError(f"step {s.name!r} runs after {unknown[0]!r}, which is not a step")
        after = {s.name: set(s.after) for s in self.steps}
        done: set[str] = set()
        while len(done) < len(after):  # peel off the steps whose predecessors are all done
            ready = [n for n, before in after.items() if n not in done and before <= done]
            if not ready:
                raise ValueError(f"steps wait on each other in a cycle: {', '.join(sorted(set(after) - done))}")
            done.update(ready)
        return self

    def step(self, name: str) -> StepSpec:
        return next(s for s in self.steps if s.name == name)

    def compute_after(self, step: StepSpec) -> list[str]:
        """The compute steps whose outputs ``step`` reads, seen through the server-side steps between
        them (a gate passes its inputs on)."""
        by_name = {s.name: s for s in self.steps}
        out: list[str] = []
        todo, seen = list(step.after), set()
        while todo:
            name = todo.pop(0)
            if name in seen or name not in by_name:
                continue
            seen.add(name)
            if by_name[name].compute:
                out.append(name)
            else:
                todo += by_name[name].after
        return sorted(set(out))


def load_pipeline(path: str | Path) -> PipelineSpec:
    """A pipeline from its YAML file, or a 400-style error that names the file and the fault."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise UserInputError(f"pipeline file {path} does not exist") from None
    except (OSError, yaml.YAMLError) as exc:
        raise UserInputError(f"cannot read pipeline file {path}: {exc}") from None
    return parse_pipeline(data, str(path))


def parse_pipeline(data: object, where: str = "the pipeline") -> PipelineSpec:
    if not isinstance(data, dict):
        raise UserInputError(f"{where} must be a mapping with name and steps")
    try:
        return PipelineSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        at = ".".join(str(x) for x in first["loc"])
        raise UserInputError(f"invalid {where}: {at}: {first['msg']}",
                             hint="see examples/pipelines/train-and-deploy.yaml") from None
