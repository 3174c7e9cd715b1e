"""A background loop's database step runs to its end when the loop is cancelled.

Cut mid-statement, an aiosqlite transaction leaves SQLite's write lock with a connection only
the garbage collector closes (measured: about a third of such cuts left the next writer
locked out), which once held a stopping broker for its 30 s busy timeout.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from broker.db.shielded import finish_step

CUTS = 20


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    # A short busy timeout: a lock left behind shows as an error, not a 30 s wait.
    engine = create_async_engine(
        f"sqlite+aiosqlite:///{tmp_path / 'loop.db'}", connect_args={"timeout": 1.0}
    )
    async with engine.begin() as c:
        await c.execute(text("PRAGMA journal_mode=WAL"))
        await c.execute(text("CREATE TABLE head (n INTEGER)"))
        await c.execute(text("INSERT INTO head VALUES (0)"))
        await c.execute(text("CREATE TABLE rows (n INTEGER, body TEXT)"))
    try:
        yield engine
    finally:
        await engine.dispose()


async def test_a_cancelled_loop_leaves_no_write_lock_behind(engine: AsyncEngine) -> None:
    async def step() -> None:
        async with engine.begin() as c:
            await c.execute(text("UPDATE head SET n = n + 1"))
            await c.execute(text("SELECT n FROM rows ORDER BY n DESC LIMIT 5"))
            await c.execute(
                text("INSERT INTO rows (n, body) VALUES (:n, :body)"),
                [{"n": i, "body": "x" * 50} for i in range(20)],
            )

    async def loop() -> None:
        while True:
            await finish_step(step())

    chance = random.Random(7)
    for _ in range(CUTS):
        running = asyncio.create_task(loop())
        await asyncio.sleep(chance.uniform(0.001, 0.03))
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        # The next writer gets the lock at once (within the 1 s busy timeout).
        async with engine.begin() as c:
            await c.execute(text("INSERT INTO rows (n, body) VALUES (-1, 'after')"))
    async with engine.connect() as c:
        steps = (await c.execute(text("SELECT n FROM head"))).scalar_one()
        rows = (await c.execute(text("SELECT count(*) FROM rows"))).scalar_one()
    # Every step that began finished whole: 20 rows per step, plus one per cut.
    assert rows == steps * 20 + CUTS


async def test_a_step_past_its_bound_is_cut_off_and_the_cancellation_goes_on() -> None:
    finished = asyncio.Event()

    async def slow() -> None:
        await asyncio.sleep(10)
        finished.set()

    running = asyncio.create_task(finish_step(slow(), bound_s=0.05))
    await asyncio.sleep(0.01)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert not finished.is_set()
