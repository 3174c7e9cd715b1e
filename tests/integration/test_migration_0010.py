"""Migration 0010 (input transcription config and usage) on SQLite and PostgreSQL.

A session stored before it reads as not transcribed with zero transcription usage, the
migrated schema matches the models exactly, and the revision downgrades and upgrades again.
"""

from __future__ import annotations

import asyncio

from alembic import command

from broker.db.migrate import alembic_config, upgrade_database
from tests.integration.test_migration_0007 import _SESSION
from tests.support.migrations import execute, schema_diff


async def check_round_trip(url: str) -> None:
    """Invariant: 0010 is additive: a row written by the release before it (which knows none
    of its columns) is read as not transcribed, with zero transcription usage, and its
    response usage is untouched."""
    await asyncio.to_thread(command.downgrade, alembic_config(url), "0009")
    await execute(
        url,
        _SESSION.format(id="sess_old"),
        "UPDATE sessions SET usage_responses = 2, usage_total_tokens = 40 WHERE id = 'sess_old'",
    )
    await asyncio.to_thread(upgrade_database, url)
    assert await schema_diff(url) == []
    [row] = await execute(
        url,
        "SELECT input_transcription IS NULL, usage_responses, usage_total_tokens,"
        " usage_transcriptions, usage_transcription_total_tokens, usage_transcription_ms"
        " FROM sessions WHERE id = 'sess_old'",
    )
    assert (bool(row[0]), *row[1:]) == (True, 2, 40, 0, 0, 0)


async def test_the_schema_is_the_models_and_the_data_comes_through(migrated_url: str) -> None:
    assert await schema_diff(migrated_url) == []
    await check_round_trip(migrated_url)
