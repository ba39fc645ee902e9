"""The state store: SQLAlchemy models and sessions; the schema evolves by Alembic migrations
(fermion.store.migrations)."""

from ._models import (
    DEFAULT_PROJECT,
    LIVE_ATTEMPT_STATES,
    LIVE_REPLICA_STATES,
    TERMINAL_STATES,
    AttemptRow,
    AuditKeyRow,
    AuditRow,
    CloudRow,
    DatasetRow,
    DatasetVersionRow,
    DeploymentRow,
    EventRow,
    GatewayLoadRow,
    JobRow,
    MembershipRow,
    ModelVersionRow,
    PhotonRow,
    PipelineRow,
    PipelineRunRow,
    ProjectRow,
    ReplicaRow,
    SecretRow,
    StepRunRow,
    TokenRow,
    UserRow,
    new_id,
)
from ._backup import Backup, BackupError, BackupSummary, create_backup, restore_backup
from ._offsite import PASSPHRASE_ENV
from ._offsite import fetch as fetch_backup
from ._offsite import is_sealed as is_sealed_backup
from ._offsite import listed as listed_backups
from ._offsite import passphrase_from_env as backup_passphrase
from ._offsite import seal as seal_backup
from ._offsite import seal_file as seal_backup_file
from ._offsite import send as send_backup
from ._offsite import unseal as unseal_backup
from ._offsite import unseal_file as unseal_backup_file
from ._leader import CONTROLLER_LEASE, ControllerLeaseRow
from ._migrate import new_revision
from ._safety import (
    DatabaseLostError,
    DatabaseWatch,
    StoreUnusableError,
    check_database,
    db_error_text,
    explain_db_error,
    keep_aside,
    keep_database_aside,
    prior_use,
    sidecars,
    sqlite_file,
)
from ._store import Store, default_db_url, display_url, storable, with_driver

__all__ = [
    "DEFAULT_PROJECT",
    "LIVE_ATTEMPT_STATES",
    "LIVE_REPLICA_STATES",
    "TERMINAL_STATES",
    "AttemptRow",
    "AuditKeyRow",
    "AuditRow",
    "Backup",
    "PASSPHRASE_ENV",
    "BackupError",
    "BackupSummary",
    "CONTROLLER_LEASE",
    "ControllerLeaseRow",
    "JobRow",
    "MembershipRow",
    "ModelVersionRow",
    "CloudRow",
    "DatasetRow",
    "DatasetVersionRow",
    "DatabaseLostError",
    "DatabaseWatch",
    "DeploymentRow",
    "EventRow",
    "GatewayLoadRow",
    "PhotonRow",
    "PipelineRow",
    "PipelineRunRow",
    "ProjectRow",
    "ReplicaRow",
    "SecretRow",
    "StepRunRow",
    "Store",
    "StoreUnusableError",
    "TokenRow",
    "UserRow",
    "check_database",
    "backup_passphrase",
    "create_backup",
    "fetch_backup",
    "is_sealed_backup",
    "listed_backups",
    "db_error_text",
    "default_db_url",
    "display_url",
    "explain_db_error",
    "keep_aside",
    "keep_database_aside",
    "new_id",
    "prior_use",
    "restore_backup",
    "seal_backup",
    "seal_backup_file",
    "send_backup",
    "unseal_backup",
    "unseal_backup_file",
    "sidecars",
    "sqlite_file",
    "new_revision",
    "storable",
    "with_driver",
]
