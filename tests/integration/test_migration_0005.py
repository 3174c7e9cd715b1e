"""Migration 0005 (usage columns, webhook outbox) on SQLite and PostgreSQL.

The migrated schema matches the models exactly (Alembic's own comparison finds nothing),
existing sessions get zero usage and are not announced, and the revision downgrades and
upgrades again cleanly.
"""

from __future__ import annotations

import asyncio

from alembic import command

from broker.db.migrate import alembic_config, upgrade_database
from tests.support.migrations import execute, schema_diff


async def check_round_trip(url: str) -> None:
    await asyncio.to_thread(command.downgrade, alembic_config(url), "0004")
    # A session from before 0005, with the columns 0004 knows.
    await execute(
        url,
        "INSERT INTO sessions (id, owner_key_id, state, provider, model, instructions, voice,"
        " tools, sideband_enabled, sideband_state, metadata, max_duration_s, idle_timeout_s,"
        " max_tool_calls, max_concurrent_tools, max_argument_bytes, tamper_policy, created_at)"
        " VALUES ('sess_old', 'key_old', 'ended', 'emulator', 'm', 'i', 'v', '[]', true,"
        " 'closed', '{}', 60, 60, 1, 1, 100, 'revert', CURRENT_TIMESTAMP)",
    )
    await asyncio.to_thread(upgrade_database, url)
    assert await schema_diff(url) == []
    [row] = await execute(
        url,
        "SELECT notify_ended, usage_responses, usage_total_tokens, usage_input_cached_tokens"
        " FROM sessions WHERE id = 'sess_old'",
    )
    assert (bool(row[0]), row[1], row[2], row[3]) == (False, 0, 0, 0)
    assert await execute(url, "SELECT count(*) FROM webhook_deliveries") == [(0,)]


async def test_the_schema_is_the_models_and_the_data_comes_through(migrated_url: str) -> None:
    assert await schema_diff(migrated_url) == []
    await check_round_trip(migrated_url)
