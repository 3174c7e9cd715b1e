"""Writes that must complete even when their caller is cancelled, still owned by someone."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

_T = TypeVar("_T")


class ShieldedWrites:
    """Runs coroutines shielded from their caller's cancellation, and keeps them owned.

    ``asyncio.shield`` alone leaves the inner work running unowned if the caller is
    cancelled; here it stays in a set that :meth:`drain` awaits before the resources it uses
    (the database engine) are closed.
    """

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    async def run(self, coro: Coroutine[Any, Any, _T], name: str) -> _T:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(task)

    async def drain(self) -> None:
        """Wait for every write still running (they are short database transactions)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


STEP_FINISH_S = 5.0
"""How long a cancelled loop's database step may still run before it is cut off anyway."""


async def finish_step(step: Awaitable[_T], bound_s: float = STEP_FINISH_S) -> _T:
    """Run one step of a background loop to its end, even if the loop is cancelled meanwhile.

    Then the cancellation goes on. A transaction cut mid-statement on SQLite (aiosqlite)
    leaves the database's write lock with a connection that only the garbage collector
    closes: every other writer then waits out its busy timeout (30 s), which held a stopping
    broker past its grace. Loops that are cancelled at shutdown (the audit chainer, the
    sweepers, call ownership) therefore let their step finish, bounded by ``bound_s``.
    """
    task = asyncio.ensure_future(step)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        try:
            await asyncio.wait({task}, timeout=bound_s)
        finally:
            if not task.done():
                task.cancel()
        raise
