"""what a page may add to its call: page_items and page_responses policies per session

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 12:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing sessions get the safe defaults: page-made system/assistant items are refused,
    # page-started responses allowed (what every session did before).
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(
            sa.Column("page_items", sa.String(length=16), nullable=False, server_default="refuse")
        )
        batch.add_column(
            sa.Column(
                "page_responses", sa.String(length=16), nullable=False, server_default="allow"
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("page_responses")
        batch.drop_column("page_items")
