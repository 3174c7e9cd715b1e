"""Migration 0007 (event-log counters on sessions) on SQLite and PostgreSQL.

Existing sessions get their counters backfilled from their stored events, the migrated schema
matches the models exactly, and the revision downgrades and upgrades again cleanly.
"""

from __future__ import annotations

import asyncio

from alembic import command

from broker.db.migrate import alembic_config, upgrade_database
from tests.support.migrations import execute, schema_diff

_SESSION = (
    "INSERT INTO sessions (id, owner_key_id, state, provider, model, instructions, voice,"
    " tools, sideband_enabled, sideband_state, metadata, max_duration_s, idle_timeout_s,"
    " max_tool_calls, max_concurrent_tools, max_argument_bytes, tamper_policy, created_at)"
    " VALUES ('{id}', 'key_old', 'ended', 'emulator', 'm', 'i', 'v', '[]', true,"
    " 'closed', '{{}}', 60, 60, 1, 1, 100, 'revert', CURRENT_TIMESTAMP)"
)
_EVENT = (
    "INSERT INTO session_events (session_id, seq, direction, type, payload, at)"
    " VALUES ('sess_old', {seq}, '{direction}', '{type}', '{{}}', '{at}')"
)


async def check_backfill(url: str) -> None:
    """Invariant: a session stored before 0007 lists after it exactly as it did before (its
    stored events, provider errors and newest event time come from its counters now)."""
    await asyncio.to_thread(command.downgrade, alembic_config(url), "0006")
    await execute(
        url,
        _SESSION.format(id="sess_old"),
        _SESSION.format(id="sess_quiet"),
        _EVENT.format(seq=1, direction="in", type="session.created", at="2026-01-02 03:04:05"),
        _EVENT.format(seq=2, direction="in", type="error", at="2026-01-02 03:04:06"),
        _EVENT.format(seq=3, direction="out", type="error", at="2026-01-02 03:04:07"),
        _EVENT.format(seq=4, direction="in", type="error", at="2026-01-02 03:04:08"),
    )
    await asyncio.to_thread(upgrade_database, url)
    assert await schema_diff(url) == []
    rows = await execute(
        url,
        "SELECT id, events_stored, events_errors, events_dropped, events_coalescible,"
        " last_event_at IS NULL,"
        " last_event_at = (SELECT max(at) FROM session_events e WHERE e.session_id = sessions.id)"
        " FROM sessions WHERE id IN ('sess_old', 'sess_quiet') ORDER BY id",
    )
    assert [(r[0], r[1], r[2], r[3], r[4], bool(r[5])) for r in rows] == [
        ("sess_old", 4, 2, 0, 0, False),
        ("sess_quiet", 0, 0, 0, 0, True),
    ]
    assert bool(rows[0][6])


async def test_the_backfill(migrated_url: str) -> None:
    await check_backfill(migrated_url)
