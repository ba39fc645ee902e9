"""Catalogs of offerings and the placement optimizer."""

from ._catalog import CatalogInfo, Offering, builtin_catalogs, find_offering, list_offerings
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

__all__ = [
    "CatalogInfo",
    "CloudState",
    "Constraints",
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
]
