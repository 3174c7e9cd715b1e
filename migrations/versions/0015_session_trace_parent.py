"""session trace parent: the W3C traceparent of the span that created each session

Additive only (one nullable column), so a broker of the previous release keeps working on a
database upgraded to this revision during a rolling deploy: the sessions it creates have no
trace parent, and their calls' traces are linked to nothing, as before.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05 07:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing sessions were made before the broker read a trace context: they have none.
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("trace_parent", sa.String(55), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("trace_parent")
