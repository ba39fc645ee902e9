"""A deployment's autoscaling policy, its canary and its spot policy, its re-optimization; each replica's market; the load
servers that do not lead see at their gateways.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("deployments", sa.Column("autoscale", sa.JSON(none_as_null=True), nullable=True))
    op.add_column("deployments", sa.Column("canary", sa.JSON(none_as_null=True), nullable=True))
    op.add_column("deployments", sa.Column("spot", sa.JSON(none_as_null=True), nullable=True))
    op.add_column("deployments", sa.Column("placement", sa.JSON(none_as_null=True), nullable=True))
    op.add_column("replicas", sa.Column("spot", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_table(
        "gateway_loads",
        sa.Column("server", sa.String(length=40), nullable=False),
        sa.Column("deployment", sa.String(length=100), nullable=False),
        sa.Column("in_flight", sa.Integer(), nullable=False),
        sa.Column("queued", sa.Integer(), nullable=False),
        sa.Column("last_request", sa.Float(), nullable=False),
        sa.Column("reported_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("server", "deployment"),
    )


def downgrade() -> None:
    op.drop_table("gateway_loads")
    with op.batch_alter_table("replicas") as batch:
        batch.drop_column("spot")
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("placement")
        batch.drop_column("spot")
        batch.drop_column("canary")
        batch.drop_column("autoscale")
