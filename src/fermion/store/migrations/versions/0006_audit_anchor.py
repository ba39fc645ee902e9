"""The audit chain anchored: a sequence number and a MAC per record, and the retired MAC keys.

Revision ID: 0006
Revises: 0005

Records already there get their ``seq`` in id order (the order their hashes chain in) and no MAC:
they are the chain's legacy prefix, checked by their hashes, which the first MACed record after
them (and the server's head file) pins (see fermion.api._audit).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision: str | None = "0005"
branch_labels = None
depends_on = None

BATCH = 1000


def upgrade() -> None:
    op.create_table(
        "audit_keys",
        sa.Column("key_id", sa.String(length=16), nullable=False),
        sa.Column("sealed", sa.Text(), nullable=False),
        sa.Column("retired_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key_id"),
    )
    with op.batch_alter_table("audit") as batch_op:
        batch_op.add_column(sa.Column("seq", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("key_id", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("mac", sa.String(length=64), nullable=True))
    # in Python rather than one UPDATE: numbering by a window function in an UPDATE is spelled
    # differently on each database, and ids may have gaps (a rolled-back insert)
    conn = op.get_bind()
    ids = conn.execute(sa.text("SELECT id FROM audit ORDER BY id")).scalars().all()
    update = sa.text("UPDATE audit SET seq = :seq WHERE id = :id")
    for start in range(0, len(ids), BATCH):
        batch = ids[start:start + BATCH]
        conn.execute(update, [{"seq": start + i + 1, "id": row_id} for i, row_id in enumerate(batch)])
    with op.batch_alter_table("audit") as batch_op:  # after the numbering: the index is unique
        batch_op.create_index(batch_op.f("ix_audit_seq"), ["seq"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("audit") as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_seq"))
        batch_op.drop_column("mac")
        batch_op.drop_column("key_id")
        batch_op.drop_column("seq")
    op.drop_table("audit_keys")
