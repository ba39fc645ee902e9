"""Reconcile loops: the only writers of actual state."""

from ._deployments import DeploymentController
from ._jobs import JobController

__all__ = ["DeploymentController", "JobController"]
