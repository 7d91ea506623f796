"""jobs.deleted_at: a deleted job's row stays, unlisted (was schema_version 3)

Revision ID: 0003
Revises: 0002
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from common.store.migrations.helpers import missing_columns

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if missing_columns("jobs", "deleted_at"):  # as in 0002: an adopted store may have it
        op.add_column("jobs", sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("deleted_at")
