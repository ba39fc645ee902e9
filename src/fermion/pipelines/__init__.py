"""Pipelines: DAGs of steps (jobs, fine-tunes, evaluations, gates, compressions, deploys), and
their placement across clouds."""

from ._spec import COMPUTE_KINDS, DEFAULT_HOURS, Estimate, PipelineSpec, StepSpec, load_pipeline, parse_pipeline

__all__ = ["COMPUTE_KINDS", "DEFAULT_HOURS", "Estimate", "PipelineSpec", "StepSpec", "load_pipeline", "parse_pipeline"]
