"""Checking a migration: the schema it leaves against the models, and raw SQL at any revision."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from broker.db.engine import create_engine
from broker.db.migrate import upgrade_database
from broker.db.models import Base


async def schema_diff(url: str) -> list[Any]:
    """Alembic's own comparison of the database at ``url`` with the models (``[]``: none)."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata)
            )
    finally:
        await engine.dispose()


async def execute(url: str, *statements: str) -> list[Any]:
    """Run ``statements`` in one transaction; the rows of the last one (``[]`` if none)."""
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            result: list[Any] = []
            for statement in statements:
                rows = await conn.execute(text(statement))
                result = list(rows.all()) if rows.returns_rows else []
            return result
    finally:
        await engine.dispose()


async def migrated_sqlite(tmp_path: Path) -> str:
    """The URL of a new SQLite database under ``tmp_path``, upgraded to the head revision."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'migrated.db'}"
    await asyncio.to_thread(upgrade_database, url)
    return url
