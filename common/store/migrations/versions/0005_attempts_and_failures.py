"""attempts (one row per attempt: the job's timeline) and jobs.failures (failures apart from interruptions)

jobs.failures is filled in from what the store knew before: every ended attempt that was not an
interruption was a failure (attempts - interruptions), except the attempt that is running, or
that finished the job (succeeded, cancelled, failed by its own outcome). A job that failed at a
claim (a cap reached: "worker lost ..." or "interrupted too often ...") had no such attempt. The
attempts of jobs before this revision have no rows: their timeline starts with the next claim.

Revision ID: 0005
Revises: 0004
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from common.store.migrations.helpers import missing_columns

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Only what is missing, as in 0002: a store that the old scheme's version 1 created from
    # later models has both already.
    if not sa.inspect(op.get_bind()).has_table("attempts"):
        _create_attempts()
    if "failures" in missing_columns("jobs", "failures"):
        op.add_column("jobs", sa.Column("failures", sa.Integer(), server_default="0", nullable=False))
        _count_failures()


def _create_attempts() -> None:
    op.create_table(
        "attempts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cause", sa.String(32), nullable=True),
        sa.Column("stop", sa.String(32), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("resumed_from", sa.JSON(), nullable=True),
        sa.Column("lost_s", sa.Float(), nullable=True),
        sa.UniqueConstraint("job_id", "number", name="uq_attempts_job_number"),
    )


def _count_failures() -> None:
    op.execute(
        "UPDATE jobs SET failures = CASE"
        " WHEN status IN ('queued', 'waiting', 'interrupted')"
        "   OR failure_reason LIKE 'worker lost: gave up%' OR failure_reason LIKE 'interrupted too often%'"
        "   THEN attempts - interruptions"
        " ELSE attempts - interruptions - 1 END"
    )
    op.execute("UPDATE jobs SET failures = 0 WHERE failures < 0")


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("failures")
    op.drop_table("attempts")
