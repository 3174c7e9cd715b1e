"""Writes that must complete even when their caller is cancelled, still owned by someone."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
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
