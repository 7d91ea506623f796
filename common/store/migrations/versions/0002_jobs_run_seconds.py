"""jobs.run_seconds: training time summed over attempts (was schema_version 2)

Revision ID: 0002
Revises: 0001
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from common.store.migrations.helpers import missing_columns

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A store adopted from the old numbered scheme may have it already (its version 1 created
    # the tables as the models of the day defined them).
    if missing_columns("jobs", "run_seconds"):
        op.add_column("jobs", sa.Column("run_seconds", sa.Float(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("run_seconds")
