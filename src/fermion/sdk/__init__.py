"""The Python SDK of the platform: ``fermion.connect()`` and what its calls return."""

from ._access import AuditRecord, Identity, Secret, Token, User
from ._connection import Connection, connect
from ._datasets import split_ref
from ._deployments import DeploymentHandle, photon_ref
from ._http import CREDENTIALS, Credentials, Transport, load_credentials, save_credentials
from ._jobs import Compressed
from ._progress import Bar, ProgressFactory, quiet
from ._sources import Source, fetched
from ._results import (
    Attempt,
    Cloud,
    Code,
    Dataset,
    DatasetSummary,
    DatasetVersion,
    Deployment,
    Event,
    Job,
    ModelVersion,
    Pulled,
    Pushed,
    Replica,
    Result,
)

__all__ = [
    "CREDENTIALS",
    "Attempt",
    "AuditRecord",
    "Bar",
    "Cloud",
    "Code",
    "Compressed",
    "Connection",
    "Credentials",
    "Dataset",
    "DatasetSummary",
    "DatasetVersion",
    "Deployment",
    "DeploymentHandle",
    "Event",
    "Identity",
    "Job",
    "ModelVersion",
    "Optimization",
    "Pipeline",
    "PipelinePlacement",
    "PipelineRun",
    "Pipelines",
    "ProgressFactory",
    "Pulled",
    "Pushed",
    "Replica",
    "Result",
    "Secret",
    "StepRun",
    "Token",
    "Transport",
    "User",
    "connect",
    "load_credentials",
    "photon_ref",
    "quiet",
    "save_credentials",
    "split_ref",
    "Source",
    "fetched",
]


def __getattr__(name: str) -> object:
    # the pipelines' spec pulls in YAML and its own models: loaded when first asked for
    if name in ("Pipeline", "PipelinePlacement", "PipelineRun", "Pipelines", "StepRun"):
        from . import _pipelines

        return getattr(_pipelines, name)
    if name == "Optimization":  # it pulls in the placement package
        from ._optimization import Optimization

        return Optimization
    raise AttributeError(f"module 'fermion.sdk' has no attribute {name!r}")
