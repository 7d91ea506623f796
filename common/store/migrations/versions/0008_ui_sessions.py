"""ui_sessions: the web dashboard's server-side sign-in sessions

Until now a dashboard session lived only in its signed cookie; those cookies no longer sign
anyone in (their holders sign in again). The table starts empty.

Revision ID: 0008
Revises: 0007
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Only when missing, as in 0006: a store the old scheme's version 1 created from later
    # models has it already.
    if sa.inspect(op.get_bind()).has_table("ui_sessions"):
        return
    op.create_table(
        "ui_sessions",
        sa.Column("id", sa.String(64), primary_key=True),
        # CASCADE: deleting a token deletes its sessions (revoking one refuses them at lookup).
        sa.Column("token_id", sa.Integer(), sa.ForeignKey("tokens.id", ondelete="CASCADE"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user_agent", sa.String(255), nullable=True),
    )
    op.create_index("ix_ui_sessions_token", "ui_sessions", ["token_id"])
    op.create_index("ix_ui_sessions_expires", "ui_sessions", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_ui_sessions_expires", table_name="ui_sessions")
    op.drop_index("ix_ui_sessions_token", table_name="ui_sessions")
    op.drop_table("ui_sessions")
