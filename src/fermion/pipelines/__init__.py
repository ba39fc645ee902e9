"""Pipelines: DAGs of steps (jobs, fine-tunes, evaluations, gates, compressions, deploys), and
their placement across clouds."""

from ._cron import next_fire, parse_cron
from ._spec import (COMPUTE_KINDS, DEFAULT_HOURS, Estimate, PipelineSpec, StepSpec, Trigger, load_pipeline,
                    parse_pipeline)

__all__ = ["COMPUTE_KINDS", "DEFAULT_HOURS", "Estimate", "PipelineSpec", "StepSpec", "Trigger", "load_pipeline", "next_fire",
           "parse_cron", "parse_pipeline"]
