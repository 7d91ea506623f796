"""jobs.interruptions and jobs.claimed_at: interruptions apart from failures (was schema_version 4)

Revision ID: 0004
Revises: 0003
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from common.store.migrations.helpers import missing_columns

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    missing = missing_columns("jobs", "interruptions", "claimed_at")  # as in 0002
    if "interruptions" in missing:
        op.add_column("jobs", sa.Column("interruptions", sa.Integer(), server_default="0", nullable=False))
    if "claimed_at" in missing:
        op.add_column("jobs", sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("claimed_at")
        batch.drop_column("interruptions")
