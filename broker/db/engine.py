"""Engine and sessionmaker setup for SQLite (aiosqlite) and PostgreSQL (asyncpg)."""

from __future__ import annotations

import asyncio
import gc
from typing import Any, Final

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from broker.db.fence import FencedSession

SQLITE_BUSY_TIMEOUT_S: Final = 30.0
"""How long a SQLite writer waits for another's write lock before it gives up."""


def to_async_url(url: str) -> str:
    """Accept plain ``sqlite:///`` / ``postgresql://`` URLs and pick the async driver."""
    parsed = make_url(url)
    driver = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}.get(
        parsed.drivername
    )
    return parsed.set(drivername=driver).render_as_string(hide_password=False) if driver else url


def create_engine(
    url: str,
    *,
    idle_transaction_timeout_s: float | None = None,
    sqlite_busy_timeout_s: float = SQLITE_BUSY_TIMEOUT_S,
) -> AsyncEngine:
    """An async engine; SQLite gets WAL, a busy timeout and enforced foreign keys.

    ``idle_transaction_timeout_s`` (PostgreSQL): the server ends a session left idle inside
    a transaction this long. A broker instance paused mid-transaction (SIGSTOP, a frozen
    VM) would otherwise hold its row locks, a call's lease among them, and keep every other
    instance from taking its calls for as long as it stays paused.
    """
    url = to_async_url(url)
    is_sqlite = make_url(url).get_backend_name() == "sqlite"
    connect_args: dict[str, Any] = {"timeout": sqlite_busy_timeout_s} if is_sqlite else {}
    if not is_sqlite and idle_transaction_timeout_s is not None:
        timeout_ms = str(max(1, round(idle_transaction_timeout_s * 1000)))
        connect_args["server_settings"] = {"idle_in_transaction_session_timeout": timeout_ms}
    engine = create_async_engine(
        url,
        connect_args=connect_args,
        pool_pre_ping=not is_sqlite,
        # SQL parameters hold tool arguments and outputs, transcripts and key hashes: never
        # in a log line or an exception message, whatever the log level.
        hide_parameters=True,
    )
    if is_sqlite:
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine.pool, "invalidate", _collect_cut_connection)
    return engine


GC_AFTER_INVALIDATE_S: Final = (0.05, 1.0)
"""When, after a SQLite connection is invalidated, the garbage collector runs."""


def _collect_cut_connection(_dbapi_connection: Any, _record: Any, _error: Any) -> None:
    """A task cancelled mid-statement (SQLAlchemy invalidates its connection): collect soon.

    Cut that way, an aiosqlite connection can keep its open transaction, and so SQLite's
    write lock, until the garbage collector breaks the reference cycle that holds it; every
    other writer meanwhile waits out its busy timeout (30 s). Measured: a third of such cuts
    left the next writer locked out, for up to seconds; with a collection right after, none.
    Background loops avoid the cut altogether (broker.db.shielded.finish_step); this covers
    any other task (a call's, a request's) cancelled inside a transaction.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        gc.collect()
        return
    for delay in GC_AFTER_INVALIDATE_S:
        loop.call_later(delay, gc.collect)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    # Every commit checks the fence of the call its task works for (broker.db.fence).
    return async_sessionmaker(engine, expire_on_commit=False, sync_session_class=FencedSession)
