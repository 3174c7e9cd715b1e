"""Any task cancelled inside a SQLite transaction: the next writer is not locked out.

SQLAlchemy invalidates a connection cut mid-statement; aiosqlite's can keep its transaction
(and SQLite's write lock) until the garbage collector breaks the cycle holding it. The
broker's engine collects right after such an invalidation (broker/db/engine.py).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.db.engine import create_engine

CUTS = 15
BUSY_S = 0.3
"""Far under what a kept lock lasted without the collection (0.6 s to seconds)."""


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'cut.db'}", sqlite_busy_timeout_s=BUSY_S)
    async with engine.begin() as c:
        await c.execute(text("CREATE TABLE head (n INTEGER)"))
        await c.execute(text("INSERT INTO head VALUES (0)"))
        await c.execute(text("CREATE TABLE rows (n INTEGER, body TEXT)"))
    try:
        yield engine
    finally:
        await engine.dispose()


async def test_a_transaction_cut_by_a_cancel_does_not_lock_the_next_writer_out(
    engine: AsyncEngine,
) -> None:
    async def writes() -> None:
        while True:
            async with engine.begin() as c:
                await c.execute(text("UPDATE head SET n = n + 1"))
                await c.execute(text("SELECT n FROM rows ORDER BY n DESC LIMIT 5"))
                await c.execute(
                    text("INSERT INTO rows (n, body) VALUES (:n, :body)"),
                    [{"n": i, "body": "x" * 50} for i in range(20)],
                )

    chance = random.Random(2)
    locked_out = 0
    for _ in range(CUTS):
        running = asyncio.create_task(writes())
        await asyncio.sleep(chance.uniform(0.001, 0.05))
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        await asyncio.sleep(0.2)  # the collection scheduled on the invalidation has run
        try:
            async with engine.begin() as c:
                await c.execute(text("INSERT INTO rows (n, body) VALUES (-1, 'after')"))
        except OperationalError:
            locked_out += 1
    assert locked_out == 0, f"{locked_out} of {CUTS} cuts left SQLite's write lock behind"
