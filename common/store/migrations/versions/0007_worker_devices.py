"""worker_beats.devices: the GPUs and CPU cores a worker reports with its beat

Existing beats have none (NULL: "not reported") until their worker beats again with newer code.

Revision ID: 0007
Revises: 0006
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from common.store.migrations.helpers import missing_columns

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Only when missing, as in 0002: a store that the old scheme's version 1 created from later
    # models has it already.
    if missing_columns("worker_beats", "devices"):
        op.add_column("worker_beats", sa.Column("devices", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("worker_beats") as batch:
        batch.drop_column("devices")
