"""The optimizer's answer for a deployment (its own module: it pulls in the placement package,
which most SDK calls never need)."""

from __future__ import annotations

from ..placement import Plan
from ._results import Result


class Optimization(Result):
    """The optimizer's placement of a deployment over the healthy clouds, against where it runs now."""

    deployment: str
    current: dict[str, int]
    current_cost_per_hour: float
    plan: Plan
    target: dict[str, int] | None
    target_cost_per_hour: float | None
    saving: float
    moving: bool = False
    applied: bool = False

    @property
    def explanation(self) -> str:
        """Why this placement: the plan's own account of what it chose and what it turned down."""
        return self.plan.explain()
