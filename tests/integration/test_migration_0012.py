"""Migration 0012 (tenants, keys' tenants, grants and quotas) on SQLite and PostgreSQL.

What existed before keeps doing what it did: every key and session is the default tenant's,
every key keeps every tool and no quota; the schema matches the models; the revision
downgrades and upgrades again.
"""

from __future__ import annotations

import asyncio
import json

from alembic import command

from broker.db.migrate import alembic_config, upgrade_database
from tests.integration.test_migration_0007 import _SESSION
from tests.support.migrations import execute, schema_diff

_KEY = (
    "INSERT INTO api_keys (id, name, key_hash, scopes, created_at)"
    " VALUES ('key_old', 'old', 'h', '[\"sessions:create\"]', CURRENT_TIMESTAMP)"
)


async def check_round_trip(url: str) -> None:
    """Invariant: a key and a session stored by the release before 0012 are the default
    tenant's after it, and the key still grants every tool (``["*"]``) with no quota."""
    await asyncio.to_thread(command.downgrade, alembic_config(url), "0011")
    await execute(url, _KEY, _SESSION.format(id="sess_old"))
    await asyncio.to_thread(upgrade_database, url)
    assert await schema_diff(url) == []
    [key] = await execute(url, "SELECT tenant_id, tool_grants, quotas FROM api_keys")
    grants = key[1] if isinstance(key[1], list) else json.loads(key[1])
    assert (key[0], grants, key[2]) == ("default", ["*"], None)
    [session] = await execute(url, "SELECT tenant_id, erased_at FROM sessions")
    assert tuple(session) == ("default", None)
    assert await execute(url, "SELECT id, name FROM tenants") == [("default", "default")]


async def test_the_schema_is_the_models_and_the_data_comes_through(migrated_url: str) -> None:
    assert await schema_diff(migrated_url) == []
    await check_round_trip(migrated_url)
