"""Migration 0015 (a session's trace parent) on SQLite and PostgreSQL.

A session stored before it has no trace parent, a new one keeps a 55-character
``traceparent``, the migrated schema matches the models exactly, and the revision downgrades
and upgrades again.
"""

from __future__ import annotations

import asyncio

from alembic import command

from broker.db.migrate import alembic_config, upgrade_database
from tests.integration.test_migration_0007 import _SESSION
from tests.support.migrations import execute, schema_diff

TRACE_PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def check_round_trip(url: str) -> None:
    """Invariant: 0015 is additive: a row written by the release before it reads with no trace
    parent (its call is linked to nothing), and the column holds a whole ``traceparent``;
    downgrading drops it and leaves the rows."""
    await asyncio.to_thread(command.downgrade, alembic_config(url), "0014")
    await execute(url, _SESSION.format(id="sess_old"))
    await asyncio.to_thread(upgrade_database, url)
    assert await schema_diff(url) == []
    await execute(
        url,
        _SESSION.format(id="sess_new"),
        f"UPDATE sessions SET trace_parent = '{TRACE_PARENT}' WHERE id = 'sess_new'",
    )
    rows = await execute(url, "SELECT id, trace_parent FROM sessions ORDER BY id")
    assert [tuple(r) for r in rows] == [("sess_new", TRACE_PARENT), ("sess_old", None)]
    await asyncio.to_thread(command.downgrade, alembic_config(url), "0014")
    assert [tuple(r) for r in await execute(url, "SELECT id FROM sessions ORDER BY id")] == [
        ("sess_new",),
        ("sess_old",),
    ]
    await asyncio.to_thread(upgrade_database, url)
    assert await schema_diff(url) == []


async def test_the_schema_is_the_models_and_the_data_comes_through(migrated_url: str) -> None:
    assert await schema_diff(migrated_url) == []
    await check_round_trip(migrated_url)
