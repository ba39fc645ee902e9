"""Clouds: the named pools of compute in clouds.yaml (each runs on one backend, see fermion.backends)."""

from ._config import CloudConfig, Injected, load_clouds

__all__ = ["CloudConfig", "Injected", "load_clouds"]
