"""The one place a statement depends on the database: PostgreSQL in production, SQLite else.

Only the INSERT that skips a row whose key exists differs: core ``insert()`` has no
``ON CONFLICT``, each dialect's own has.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

Executor = AsyncSession | AsyncConnection
"""Statements run on a session or, cheaper on the hot path, straight on a connection."""


def dialect_name(s: Executor) -> str:
    return (s.dialect if isinstance(s, AsyncConnection) else s.get_bind().dialect).name


def conflict_insert(table: Any, dialect: str) -> postgresql.Insert | sqlite.Insert:
    """An INSERT into ``table`` (a model or a Core table) that takes ``on_conflict_do_nothing``.

    ``dialect``: :func:`dialect_name` of the executor it runs on (statements built once are
    built for each dialect).
    """
    if dialect == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)
