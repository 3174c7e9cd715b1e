"""Wake-ups for readers of a session's event log, signalled by its writers after each commit.

An event stream (``broker/api/events_stream.py``) waits here instead of polling the database:
the event log's writers (:mod:`broker.record.event_log`) call :meth:`EventWakeups.notify` once their
transaction has committed, and every stream of that session reads the new events at once.
Only writers in this process can signal; events another broker process writes are found by
the streams' slow fallback poll.

No state outlives its watchers: a session nobody streams costs a dict lookup per write.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterator


class EventWakeups:
    """Per-session wake-ups; one per app (``keys.EVENT_LOG``'s ``wakeups``).

    Not thread-safe: writers and readers run on the app's event loop.
    """

    def __init__(self) -> None:
        self._current: dict[str, asyncio.Event] = {}
        """The event the session's watchers wait on now; replaced after each notify, so a
        wait never sees a write that was signalled before it armed."""
        self._watchers: Counter[str] = Counter()

    def notify(self, session_id: str) -> None:
        """Wake every watcher of ``session_id``: new events are committed. Never blocks."""
        event = self._current.pop(session_id, None)
        if event is not None:
            event.set()

    def notify_all(self) -> None:
        """Wake every watcher (shutdown: streams must notice it at once)."""
        for session_id in list(self._current):
            self.notify(session_id)

    @contextlib.contextmanager
    def watch(self, session_id: str) -> Iterator[Watch]:
        """Watch one session's log for as long as the block runs."""
        self._watchers[session_id] += 1
        try:
            yield Watch(self, session_id)
        finally:
            self._watchers[session_id] -= 1
            if self._watchers[session_id] <= 0:
                del self._watchers[session_id]
                self._current.pop(session_id, None)

    def watching(self, session_id: str) -> int:
        """How many watchers the session has (for tests and diagnostics)."""
        return self._watchers[session_id]

    def _ticket(self, session_id: str) -> asyncio.Event:
        event = self._current.get(session_id)
        if event is None:
            event = self._current[session_id] = asyncio.Event()
        return event


class Watch:
    """One reader's view of a session's wake-ups: :meth:`arm` before reading, then :meth:`wait`."""

    def __init__(self, wakeups: EventWakeups, session_id: str) -> None:
        self._wakeups = wakeups
        self._session_id = session_id
        self._ticket: asyncio.Event | None = None

    def arm(self) -> None:
        """Call before reading the log.

        A commit signalled after this ends the next wait at once, so an event written while
        the reader was busy is never slept over.
        """
        self._ticket = self._wakeups._ticket(self._session_id)

    async def wait(self, timeout: float) -> bool:  # noqa: ASYNC109 - the bound is the point
        """Wait until a writer signals (since :meth:`arm`) or ``timeout`` seconds pass.

        Returns whether a writer signalled. Cancellation-safe: nothing to undo.
        """
        if self._ticket is None:
            self._ticket = self._wakeups._ticket(self._session_id)
        ticket = self._ticket
        if not ticket.is_set():
            try:
                async with asyncio.timeout(timeout):
                    await ticket.wait()
            except TimeoutError:
                # Kept armed: a signal between this wait and the next is not lost.
                return False
        self._ticket = None
        return True
