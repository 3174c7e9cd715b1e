"""event-log counters per session: stored, coalescible (count and bytes), dropped, errors, last

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COUNTER_COLUMNS = (
    "events_stored",
    "events_coalescible",
    "events_coalescible_bytes",
    "events_dropped",
    "events_errors",
)


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        for name in COUNTER_COLUMNS:
            batch.add_column(
                sa.Column(name, sa.BigInteger(), nullable=False, server_default=sa.text("0"))
            )
        batch.add_column(sa.Column("last_event_at", sa.DateTime(timezone=True), nullable=True))
    # Existing sessions get what the session list used to count from their rows. Their
    # coalescible budget starts at zero: which stored rows were coalescible is a rule of the
    # code (broker.record.event_classes), not of the schema, and a migration never imports the app;
    # nearly all of them have ended, and a live one can at most store one budget more.
    op.execute(
        """
        UPDATE sessions SET
            events_stored = (
                SELECT count(*) FROM session_events e WHERE e.session_id = sessions.id
            ),
            events_errors = (
                SELECT count(*) FROM session_events e
                WHERE e.session_id = sessions.id AND e.type = 'error' AND e.direction = 'in'
            ),
            last_event_at = (
                SELECT max(e.at) FROM session_events e WHERE e.session_id = sessions.id
            )
        WHERE EXISTS (SELECT 1 FROM session_events e WHERE e.session_id = sessions.id)
        """
    )


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("last_event_at")
        for name in reversed(COUNTER_COLUMNS):
            batch.drop_column(name)
