"""The control plane: the scheduler (capacity ledger, cloud health, ranking), the pure planners,
and the controllers that reconcile one deployment or job per pass (the only writers of actual state)."""

from ._canary import promote, roll_back, start_canary
from ._deployments import DeploymentController
from ._jobs import JobController
from ._leader import Leadership
from ._orphans import stop_on_retired_clouds, stop_orphans, wanted_workloads
from ._pipelines import PipelineController, job_name, token_purpose
from ._planner import (
    TRANSITIONS,
    AttemptView,
    DeploymentPlan,
    DeploymentView,
    JobPlan,
    JobView,
    Observation,
    ReplicaChange,
    ReplicaView,
    plan_deployment,
    plan_job,
)
from ._scheduler import Need, Scheduler
from ._telemetry import Telemetry

__all__ = [
    "TRANSITIONS",
    "AttemptView",
    "DeploymentController",
    "DeploymentPlan",
    "DeploymentView",
    "JobController",
    "JobPlan",
    "JobView",
    "Leadership",
    "Need",
    "Observation",
    "PipelineController",
    "ReplicaChange",
    "ReplicaView",
    "Scheduler",
    "Telemetry",
    "plan_deployment",
    "job_name",
    "plan_job",
    "promote",
    "roll_back",
    "start_canary",
    "stop_on_retired_clouds",
    "stop_orphans",
    "token_purpose",
    "wanted_workloads",
]
