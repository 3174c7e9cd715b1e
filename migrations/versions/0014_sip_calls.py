"""phone calls: SIP webhook deliveries (deduplicated by webhook-id), sessions' caller and line

Additive only: the new table starts empty, the new session columns are null for every
existing session. A broker of the previous release keeps working on a database upgraded to
this revision during a rolling deploy (it never writes them, and serves no phone calls).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05 04:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sip_deliveries",
        sa.Column("webhook_id", sa.String(128), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("call_id", sa.String(128), nullable=False),
        sa.Column("line", sa.String(64), nullable=True),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("session_id", sa.String(40), nullable=True),
        sa.PrimaryKeyConstraint("webhook_id", name=op.f("pk_sip_deliveries")),
    )
    op.create_index("ix_sip_deliveries_received_at", "sip_deliveries", ["received_at"])
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("sip_line", sa.String(64), nullable=True))
        batch.add_column(sa.Column("caller", sa.String(128), nullable=True))
        batch.add_column(sa.Column("sip_headers", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("sip_headers")
        batch.drop_column("caller")
        batch.drop_column("sip_line")
    op.drop_index("ix_sip_deliveries_received_at", table_name="sip_deliveries")
    op.drop_table("sip_deliveries")
