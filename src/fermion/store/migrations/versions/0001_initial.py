"""The schema as Fermion 0.1 made it with ``create_all``: every table, frozen here.

Revision ID: 0001
Revises: (none)

The tables are spelled out rather than taken from the models, so this revision stays what it was
when the models change; a database from before Alembic is brought up to exactly this schema
(see fermion.store._migrate) and then stamped. Scalar ``default=`` values are what that
conversion writes into a column it adds to an older table.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels = None
depends_on = None

metadata = sa.MetaData()

sa.Table(
    "audit", metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float(), nullable=False, index=True),
    sa.Column("actor", sa.String(100), nullable=False, index=True),
    sa.Column("method", sa.String(10), nullable=False),
    sa.Column("path", sa.Text(), nullable=False),
    sa.Column("target", sa.Text(), nullable=False, index=True),
    sa.Column("client", sa.String(100), nullable=False, default=""),
    sa.Column("status", sa.Integer(), nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)
sa.Table(
    "clouds", metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("config", sa.JSON(), nullable=False),
    sa.Column("health", sa.String(20), nullable=False, default="healthy"),
    sa.Column("health_reason", sa.Text(), nullable=False, default=""),
    sa.Column("outage", sa.Boolean(), nullable=False, default=False),
)
sa.Table(
    "events", metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float(), nullable=False, index=True),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("object_id", sa.String(100), nullable=False, index=True),
    sa.Column("old", sa.String(40), nullable=False, default=""),
    sa.Column("new", sa.String(40), nullable=False, default=""),
    sa.Column("reason", sa.Text(), nullable=False, default=""),
)
sa.Table(
    "jobs", metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("kind", sa.String(20), nullable=False, default="command"),
    sa.Column("command", sa.JSON(), nullable=False),
    sa.Column("resources", sa.JSON(), nullable=False),
    sa.Column("clouds", sa.JSON(), nullable=False),
    sa.Column("env", sa.JSON(), nullable=False),
    sa.Column("workers", sa.Integer(), nullable=False, default=1),
    sa.Column("spot", sa.Boolean(), nullable=False, default=False),
    sa.Column("max_restarts", sa.Integer(), nullable=False, default=2),
    sa.Column("status", sa.String(20), nullable=False, default="PENDING"),
    sa.Column("reason", sa.Text(), nullable=False, default=""),
    sa.Column("restarts", sa.Integer(), nullable=False, default=0),
    sa.Column("next_start_at", sa.Float(), nullable=False, default=0.0),
    sa.Column("checkpoint_dir", sa.Text(), nullable=False, default=""),
    sa.Column("output_dir", sa.Text(), nullable=False, default=""),
    sa.Column("spec", sa.JSON(), nullable=False),
    sa.Column("result", sa.JSON(), nullable=False),
    sa.Column("created_at", sa.Float(), nullable=False),
    sa.Column("updated_at", sa.Float(), nullable=False),
    sa.Column("project", sa.String(100), nullable=False, index=True, default="default"),
    sa.Column("cancel_requested", sa.Boolean(), nullable=False, default=False),
    sa.Column("lease_owner", sa.String(40), nullable=True),
    sa.Column("lease_until", sa.Float(), nullable=False, default=0.0),
)
sa.Table(
    "model_versions", metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("version", sa.Integer(), primary_key=True),
    sa.Column("artifact_uri", sa.Text(), nullable=False),
    sa.Column("stage", sa.String(20), nullable=False, default="none"),
    sa.Column("metrics", sa.JSON(), nullable=False),
    sa.Column("lineage", sa.JSON(), nullable=False),
    sa.Column("created_at", sa.Float(), nullable=False),
    sa.Column("project", sa.String(100), nullable=False, index=True, default="default"),
)
sa.Table(
    "photons", metadata,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, index=True),
    sa.Column("archive_path", sa.Text(), nullable=False),
    sa.Column("manifest", sa.JSON(), nullable=False),
    sa.Column("created_at", sa.Float(), nullable=False),
)
sa.Table(
    "project_secrets", metadata,
    sa.Column("project", sa.String(100), primary_key=True, default="default"),
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("ciphertext", sa.Text(), nullable=False),
    sa.Column("created_at", sa.Float(), nullable=False),
    sa.Column("updated_at", sa.Float(), nullable=False),
)
sa.Table(
    "projects", metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("created_at", sa.Float(), nullable=False),
)
sa.Table(
    "tokens", metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("role", sa.String(20), nullable=False, default="admin"),
    sa.Column("created_at", sa.Float(), nullable=False),
    sa.Column("user", sa.String(100), nullable=False, default="admin"),
    sa.Column("project", sa.String(100), nullable=True),
    sa.Column("expires_at", sa.Float(), nullable=True),
    sa.Column("revoked_at", sa.Float(), nullable=True),
)
sa.Table(
    "users", metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("admin", sa.Boolean(), nullable=False, default=False),
    sa.Column("created_at", sa.Float(), nullable=False),
)
sa.Table(
    "attempts", metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("job", sa.String(100), sa.ForeignKey("jobs.name"), nullable=False, index=True),
    sa.Column("number", sa.Integer(), nullable=False),
    sa.Column("cloud", sa.String(100), nullable=False),
    sa.Column("state", sa.String(20), nullable=False, default="STARTING"),
    sa.Column("reason", sa.Text(), nullable=False, default=""),
    sa.Column("handle", sa.JSON(none_as_null=True), nullable=True),
    sa.Column("exit_code", sa.Integer(), nullable=True),
    sa.Column("resources", sa.JSON(), nullable=False),
    sa.Column("spot", sa.Boolean(), nullable=False, default=False),
    sa.Column("started_at", sa.Float(), nullable=False),
    sa.Column("ended_at", sa.Float(), nullable=True),
)
sa.Table(
    "deployments", metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("photon_sha256", sa.String(64), sa.ForeignKey("photons.sha256"), nullable=False),
    sa.Column("generation", sa.Integer(), nullable=False, default=1),
    sa.Column("replicas", sa.Integer(), nullable=False, default=1),
    sa.Column("resources", sa.JSON(), nullable=False),
    sa.Column("clouds", sa.JSON(), nullable=False),
    sa.Column("env", sa.JSON(), nullable=False),
    sa.Column("public", sa.Boolean(), nullable=False, default=False),
    sa.Column("idempotent", sa.Boolean(), nullable=False, default=True),
    sa.Column("rate_limit", sa.JSON(none_as_null=True), nullable=True),
    sa.Column("project", sa.String(100), nullable=False, index=True, default="default"),
    sa.Column("token_hash", sa.String(64), nullable=True),
    sa.Column("status", sa.String(20), nullable=False, default="DEPLOYING"),
    sa.Column("status_reason", sa.Text(), nullable=False, default=""),
    sa.Column("crash_count", sa.Integer(), nullable=False, default=0),
    sa.Column("last_error", sa.Text(), nullable=False, default=""),
    sa.Column("next_start_at", sa.Float(), nullable=False, default=0.0),
    sa.Column("target", sa.JSON(none_as_null=True), nullable=True),
    sa.Column("created_at", sa.Float(), nullable=False),
    sa.Column("updated_at", sa.Float(), nullable=False),
    sa.Column("lease_owner", sa.String(40), nullable=True),
    sa.Column("lease_until", sa.Float(), nullable=False, default=0.0),
)
sa.Table(
    "memberships", metadata,
    sa.Column("user", sa.String(100), sa.ForeignKey("users.name"), primary_key=True),
    sa.Column("project", sa.String(100), sa.ForeignKey("projects.name"), primary_key=True),
    sa.Column("role", sa.String(20), nullable=False),
)
sa.Table(
    "replicas", metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("deployment", sa.String(100), sa.ForeignKey("deployments.name"), nullable=False, index=True),
    sa.Column("generation", sa.Integer(), nullable=False),
    sa.Column("photon_sha256", sa.String(64), nullable=False),
    sa.Column("cloud", sa.String(100), nullable=True),
    sa.Column("state", sa.String(20), nullable=False, index=True, default="PENDING"),
    sa.Column("reason", sa.Text(), nullable=False, default=""),
    sa.Column("handle", sa.JSON(none_as_null=True), nullable=True),
    sa.Column("url", sa.Text(), nullable=True),
    sa.Column("resources", sa.JSON(), nullable=False),
    sa.Column("failed_probes", sa.Integer(), nullable=False, default=0),
    sa.Column("auth_secret", sa.String(100), nullable=True),
    sa.Column("created_at", sa.Float(), nullable=False),
    sa.Column("state_since", sa.Float(), nullable=False),
)


def upgrade() -> None:
    metadata.create_all(op.get_bind())


def downgrade() -> None:
    metadata.drop_all(op.get_bind())
