"""The state store: SQLAlchemy models and sessions."""

from ._models import (
    TERMINAL_STATES,
    AttemptRow,
    CloudRow,
    DeploymentRow,
    EventRow,
    JobRow,
    ModelVersionRow,
    PhotonRow,
    ReplicaRow,
    TokenRow,
    new_id,
)
from ._store import Store, default_db_url

__all__ = [
    "TERMINAL_STATES",
    "AttemptRow",
    "JobRow",
    "ModelVersionRow",
    "CloudRow",
    "DeploymentRow",
    "EventRow",
    "PhotonRow",
    "ReplicaRow",
    "Store",
    "TokenRow",
    "default_db_url",
    "new_id",
]
