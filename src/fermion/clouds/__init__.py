"""Compute backends ("clouds"): the protocol and the local kind."""

from ._base import CloudBackend, ProvisionError, ReplicaHandle, ReplicaSpec
from ._config import CloudConfig, load_clouds
from ._local import LocalCloud

__all__ = [
    "CloudBackend",
    "CloudConfig",
    "LocalCloud",
    "ProvisionError",
    "ReplicaHandle",
    "ReplicaSpec",
    "load_clouds",
]
