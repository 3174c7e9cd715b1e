"""Scratch databases for one benchmark: an SQLite file, or a PostgreSQL database on 5432.

Each is migrated with the broker's own Alembic migrations and removed afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final, Literal

from broker.db.migrate import upgrade_database

DatabaseKind = Literal["sqlite", "postgres"]
PG_ADMIN_DSN: Final = "postgresql://postgres@127.0.0.1:5432/postgres"


class DatabaseUnavailableError(RuntimeError):
    """The database server (or its driver) is not there; the benchmark reports a skip."""


def _sqlite_path(work_dir: Path) -> Path:
    work_dir.mkdir(parents=True, exist_ok=True)
    return work_dir / f"bench-{secrets.token_hex(4)}.db"


def _remove_sqlite(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


@contextlib.asynccontextmanager
async def scratch_database(kind: DatabaseKind, work_dir: Path) -> AsyncIterator[str]:
    """Yield the URL of a new, migrated database of ``kind``; it is removed afterwards.

    Raises:
        DatabaseUnavailableError: PostgreSQL (or asyncpg) is not available.
    """
    if kind == "sqlite":
        path = _sqlite_path(work_dir)
        url = f"sqlite+aiosqlite:///{path}"
        await asyncio.to_thread(upgrade_database, url)
        try:
            yield url
        finally:
            _remove_sqlite(path)
        return
    try:
        import asyncpg  # type: ignore[import-untyped]
    except ImportError as exc:
        raise DatabaseUnavailableError("asyncpg is not installed (the postgres extra)") from exc
    try:
        admin = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        raise DatabaseUnavailableError(f"PostgreSQL is not reachable: {exc}") from exc
    name = f"broker_bench_{secrets.token_hex(6)}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
        try:
            await asyncio.to_thread(upgrade_database, url)
            yield url
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
