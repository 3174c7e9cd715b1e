"""tool call item ids (the provider's function call, and our output) for crash recovery

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tool_calls") as batch:
        batch.add_column(sa.Column("item_id", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("output_item_id", sa.String(length=64), nullable=True))
    # Resume and resync look up a session's unfinished calls by status.
    op.create_index("ix_tool_calls_session_status", "tool_calls", ["session_id", "status"])
    op.create_index("ix_sessions_state_sideband", "sessions", ["state", "sideband_enabled"])


def downgrade() -> None:
    op.drop_index("ix_sessions_state_sideband", table_name="sessions")
    op.drop_index("ix_tool_calls_session_status", table_name="tool_calls")
    with op.batch_alter_table("tool_calls") as batch:
        batch.drop_column("output_item_id")
        batch.drop_column("item_id")
