"""Compute backends ("clouds"): the protocol and the local kind."""

from ._base import CloudBackend, ProvisionError, ReplicaHandle, ReplicaSpec
from ._config import CloudConfig, load_clouds
from ._local import LocalCloud
from ._sandbox import Isolation, read_untrusted

__all__ = [
    "CloudBackend",
    "CloudConfig",
    "Isolation",
    "LocalCloud",
    "ProvisionError",
    "ReplicaHandle",
    "ReplicaSpec",
    "load_clouds",
    "read_untrusted",
]
