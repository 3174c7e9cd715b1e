"""tenants: teams sharing a broker, keys' tenants, tool grants and quotas, sessions' tenants

Additive only, with server defaults that keep what the previous release did: every existing
key and session belongs to the default tenant, every existing key keeps every tool (``["*"]``)
and no quota. A broker of the previous release keeps working on a database upgraded to this
revision during a rolling deploy: the keys and sessions it makes get the same defaults.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 01:30:00
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFAULT_TENANT = "default"


def upgrade() -> None:
    tenants = op.create_table(
        "tenants",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retention_days", sa.Integer(), nullable=True),
        sa.Column("quotas", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
    )
    op.bulk_insert(
        tenants,
        [{"id": DEFAULT_TENANT, "name": "default", "created_at": datetime.now(UTC)}],
    )
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(
            sa.Column("tenant_id", sa.String(40), nullable=True, server_default=DEFAULT_TENANT)
        )
        batch.add_column(
            sa.Column("tool_grants", sa.JSON(), nullable=False, server_default='["*"]')
        )
        batch.add_column(sa.Column("quotas", sa.JSON(), nullable=True))
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(
            sa.Column("tenant_id", sa.String(40), nullable=False, server_default=DEFAULT_TENANT)
        )
        batch.add_column(sa.Column("erased_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_sessions_tenant_created_at", "sessions", ["tenant_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_sessions_tenant_created_at", table_name="sessions")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("erased_at")
        batch.drop_column("tenant_id")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("quotas")
        batch.drop_column("tool_grants")
        batch.drop_column("tenant_id")
    op.drop_table("tenants")
