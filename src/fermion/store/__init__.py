"""The state store: SQLAlchemy models and sessions."""

from ._models import (
    DEFAULT_PROJECT,
    TERMINAL_STATES,
    AttemptRow,
    AuditRow,
    CloudRow,
    DeploymentRow,
    EventRow,
    JobRow,
    MembershipRow,
    ModelVersionRow,
    PhotonRow,
    ProjectRow,
    ReplicaRow,
    SecretRow,
    TokenRow,
    UserRow,
    new_id,
)
from ._store import Store, default_db_url

__all__ = [
    "DEFAULT_PROJECT",
    "TERMINAL_STATES",
    "AttemptRow",
    "AuditRow",
    "JobRow",
    "MembershipRow",
    "ModelVersionRow",
    "CloudRow",
    "DeploymentRow",
    "EventRow",
    "PhotonRow",
    "ProjectRow",
    "ReplicaRow",
    "SecretRow",
    "Store",
    "TokenRow",
    "UserRow",
    "default_db_url",
    "new_id",
]
