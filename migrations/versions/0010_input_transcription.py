"""input transcription: each session's transcription config, and transcription's usage

Additive only (new columns, the usage ones with a server default of 0), so a broker of the
previous release keeps working on a database upgraded to this revision during a rolling
deploy: the sessions it creates have no transcription config (NULL: not transcribed, what it
sends the provider) and no transcription usage.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

USAGE_COLUMNS = (
    "usage_transcriptions",
    "usage_transcription_input_tokens",
    "usage_transcription_output_tokens",
    "usage_transcription_total_tokens",
    "usage_transcription_input_text_tokens",
    "usage_transcription_input_audio_tokens",
    "usage_transcription_ms",
)


def upgrade() -> None:
    # Existing sessions were not transcribed (the broker never asked), and start at zero.
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("input_transcription", sa.JSON(), nullable=True))
        for name in USAGE_COLUMNS:
            batch.add_column(
                sa.Column(name, sa.BigInteger(), nullable=False, server_default=sa.text("0"))
            )


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        for name in reversed(USAGE_COLUMNS):
            batch.drop_column(name)
        batch.drop_column("input_transcription")
