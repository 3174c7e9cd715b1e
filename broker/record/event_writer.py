"""Group commit: one writer stores every session's recorded events, one transaction a tick.

Each supervised call records its events into its own :class:`SessionBuffer` (never waiting).
The writer of the process (:class:`EventWriter`, one per app) wakes when any buffer has
something, lets events gather for a short *tick* (:data:`TICK_S`), then stores what every
session has in **one** transaction: the rows of all of them in one ``INSERT``, and, in one
batch of ``UPDATE`` statements, the usage of the sessions whose rows report some and the counters of
those whose fold is due (:data:`FOLD_EVERY_S`). A thousand talking calls cost a few commits a
second instead of thousands. Tool decisions keep their own transactions and never wait in
this queue; on SQLite they go before it at the write gate (:mod:`broker.db.write_gate`).

The queue is bounded by what it sheds, not by blocking: past :data:`DEFAULT_MAX_PENDING`
buffered events, or while the process is overloaded (:mod:`broker.overload`), a buffer takes
no more *coalescible* events (they are dropped and counted); kept events and usage are always
queued, so nothing the log is for is ever shed.

``seq`` numbers are given when a batch is written, after what each buffer last stored: a
batch the database refused for good leaves no gap. A batch that clashes with another writer
of the same session (a broker event written outside the recorder) is renumbered from the
database and written again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.db import queries
from broker.db.fence import Fence, lost_fences, unfence
from broker.db.write_gate import WriteGate
from broker.record.event_classes import EventClass
from broker.record.usage import Usage, usage_of_events

logger = logging.getLogger(__name__)

TICK_S: Final = 0.05
"""How long the writer lets events gather after the first one, at least: a tool call's dozen
events, and every other session's meanwhile, share one transaction."""
MAX_TICK_S: Final = 1.0
WRITER_SHARE: Final = 0.15
"""The share of the time the writer may spend in its transactions: the tick grows with the
last transaction's length (``last / share``, between :data:`TICK_S` and :data:`MAX_TICK_S`),
so a backlog is written in fewer, larger transactions."""
FOLD_EVERY_S: Final = 2.0
"""How often a session's counters (rows stored, errors, coalescible bytes, drops, the last
event's time) are folded into its row, at least. Folding costs some 20 µs of the event
loop's time per session (SQLAlchemy's parameters, the statement), and a thousand talking
sessions are all dirty every tick: folding each at every tick cost more than storing their
rows. Usage is folded with the rows that report it, always; a flush or a stop folds
everything. A crash can leave a session's counters short of its stored rows by this much
(the rows and the usage are exact)."""
MAX_BATCH_ROWS: Final = 5000
"""Rows in one transaction at most: a backlog is written in several, never in one huge one."""
WRITE_ATTEMPTS: Final = 3
DEFAULT_MAX_PENDING: Final = 50_000
"""Buffered events (all sessions) past which coalescible events are shed."""


@dataclass
class Owed:
    """Counts a session row has not been given yet (see :data:`FOLD_EVERY_S`)."""

    stored: int = 0
    errors: int = 0
    coalescible: int = 0
    coalescible_bytes: int = 0
    dropped: int = 0
    last_at: datetime | None = None

    @property
    def empty(self) -> bool:
        return not (
            self.stored or self.errors or self.coalescible or self.coalescible_bytes or self.dropped
        )

    def plus(self, other: Owed) -> Owed:
        return Owed(
            self.stored + other.stored,
            self.errors + other.errors,
            self.coalescible + other.coalescible,
            self.coalescible_bytes + other.coalescible_bytes,
            self.dropped + other.dropped,
            max((t for t in (self.last_at, other.last_at) if t is not None), default=None),
        )

    def minus(self, other: Owed) -> Owed:
        """What is left once ``other`` (a part of this) has been folded."""
        return Owed(
            self.stored - other.stored,
            self.errors - other.errors,
            self.coalescible - other.coalescible,
            self.coalescible_bytes - other.coalescible_bytes,
            self.dropped - other.dropped,
            None if self.last_at == other.last_at else self.last_at,
        )

    def counts(self, usage: Usage) -> queries.EventCounts:
        return queries.EventCounts(
            stored=self.stored,
            errors=self.errors,
            last_at=self.last_at,
            usage=usage,
            tally=queries.LogTally(
                coalescible=self.coalescible,
                coalescible_bytes=self.coalescible_bytes,
                dropped=self.dropped,
            ),
        )

    @classmethod
    def of(cls, events: Iterable[PendingEvent]) -> Owed:
        """What storing ``events`` adds to the counters."""
        owed = cls()
        for event in events:
            owed.stored += 1
            if event.type == "error" and event.direction == "in":
                owed.errors += 1
            if event.event_class is EventClass.COALESCIBLE:
                owed.coalescible += 1
                owed.coalescible_bytes += event.size
            if owed.last_at is None or event.at > owed.last_at:
                owed.last_at = event.at
        return owed


