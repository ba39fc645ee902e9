"""Agent clouds: the serial of each cloud's agent token (0: none issued). A token names its serial;
issuing a new one makes every earlier one of that cloud invalid.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision: str | None = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("clouds") as batch_op:
        batch_op.add_column(sa.Column("agent_serial", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("clouds") as batch_op:
        batch_op.drop_column("agent_serial")
