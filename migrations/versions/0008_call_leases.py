"""several broker instances on one database: instances, call leases, commands to a call's owner

Additive only (new tables), so a broker of the previous release keeps working on a database
upgraded to this revision during a rolling deploy.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 19:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "broker_instances",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("draining", sa.Boolean(), nullable=False),
        sa.Column("shared_signing_key", sa.Boolean(), nullable=False),
        sa.Column("key_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("version", sa.String(length=40), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_broker_instances")),
    )
    op.create_table(
        "call_leases",
        sa.Column("session_id", sa.String(length=40), nullable=False),
        sa.Column("owner_id", sa.String(length=64), nullable=False),
        sa.Column("token", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("handoff", sa.Boolean(), nullable=False),
        sa.Column("successor_id", sa.String(length=64), nullable=True),
        sa.Column("successor_ready", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name=op.f("fk_call_leases_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("session_id", name=op.f("pk_call_leases")),
    )
    op.create_index("ix_call_leases_owner", "call_leases", ["owner_id"])
    op.create_table(
        "call_commands",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("session_id", sa.String(length=40), nullable=False),
        sa.Column("owner_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name=op.f("fk_call_commands_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_call_commands")),
    )
    op.create_index("ix_call_commands_owner_status", "call_commands", ["owner_id", "status"])


def downgrade() -> None:
    op.drop_index("ix_call_commands_owner_status", table_name="call_commands")
    op.drop_table("call_commands")
    op.drop_index("ix_call_leases_owner", table_name="call_leases")
    op.drop_table("call_leases")
    op.drop_table("broker_instances")