@dataclass(slots=True)
class PendingEvent:
    """An event recorded and not yet stored; its ``seq`` is given when it is written."""

    direction: str
    type: str
    payload: dict[str, Any]
    at: datetime
    event_class: EventClass
    size: int
    """Its weight against the bytes cap (0 for a kept event: never capped)."""

    def row(self, session_id: str, seq: int) -> dict[str, Any]:
        return {
            "session_id": session_id,
            "seq": seq,
            "direction": self.direction,
            "type": self.type,
            "payload": self.payload,
            "at": self.at,
        }


@dataclass(eq=False)
class SessionBuffer:
    """One session's events on their way to the log, and where its log stands."""

    session_id: str
    events: list[PendingEvent] = field(default_factory=list)
    seq: int = 0
    """The last ``seq`` stored (or found stored)."""
    coalescible: int = 0
    coalescible_bytes: int = 0
    """Coalescible events stored or buffered: what the caps are checked against."""
    owed: Owed = field(default_factory=lambda: Owed())
    """Counts of stored rows, and drops, not yet folded into the session row."""
    folded_at: float = field(default_factory=time.monotonic)
    fold_due: bool = False
    """A flush asked for the counters to be folded at the next write."""
    carried: Usage = field(default_factory=Usage)
    """Usage of batches dropped after failed writes: events may be lost, billing not."""
    closing: bool = False
    """Its recorder has stopped: the writer lets it go once everything is stored."""
    since: float | None = None
    """When its oldest event not yet stored was queued (monotonic; ``None``: none waits)."""
    fence: Fence | None = None
    """The call's lease its rows are written under (``None``: not an owner's recorder)."""

    @property
    def pending(self) -> bool:
        """Whether it has rows or usage to write."""
        return bool(self.events) or not self.carried.empty

    @property
    def owes(self) -> bool:
        """Whether it has counts not yet folded into the session row."""
        return not self.owed.empty

    def fold_now(self, now: float) -> bool:
        """Whether its owed counts go into the next write (see :data:`FOLD_EVERY_S`)."""
        return self.fold_due or self.closing or now - self.folded_at >= FOLD_EVERY_S

    def fold_falls_due(self, now: float) -> bool:
        """Whether it owes counts whose fold is due now (a write of counts alone)."""
        return self.owes and self.fold_now(now)


@dataclass
class _Slice:
    """What one write takes from one buffer."""

    buffer: SessionBuffer
    count: int
    rows: list[dict[str, Any]]
    adds: Owed
    """What storing these rows adds to the counters."""
    usage: Usage
    """What they report, with the usage carried from batches dropped before."""
    carried: Usage
    folded: Owed | None
    """The owed counts folded by this write (``None``: none; the rows' own are owed)."""

    def fold(self) -> queries.SessionFold:
        counts = None if self.folded is None else self.folded.plus(self.adds).counts(self.usage)
        return queries.SessionFold(self.buffer.session_id, self.rows, counts)


EVENTS_CHANNEL: Final = "broker_events"
"""Where committed event-log growth is announced (``LISTEN`` by every instance)."""
NOTICE_IDS: Final = 200
"""Session ids per ``NOTIFY`` (PostgreSQL caps a payload at 8000 bytes)."""


