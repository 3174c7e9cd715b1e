"""trusted server sessions, approval-gated tool calls, long-running tools' callbacks

Additive only: every existing session is a browser (``webrtc``) session with no server
tools; the two new tables start empty. A broker of the previous release keeps working on a
database upgraded to this revision during a rolling deploy (it never writes the new columns,
whose server defaults say what it means).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05 03:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(
            sa.Column("connection_type", sa.String(16), nullable=False, server_default="webrtc")
        )
        batch.add_column(sa.Column("service_id", sa.String(128), nullable=True))
        batch.add_column(sa.Column("server_tools", sa.JSON(), nullable=True))
    op.create_table(
        "approvals",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("session_id", sa.String(40), nullable=False),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("call_id", sa.String(128), nullable=False),
        sa.Column("tool", sa.String(100), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_by", sa.String(40), nullable=True),
        sa.Column("reason", sa.String(500), nullable=True),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name=op.f("fk_approvals_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approvals")),
        sa.UniqueConstraint("session_id", "call_id", name="uq_approvals_session_call"),
    )
    op.create_index("ix_approvals_status_expires_at", "approvals", ["status", "expires_at"])
    op.create_index("ix_approvals_tenant_requested_at", "approvals", ["tenant_id", "requested_at"])
    op.create_table(
        "tool_callbacks",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(40), nullable=False),
        sa.Column("call_id", sa.String(128), nullable=False),
        sa.Column("tool", sa.String(100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("result_status", sa.String(16), nullable=True),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name=op.f("fk_tool_callbacks_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tool_callbacks")),
    )
    op.create_index("ix_tool_callbacks_session_call", "tool_callbacks", ["session_id", "call_id"])


def downgrade() -> None:
    op.drop_index("ix_tool_callbacks_session_call", table_name="tool_callbacks")
    op.drop_table("tool_callbacks")
    op.drop_index("ix_approvals_tenant_requested_at", table_name="approvals")
    op.drop_index("ix_approvals_status_expires_at", table_name="approvals")
    op.drop_table("approvals")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("server_tools")
        batch.drop_column("service_id")
        batch.drop_column("connection_type")
