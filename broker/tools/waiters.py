"""Waiting for a call that another request (or process) owns to settle."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Final

from broker.tools.outcome import CallOutcome

POLL_INTERVAL: Final = 0.2
"""Waiters re-read the row this often, so a winner in another process is seen too."""


class SettledWaiters:
    """The losers of a claim wait here for the winner's outcome.

    A settle in this process wakes them at once (:meth:`notify`); a winner in another
    process is seen by re-reading the row every :data:`POLL_INTERVAL`.
    """

    def __init__(self, read: Callable[[str, str], Awaitable[CallOutcome | None]]) -> None:
        self._read = read
        self._events: dict[tuple[str, str], asyncio.Event] = {}

    async def wait(self, session_id: str, call_id: str, within: float | None) -> CallOutcome | None:
        """The call's outcome once settled; the latest (unsettled or ``None``) on timeout."""
        key = (session_id, call_id)
        event = self._events.setdefault(key, asyncio.Event())
        loop = asyncio.get_running_loop()
        deadline = None if within is None else loop.time() + within
        try:
            while True:
                outcome = await self._read(session_id, call_id)
                if outcome is not None and outcome.answered:
                    return outcome
                wait = POLL_INTERVAL
                if deadline is not None:
                    wait = min(wait, deadline - loop.time())
                    if wait <= 0:
                        return outcome
                try:
                    async with asyncio.timeout(wait):
                        await event.wait()
                except TimeoutError:
                    pass
        finally:
            if self._events.get(key) is event and not event.is_set():
                del self._events[key]

    def notify(self, session_id: str, call_id: str) -> None:
        """The call has settled here: wake whoever waits for it."""
        event = self._events.pop((session_id, call_id), None)
        if event is not None:
            event.set()
