"""token usage per session, and the webhook outbox (session.ended)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

USAGE_COLUMNS = (
    "usage_responses",
    "usage_input_tokens",
    "usage_output_tokens",
    "usage_total_tokens",
    "usage_input_text_tokens",
    "usage_input_audio_tokens",
    "usage_input_cached_tokens",
    "usage_output_text_tokens",
    "usage_output_audio_tokens",
)


def upgrade() -> None:
    # Existing sessions start at zero usage and announce nothing (their end may be long past).
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(
            sa.Column("notify_ended", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        for name in USAGE_COLUMNS:
            batch.add_column(
                sa.Column(name, sa.BigInteger(), nullable=False, server_default=sa.text("0"))
            )
    op.create_index("ix_sessions_owner_key_id", "sessions", ["owner_key_id"])
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("session_id", sa.String(length=40), nullable=False),
        sa.Column("type", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", sa.Text(), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name=op.f("fk_webhook_deliveries_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
        sa.UniqueConstraint("session_id", "type", name="uq_webhook_deliveries_session_type"),
    )
    # The sender's poll: due pending rows, soonest first.
    op.create_index(
        "ix_webhook_deliveries_status_next",
        "webhook_deliveries",
        ["status", "next_attempt_at"],
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_status_next", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_index("ix_sessions_owner_key_id", table_name="sessions")
    with op.batch_alter_table("sessions") as batch:
        for name in reversed(USAGE_COLUMNS):
            batch.drop_column(name)
        batch.drop_column("notify_ended")
