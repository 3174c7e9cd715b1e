"""Wake-ups for readers of a session's event log, signalled by its writers after each commit.

An event stream (``broker/api/events_stream.py``) waits here instead of polling the database:
the event log's writers (:mod:`broker.record.event_log`) call :meth:`EventWakeups.notify` once their
transaction has committed, and every stream of that session reads the new events at once.
Only writers in this process can signal; events another broker process writes are found by
the streams' slow fallback poll.

The process's event-log writer also hands each watcher the rows it just committed
(:meth:`EventWakeups.publish`): a stream of a call watched here sends them from memory and
reads the database only after a gap (rows another writer stored) or on its fallback poll.
The database stays the source of truth for resuming and for other processes.

No state outlives its watchers: a session nobody streams costs a dict lookup per write.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

MAX_HANDED_ROWS: Final = 1000
"""Rows a watcher holds for its reader at most; past it they are let go and the reader reads
the database (a reader that slow is behind anyway)."""


class EventWakeups:
    """Per-session wake-ups; one per app (``keys.EVENT_LOG``'s ``wakeups``).

    Not thread-safe: writers and readers run on the app's event loop.
    """

    def __init__(self) -> None:
        self._current: dict[str, asyncio.Event] = {}
        """The event the session's watchers wait on now; replaced after each notify, so a
        wait never sees a write that was signalled before it armed."""
        self._watches: dict[str, set[Watch]] = {}

    def notify(self, session_id: str) -> None:
        """Wake every watcher of ``session_id``: events they were not handed are committed.

        By a writer other than the process's event-log writer (or a shutdown). Never blocks.
        """
        for watch in self._watches.get(session_id, ()):
            watch.unseen = True
        self._wake(session_id)

    def publish(self, session_id: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Hand the rows just committed (in ``seq`` order) to the session's watchers.

        And wake them. Never blocks.
        """
        for watch in self._watches.get(session_id, ()):
            watch.hand(rows)
        self._wake(session_id)

    def notify_all(self) -> None:
        """Wake every watcher (shutdown: streams must notice it at once)."""
        for session_id in list(self._current):
            self.notify(session_id)

    def _wake(self, session_id: str) -> None:
        event = self._current.pop(session_id, None)
        if event is not None:
            event.set()

    @contextlib.contextmanager
    def watch(self, session_id: str) -> Iterator[Watch]:
        """Watch one session's log for as long as the block runs."""
        watch = Watch(self, session_id)
        self._watches.setdefault(session_id, set()).add(watch)
        try:
            yield watch
        finally:
            watches = self._watches.get(session_id, set())
            watches.discard(watch)
            if not watches:
                self._watches.pop(session_id, None)
                self._current.pop(session_id, None)

    def watching(self, session_id: str) -> int:
        """How many watchers the session has (for tests and diagnostics)."""
        return len(self._watches.get(session_id, ()))

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
        self._handed: list[Mapping[str, Any]] = []
        self.unseen = False
        """Rows were committed that this watch was not handed: the reader must read the
        database (it clears this before it does). A wake-up without it and without new rows
        is only an early one (a publish it already took), and needs no read."""

    def hand(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Rows committed by this process's writer, for :meth:`take`."""
        if len(self._handed) + len(rows) > MAX_HANDED_ROWS:
            self._handed.clear()  # the reader reads the database: nothing is lost
            self.unseen = True
            return
        self._handed.extend(rows)

    def take(self) -> list[Mapping[str, Any]]:
        """The rows handed since the last take (oldest first), and forget them."""
        rows, self._handed = self._handed, []
        return rows

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
