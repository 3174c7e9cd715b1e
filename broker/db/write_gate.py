"""Turns for the hot write transactions on SQLite, urgent ones first.

SQLite lets one transaction write at a time. A second writer waits in SQLite's busy handler,
which *sleeps* between tries (1, 2, 5, 10, 15, 20, 25 … ms), so it wakes late even when the
lock was free a microsecond after it began to wait: a tool decision waiting behind the event
log's group commit paid 10–20 ms for a 3 ms write. Taking turns here instead, on the event
loop, a waiter starts the moment the previous writer commits, and a tool decision (urgent)
goes before the event log (routine), whose events only wait a little longer.

PostgreSQL locks rows, not the database: the gate is open there (every turn is immediate).
Only the hot paths take turns (tool decisions and settlements, the event log); the rest
still rely on the busy timeout, which they rarely meet.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from typing import Final

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

_INFO_KEY: Final = "broker.write_gate"


class WriteGate:
    """One writer at a time, urgent writers first (see the module docstring).

    Args:
        enabled: ``False`` (PostgreSQL): every turn is granted at once.
    """

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self._held = False
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._routine: deque[asyncio.Future[None]] = deque()

    def bind(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        """Make this the gate every holder of ``sessionmaker`` finds (:meth:`of`)."""
        info = dict(sessionmaker.kw.get("info") or {})
        info[_INFO_KEY] = self
        sessionmaker.configure(info=info)

    @classmethod
    def of(cls, sessionmaker: async_sessionmaker[AsyncSession]) -> WriteGate:
        """The gate bound to ``sessionmaker``; an open one if none is (a script, a test)."""
        kw = getattr(sessionmaker, "kw", None) or {}
        found = (kw.get("info") or {}).get(_INFO_KEY)
        return found if isinstance(found, WriteGate) else cls(enabled=False)

    @contextlib.asynccontextmanager
    async def turn(self, *, urgent: bool) -> AsyncIterator[None]:
        """Hold the turn for one write transaction."""
        if not self.enabled:
            yield
            return
        await self._acquire(urgent)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, urgent: bool) -> None:
        if not self._held and not self._urgent and (urgent or not self._routine):
            self._held = True
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        (self._urgent if urgent else self._routine).append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # granted just as it was cancelled: pass the turn on
            else:
                with contextlib.suppress(ValueError):
                    (self._urgent if urgent else self._routine).remove(waiter)
            raise

    def _release(self) -> None:
        """Hand the turn to the next waiter (urgent first), or free the gate."""
        for queue in (self._urgent, self._routine):
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)  # the turn passes on: _held stays True
                    return
        self._held = False

    @property
    def waiting(self) -> int:
        return len(self._urgent) + len(self._routine)
