"""A SQLite transaction cut by a cancel must not lock the next writer out.

SQLAlchemy invalidates a connection cut mid-statement; aiosqlite's can keep its transaction
(and SQLite's write lock) until the garbage collector breaks the cycle holding it (measured:
about a third of such cuts, for 0.6 s to "until the next collection"), which once held a
stopping broker for its 30 s busy timeout. Two defences, each tested alone:

- the broker's engine collects right after such an invalidation (broker/db/engine.py);
- background loops let a step finish before a cancel goes on (broker.db.shielded.finish_step).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from broker.db.engine import create_engine
from broker.db.shielded import finish_step

CUTS = 15
BUSY_S = 0.3
"""Far under what a kept lock lasted without a defence (0.6 s to seconds)."""


async def made(engine: AsyncEngine) -> AsyncEngine:
    async with engine.begin() as c:
        await c.execute(text("PRAGMA journal_mode=WAL"))
        await c.execute(text("CREATE TABLE head (n INTEGER)"))
        await c.execute(text("INSERT INTO head VALUES (0)"))
        await c.execute(text("CREATE TABLE rows (n INTEGER, body TEXT)"))
    return engine


@pytest.fixture
async def broker_engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'cut.db'}", sqlite_busy_timeout_s=BUSY_S)
    try:
        yield await made(engine)
    finally:
        await engine.dispose()


@pytest.fixture
async def plain_engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """No collection on invalidation: only finish_step stands between a cut and a lock."""
    engine = create_async_engine(
        f"sqlite+aiosqlite:///{tmp_path / 'plain.db'}", connect_args={"timeout": BUSY_S}
    )
    try:
        yield await made(engine)
    finally:
        await engine.dispose()


def step_of(engine: AsyncEngine) -> Callable[[], Awaitable[None]]:
    """One transaction of a busy loop: lock, read, write a batch (as the audit chainer)."""

    async def step() -> None:
        async with engine.begin() as c:
            await c.execute(text("UPDATE head SET n = n + 1"))
            await c.execute(text("SELECT n FROM rows ORDER BY n DESC LIMIT 5"))
            await c.execute(
                text("INSERT INTO rows (n, body) VALUES (:n, :body)"),
                [{"n": i, "body": "x" * 50} for i in range(20)],
            )

    return step


async def cut_repeatedly(engine: AsyncEngine, loop: Callable[[], Awaitable[None]]) -> int:
    """Start and cancel ``loop`` :data:`CUTS` times; how many cuts locked the next writer out."""
    chance = random.Random(2)
    locked_out = 0
    for _ in range(CUTS):
        running = asyncio.ensure_future(loop())
        await asyncio.sleep(chance.uniform(0.001, 0.05))
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        await asyncio.sleep(0.2)  # a collection scheduled on the invalidation has run
        try:
            async with engine.begin() as c:
                await c.execute(text("INSERT INTO rows (n, body) VALUES (-1, 'after')"))
        except OperationalError:
            locked_out += 1
    return locked_out


async def test_the_broker_engine_lets_no_cut_transaction_keep_the_lock(
    broker_engine: AsyncEngine,
) -> None:
    step = step_of(broker_engine)

    async def loop() -> None:
        while True:
            await step()

    locked_out = await cut_repeatedly(broker_engine, loop)
    assert locked_out == 0, f"{locked_out} of {CUTS} cuts left SQLite's write lock behind"


async def test_a_loop_cancelled_between_steps_finishes_the_step_under_way(
    plain_engine: AsyncEngine,
) -> None:
    step = step_of(plain_engine)

    async def loop() -> None:
        while True:
            await finish_step(step())

    locked_out = await cut_repeatedly(plain_engine, loop)
    assert locked_out == 0, f"{locked_out} of {CUTS} cuts left SQLite's write lock behind"
    async with plain_engine.connect() as c:
        steps = (await c.execute(text("SELECT n FROM head"))).scalar_one()
        rows = (await c.execute(text("SELECT count(*) FROM rows"))).scalar_one()
    # Every step that began finished whole: 20 rows each, and one per cut after it.
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
