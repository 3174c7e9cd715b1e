"""session limits, tamper policy, offer jti; used client secrets

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 14:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Rows created before the limits existed get the settings' defaults of this release.
_DEFAULTS = {
    "max_duration_s": 1800,
    "idle_timeout_s": 300,
    "max_tool_calls": 50,
    "max_concurrent_tools": 4,
    "max_argument_bytes": 32768,
}


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        for name, default in _DEFAULTS.items():
            batch.add_column(
                sa.Column(name, sa.Integer(), nullable=False, server_default=str(default))
            )
        batch.add_column(
            sa.Column(
                "tamper_policy", sa.String(length=16), nullable=False, server_default="revert"
            )
        )
        batch.add_column(sa.Column("offer_jti", sa.String(length=64), nullable=True))
    op.create_table(
        "used_client_secrets",
        sa.Column("jti", sa.String(length=64), nullable=False),
        sa.Column("session_id", sa.String(length=40), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name=op.f("fk_used_client_secrets_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("jti", name=op.f("pk_used_client_secrets")),
    )


def downgrade() -> None:
    op.drop_table("used_client_secrets")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("offer_jti")
        batch.drop_column("tamper_policy")
        for name in reversed(list(_DEFAULTS)):
            batch.drop_column(name)
