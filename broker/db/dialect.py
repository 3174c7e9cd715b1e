"""The one place a statement depends on the database: PostgreSQL in production, SQLite else.

Two things differ: the INSERT that skips a row whose key exists (core ``insert()`` has no
``ON CONFLICT``, each dialect's own has), and reading the database's clock (:func:`db_now`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Float, cast, func
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


def db_now(dialect: str) -> ColumnElement[float]:
    """Seconds since the epoch on the **database's** clock, read when the statement runs.

    Leases and instance heartbeats are compared with this one clock, so instances on hosts
    whose clocks disagree still agree on who owns what. PostgreSQL's ``clock_timestamp()``
    (not ``now()``, which is fixed at the transaction's start: a lease checked late in a long
    transaction must be checked against the time of the check).
    """
    if dialect == "postgresql":
        return cast(func.extract("epoch", func.clock_timestamp()), Float)
    return (func.julianday("now") - 2440587.5) * 86400.0
