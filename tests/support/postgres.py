"""A throwaway PostgreSQL database on 127.0.0.1:5432 for tests that need the real server."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from broker.db.migrate import upgrade_database

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


@asynccontextmanager
async def fresh_pg_database() -> AsyncIterator[str]:
    """Yield the URL of a new, migrated database; it is dropped afterwards.

    Skips on a machine without PostgreSQL or asyncpg, and fails instead when ``CI=true``.
    """
    from tests.conftest import skip_or_fail  # the one place that knows about CI

    try:
        import asyncpg
    except ImportError:
        skip_or_fail("asyncpg is not installed (the postgres extra)")
    try:
        admin = await asyncpg.connect(ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        skip_or_fail(f"PostgreSQL is not reachable at 127.0.0.1:5432: {exc}")
    name = f"broker_test_{secrets.token_hex(6)}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    try:
        await asyncio.to_thread(upgrade_database, url)
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
