"""Reconcile loops: the only writers of actual state."""

from ._deployments import DeploymentController

__all__ = ["DeploymentController"]