NOTICE_ORIGIN: Final = secrets.token_hex(4)
"""This process's mark on its notices: its own streams were woken (and handed the rows)
already, so it ignores them (:func:`grown_elsewhere`)."""


async def notify_grown(s: AsyncSession, session_ids: list[str]) -> None:
    """Tell other instances' event streams these logs grew (PostgreSQL; at commit)."""
    for start in range(0, len(session_ids), NOTICE_IDS):
        chunk = ",".join(session_ids[start : start + NOTICE_IDS])
        await queries.notify(s, EVENTS_CHANNEL, f"{NOTICE_ORIGIN}:{chunk}")


def grown_elsewhere(payload: str) -> list[str]:
    """The session ids of a notice another process sent (``[]`` for this process's own)."""
    origin, _, ids = payload.partition(":")
    if origin == NOTICE_ORIGIN or not ids:
        return []
    return ids.split(",")


class EventWriter:
    """The process's one event-log writer (see the module docstring).

    Args:
        sessionmaker: the app's.
        written: told, after each commit, every session it stored rows of and those rows
            (the event streams' wake-ups and live fan-out).
        tick: see :data:`TICK_S`.
        max_pending: see :data:`DEFAULT_MAX_PENDING`.

    Its task runs while any buffer is registered, and ends by itself when the last one
    leaves with nothing pending, so a test or a script never leaves it behind.
    """

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        written: Callable[[str, Sequence[dict[str, Any]]], None],
        *,
        tick: float = TICK_S,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._gate = WriteGate.of(sessionmaker)
        self._written = written
        self.tick = tick
        self.max_pending = max_pending
        self._registered: set[SessionBuffer] = set()
        self._dirty: dict[SessionBuffer, None] = {}
        """Buffers with something to write, in the order they got it."""
        self._wake = asyncio.Event()
        self._hurry = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.pending_events = 0
        """Events buffered and not yet stored, every session's."""
        self.commits = 0
        self.rows_written = 0
        self._last_write_s = 0.0
        """How long the last transaction took (the write gate's wait left out)."""
        self.batches_dropped = 0

    # ---- what recorders call -------------------------------------------------------------

    def register(self, buffer: SessionBuffer) -> None:
        self._registered.add(buffer)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="event-log-writer"
            )

    def unregister(self, buffer: SessionBuffer) -> None:
        self._registered.discard(buffer)
        self._wake.set()  # the task may be the last user's to end

    def queued(self, buffer: SessionBuffer, events: int = 1) -> None:
        """``buffer`` has ``events`` more to write (0: only counts or carried usage)."""
        if buffer.since is None:
            buffer.since = time.monotonic()
        self.pending_events += events
        self._dirty[buffer] = None
        self._wake.set()

    @property
    def full(self) -> bool:
        """Whether coalescible events are being shed (the queue is at its bound)."""
        return self.pending_events >= self.max_pending

    @property
    def lag_s(self) -> float:
        """How long the oldest event not yet stored has waited (0: nothing waits)."""
        waiting = [b.since for b in (*self._registered, *self._dirty) if b.since is not None]
        return time.monotonic() - min(waiting) if waiting else 0.0

    async def flush(self, buffer: SessionBuffer) -> None:
        """Write until ``buffer`` is stored and its counts folded (with everyone else's).

        Never raises. Stops when a write of it fails for good and nothing moved (what is
        left rides on the next write).
        """
        buffer.fold_due = True
        while buffer.pending or buffer.owes:
            if buffer not in self._dirty:
                self._dirty[buffer] = None
            before = (len(buffer.events), buffer.owed, buffer.carried)
            await self.write_once()
            if (len(buffer.events), buffer.owed, buffer.carried) == before:
                return  # nothing moved: the database still refuses

    async def persist(self, buffer: SessionBuffer) -> None:
        """Write what ``buffer`` has queued now (with everyone else's); counts may stay owed.

        Cheaper than :meth:`flush`: no fold is forced. Usage rides with its rows, so once
        this returns the usage of every event queued before it is stored. Never raises.
        """
        while buffer.events:
            if buffer not in self._dirty:
                self._dirty[buffer] = None
            before = len(buffer.events)
            await self.write_once()
            if len(buffer.events) >= before:
                return  # nothing moved: the database still refuses

    # ---- the writer ----------------------------------------------------------------------

    async def _run(self) -> None:
        # Started from whichever call's task queued first: it writes for every call, under
        # none's fence (each buffer's own is checked per batch).
        unfence()
        while True:
            if not self._dirty:
                if not self._registered:
                    return
                self._wake.clear()
                if not any(b.owes for b in self._registered):
                    await self._wake.wait()
                    continue
                # Quiet, but some counts are owed: fold them when they fall due.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(FOLD_EVERY_S):
                        await self._wake.wait()
                if not self._dirty:
                    await self._write_safely()
                continue
            tick = self.current_tick
            if tick > 0 and self.pending_events < MAX_BATCH_ROWS:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(tick):
                        await self._hurry.wait()
            self._hurry.clear()
            await self._write_safely()

    async def _write_safely(self) -> None:
        try:
            await self.write_once()
        except Exception:
            # The writer must outlive any one bad batch: the call matters more.
            logger.exception("event log writer failed a batch; going on")
            await asyncio.sleep(self.tick or 0.05)

    async def close(self) -> None:
        """Write everything queued, then end the task (the app is stopping)."""
        for buffer in list(self._dirty):
            await self.flush(buffer)
        self._registered.clear()
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None

    @property
    def current_tick(self) -> float:
        """The wait before the next write (see :data:`WRITER_SHARE`)."""
        if self.tick <= 0:
            return 0.0
        return min(MAX_TICK_S, max(self.tick, self._last_write_s / WRITER_SHARE))

    def hurry(self) -> None:
        """Write what is queued now, without waiting out the tick (a recorder stopping)."""
        self._hurry.set()

    async def write_once(self) -> None:
        """Write what is queued now (up to :data:`MAX_BATCH_ROWS`) in one transaction."""
        async with self._lock:
            slices = self._take()
            if not slices:
                return
            taken_at = time.monotonic()
            if not await self._store(slices):
                self._drop(slices)
            for piece in slices:
                # What a buffer has now came while its batch was being written.
                piece.buffer.since = taken_at if piece.buffer.pending else None

    def _take(self) -> list[_Slice]:
        """This write's slices: queued rows (at most :data:`MAX_BATCH_ROWS`), and counts.

        Every buffer whose fold is due gives its owed counts, rows or not.
        """
        now = time.monotonic()
        room = MAX_BATCH_ROWS
        slices: list[_Slice] = []
        for buffer in list(self._dirty):
            if room <= 0:
                break
            if not buffer.pending and not buffer.fold_falls_due(now):
                del self._dirty[buffer]  # written meanwhile by the write this one waited for
                buffer.since = None
                continue
            count = min(len(buffer.events), room)
            room -= count
            slices.append(self._slice(buffer, count, now))
            if count == len(buffer.events):
                del self._dirty[buffer]
        sliced = {piece.buffer for piece in slices}
        for buffer in self._registered:
            if buffer not in sliced and buffer.fold_falls_due(now):
                slices.append(self._slice(buffer, 0, now))
        return slices

    @staticmethod
    def _slice(buffer: SessionBuffer, count: int, now: float) -> _Slice:
        taken = buffer.events[:count]
        rows = [p.row(buffer.session_id, buffer.seq + 1 + n) for n, p in enumerate(taken)]
        usage = usage_of_events(rows) + buffer.carried
        # Usage is folded with the rows that report it, always: it bills.
        folds = not usage.empty or buffer.fold_now(now)
        return _Slice(
            buffer,
            count,
            rows,
            Owed.of(taken),
            usage,
            buffer.carried,
            dataclasses.replace(buffer.owed) if folds else None,
        )

    async def _store(self, slices: list[_Slice]) -> bool:
        """One transaction for every slice; whether it committed (after retries)."""
        failures = clashes = 0
        while True:
            try:
                # A routine turn on SQLite: tool decisions go first (broker.db.write_gate).
                async with self._gate.turn(urgent=False), self._sessionmaker.begin() as s:
                    began = time.monotonic()
                    fences = [p.buffer.fence for p in slices if p.buffer.fence is not None]
                    lost = await lost_fences(s, fences) if fences else set()
                    if lost:
                        # Calls another instance owns now: their rows are not ours to write.
                        slices[:] = [p for p in slices if p.buffer.session_id not in lost]
                        for session_id in lost:
                            self._fenced_out(session_id)
                    await queries.store_event_batch(s, [piece.fold() for piece in slices])
                    await notify_grown(s, [p.buffer.session_id for p in slices if p.rows])
            except IntegrityError:
                clashes += 1
                if clashes > WRITE_ATTEMPTS:
                    return False
                # Another writer (a broker event written outside the recorder) took a seq
                # handed out here: number the batch after what is stored now.
                await self._renumber(slices)
            except SQLAlchemyError:
                failures += 1
                if failures >= WRITE_ATTEMPTS:
                    return False
                logger.warning(
                    "event log write failed sessions=%d attempt=%d",
                    len(slices),
                    failures,
                    exc_info=True,
                )
                await asyncio.sleep(0.2 * failures)
            else:
                self._last_write_s = time.monotonic() - began
                self._stored(slices)
                return True

    async def _renumber(self, slices: list[_Slice]) -> None:
        async with self._sessionmaker() as s:
            last = await queries.last_event_seqs(s, [p.buffer.session_id for p in slices])
        for piece in slices:
            buffer = piece.buffer
            buffer.seq = last.get(buffer.session_id, 0)
            for n, row in enumerate(piece.rows):
                row["seq"] = buffer.seq + 1 + n
            logger.info(
                "event log renumbered session_id=%s from seq=%d",
                buffer.session_id,
                buffer.seq + 1,
            )

    def _stored(self, slices: list[_Slice]) -> None:
        self.commits += 1
        now = time.monotonic()
        for piece in slices:
            buffer = piece.buffer
            buffer.seq += piece.count
            del buffer.events[: piece.count]
            if piece.folded is not None:
                # Drops counted during the write's await stay owed for the next one.
                buffer.owed = buffer.owed.minus(piece.folded)
                buffer.folded_at = now
                buffer.fold_due = False
                buffer.carried = Usage()
            else:
                buffer.owed = buffer.owed.plus(piece.adds)
            self.pending_events -= piece.count
            self.rows_written += piece.count
            if buffer.closing and not buffer.pending and not buffer.owes:
                self._registered.discard(buffer)
            if piece.rows:
                self._written(buffer.session_id, piece.rows)

    def discard(self, buffer: SessionBuffer) -> None:
        """Forget a buffer unwritten: its call is another instance's now (fenced out)."""
        self.pending_events -= len(buffer.events)
        buffer.events.clear()
        buffer.owed = Owed()
        buffer.carried = Usage()
        self._dirty.pop(buffer, None)
        self._registered.discard(buffer)

    def _fenced_out(self, session_id: str) -> None:
        for buffer in list(self._registered):
            if buffer.session_id == session_id:
                logger.warning(
                    "event log: the call is another instance's now; %d event(s) not written"
                    " session_id=%s",
                    len(buffer.events),
                    session_id,
                )
                self.discard(buffer)

    def _drop(self, slices: list[_Slice]) -> None:
        """A batch the database refused for good: its events are gone, their usage is not."""
        self.batches_dropped += 1
        for piece in slices:
            buffer = piece.buffer
            if piece.count:
                logger.error(
                    "event log dropped %d events session_id=%s", piece.count, buffer.session_id
                )
            # Its usage rides on the next write, and the owed counts stay owed. Its
            # coalescible events were never stored: their budget comes back.
            buffer.carried = piece.usage
            buffer.coalescible -= piece.adds.coalescible
            buffer.coalescible_bytes -= piece.adds.coalescible_bytes
            del buffer.events[: piece.count]
            self.pending_events -= piece.count
            if buffer.events:
                self._dirty[buffer] = None
