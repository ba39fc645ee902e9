"""Catalogs of offerings, the placement optimizer for replicas, and the placement of a pipeline's steps."""

from ._catalog import CatalogInfo, Offering, builtin_catalogs, find_offering, list_offerings
from ._dag import DataInput, Move, PipelinePlan, Site, StepNeed, StepPlacement, place_pipeline, score_of
from ._optimizer import (
    CloudState,
    Constraints,
    Objective,
    Placement,
    PlacementRequest,
    Plan,
    Rejection,
    optimize,
)
from ._reference import brute_force
from ._spread import spread_cap

__all__ = [
    "CatalogInfo",
    "CloudState",
    "Constraints",
    "DataInput",
    "Move",
    "PipelinePlan",
    "Site",
    "StepNeed",
    "StepPlacement",
    "Objective",
    "Offering",
    "Placement",
    "PlacementRequest",
    "Plan",
    "Rejection",
    "brute_force",
    "builtin_catalogs",
    "find_offering",
    "list_offerings",
    "optimize",
    "place_pipeline",
    "score_of",
    "spread_cap",
]
