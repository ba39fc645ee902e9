"""The state store: SQLAlchemy models and sessions."""

from ._models import (
    TERMINAL_STATES,
    AttemptRow,
    AuditRow,
    CloudRow,
    DeploymentRow,
    EventRow,
    JobRow,
    ModelVersionRow,
    PhotonRow,
    ReplicaRow,
    SecretRow,
    TokenRow,
    new_id,
)
from ._store import Store, default_db_url

__all__ = [
    "TERMINAL_STATES",
    "AttemptRow",
    "AuditRow",
    "JobRow",
    "ModelVersionRow",
    "CloudRow",
    "DeploymentRow",
    "EventRow",
    "PhotonRow",
    "ReplicaRow",
    "SecretRow",
    "Store",
    "TokenRow",
    "default_db_url",
    "new_id",
]
