"""job_tags (a job's tags, which the jobs list filters by)

No existing job has tags: the table starts empty.

Revision ID: 0006
Revises: 0005
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Only when missing, as in 0005: a store the old scheme's version 1 created from later
    # models has it already.
    if sa.inspect(op.get_bind()).has_table("job_tags"):
        return
    op.create_table(
        "job_tags",
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id"), primary_key=True),
        sa.Column("tag", sa.String(64), primary_key=True),
        sa.Column("position", sa.Integer(), nullable=False),
    )
    op.create_index("ix_job_tags_tag", "job_tags", ["tag"])


def downgrade() -> None:
    op.drop_index("ix_job_tags_tag", table_name="job_tags")
    op.drop_table("job_tags")
