"""A session's event log: redacted sideband traffic and broker decisions, written in order.

The sideband reader must never wait on the database, so :meth:`EventRecorder.record` only
appends to a buffer; the process's one writer (:mod:`broker.record.event_writer`) stores
every session's buffer in one transaction a tick (group commit). Every writer (the
recorder, :func:`append_event`) takes each event's :class:`~broker.record.event_classes.EventClass`:
kept events are always stored, coalescible ones up to the session's caps, then dropped and
counted. An event's ``seq`` is assigned when it is stored, so the log has no gap where a
dropped event (or a batch lost to the database) would have been. After each commit the
writer wakes the session's event streams (:class:`~broker.record.wakeups.EventWakeups`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.db import queries
from broker.db.fence import CURRENT_FENCE
from broker.db.models import utcnow
from broker.metrics import BrokerMetrics, EventCap
from broker.record.event_classes import EventClass, classify
from broker.record.event_writer import (
    DEFAULT_MAX_PENDING,
    TICK_S,
    WRITE_ATTEMPTS,
    EventWriter,
    PendingEvent,
    SessionBuffer,
    notify_grown,
)
from broker.record.redaction import CallTools, ToolFields, redact_event
from broker.record.wakeups import EventWakeups

logger = logging.getLogger(__name__)

DEFAULT_MAX_COALESCIBLE: Final = 2000
DEFAULT_MAX_COALESCIBLE_BYTES: Final = 2 * 1024 * 1024
_INFO_KEY: Final = "broker.event_log"
"""Where a sessionmaker bound with :meth:`EventLog.bind` keeps its :class:`EventLog`."""


def payload_bytes(payload: dict[str, Any]) -> int:
    """What a stored payload weighs against the bytes cap: its compact JSON's length."""
    return len(json.dumps(payload, separators=(",", ":"), default=str))


@dataclass(frozen=True)
class EventCaps:
    """How much coalescible traffic one session's log stores (``0``: none)."""

    coalescible_events: int = DEFAULT_MAX_COALESCIBLE
    coalescible_bytes: int = DEFAULT_MAX_COALESCIBLE_BYTES

    def refuses(self, count: int, size: int, event_size: int) -> EventCap | None:
        """The cap one more event of ``event_size`` would pass, after ``count``/``size``."""
        if count + 1 > self.coalescible_events:
            return EventCap.EVENTS
        if size + event_size > self.coalescible_bytes:
            return EventCap.BYTES
        return None


class EventLog:
    """This process's side of every session's event log: caps, wake-ups, the drop counter.

    One per app (``keys.EVENT_LOG``), bound to the app's sessionmaker so that every writer
    holding only the sessionmaker finds it (:meth:`of`). A sessionmaker never bound (a
    script, a migration test) gets default caps and wake-ups nobody listens to.
    """

    def __init__(
        self,
        caps: EventCaps | None = None,
        metrics: BrokerMetrics | None = None,
        *,
        tick: float = TICK_S,
        max_pending: int = DEFAULT_MAX_PENDING,
    ):
        self.caps = caps or EventCaps()
        self.wakeups = EventWakeups()
        self._metrics = metrics
        self._tick = tick
        self.max_pending = max_pending
        self._writer: EventWriter | None = None
        self.shedding = False
        """Set while the process is overloaded (:mod:`broker.overload`): coalescible events
        are dropped (and counted) instead of queued."""
        self.tool_fields: ToolFields | None = None
        """The tools' redacted fields (set once the tools are loaded): hashed in every
        function call's arguments and output the log stores (:mod:`broker.record.redaction`)."""

    def writer(self, sessionmaker: async_sessionmaker[AsyncSession]) -> EventWriter:
        """The process's one writer of the event log (made with the first recorder)."""
        if self._writer is None:
            self._writer = EventWriter(
                sessionmaker,
                self.wakeups.publish,
                tick=self._tick,
                max_pending=self.max_pending,
            )
        return self._writer

    @property
    def pending_events(self) -> int:
        """Events recorded and not yet stored (every session's)."""
        return self._writer.pending_events if self._writer is not None else 0

    @property
    def lag_s(self) -> float:
        """How long the oldest event not yet stored has waited."""
        return self._writer.lag_s if self._writer is not None else 0.0

    async def close(self) -> None:
        """Write what is still queued (the app is stopping)."""
        if self._writer is not None:
            await self._writer.close()

    def bind(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        """Make this the event log of every session ``sessionmaker`` opens (``Session.info``)."""
        info = dict(sessionmaker.kw.get("info") or {})
        info[_INFO_KEY] = self
        sessionmaker.configure(info=info)

    @classmethod
    def of(cls, s: AsyncSession) -> EventLog:
        found = s.info.get(_INFO_KEY)
        return found if isinstance(found, EventLog) else cls()

    @classmethod
    def of_maker(cls, sessionmaker: async_sessionmaker[AsyncSession]) -> EventLog:
        """:meth:`of` the sessions ``sessionmaker`` opens, without opening one."""
        # getattr: a stand-in that is no sessionmaker (a test's) has no log bound.
        kw = getattr(sessionmaker, "kw", None) or {}
        found = (kw.get("info") or {}).get(_INFO_KEY)
        return found if isinstance(found, EventLog) else cls()

    def call_tools(self) -> CallTools | None:
        """A session's memory of its calls' tools, if any tool's fields are redacted."""
        if self.tool_fields is None or not self.tool_fields.active:
            return None
        return CallTools(self.tool_fields)

    def dropped(self, cap: EventCap) -> None:
        if self._metrics is not None:
            self._metrics.event_dropped(cap)

    def folded(self) -> None:
        if self._metrics is not None:
            self._metrics.event_folded()


async def append_event(
    sessionmaker: async_sessionmaker[AsyncSession],
    session_id: str,
    event: dict[str, Any],
    event_class: EventClass | None = None,
    *,
    alongside: Callable[[AsyncSession], Awaitable[None]] | None = None,
) -> None:
    """Write one broker event after the session's last one, outside any recorder.

    Args:
        sessionmaker: the app's (bound to its :class:`EventLog`).
        session_id: the session whose log it joins.
        event: the broker event (``type`` required).
        event_class: how the log treats it; ``None``: :func:`classify` decides (a broker
            event is always kept). A coalescible event past the session's cap is counted
            as dropped instead of stored.
        alongside: writes that belong with the event (the change it audits), made in the
            same transaction, so neither is stored without the other; with a coalescible
            event they are made even when the event is dropped at its cap.

    A recorder of the same session may be writing meanwhile: a seq it takes first is
    retried with the next one (and the recorder renumbers what it had not written).
    """
    if event_class is None:
        event_class = classify("broker", event)
    # The broker's own events carry no audio nor tool items today; redacted all the same,
    # so that no writer of the log can store a payload the recorder would not.
    event = redact_event(event, EventLog.of_maker(sessionmaker).call_tools())
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        try:
            async with sessionmaker.begin() as s:
                if alongside is not None:
                    await alongside(s)
                log = EventLog.of(s)
                tally = queries.LogTally()
                if event_class is EventClass.COALESCIBLE:
                    size = payload_bytes(event)
                    cap = log.caps.refuses(*await queries.coalescible_spent(s, session_id), size)
                    if cap is not None:
                        await queries.fold_event_counts(
                            s, session_id, tally=queries.LogTally(dropped=1)
                        )
                        log.dropped(cap)
                        return
                    tally = queries.LogTally(coalescible=1, coalescible_bytes=size)
                await queries.add_broker_event(s, session_id, event, tally=tally)
                await notify_grown(s, [session_id])
            log.wakeups.notify(session_id)
            return
        except IntegrityError:
            if attempt == WRITE_ATTEMPTS:
                raise


class EventRecorder:
    """Records one session's events; the process's :class:`EventWriter` stores them.

    The coalescible caps are enforced here, as events are recorded (never blocking): the
    recorder starts from the session's stored counts (:meth:`start`) and counts what it
    buffers. A session is recorded by one recorder at a time.
    """

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], session_id: str) -> None:
        self._sessionmaker = sessionmaker
        self.session_id = session_id
        # Found now, not at start(): an event recorded before must be redacted all the same.
        self._log = EventLog.of_maker(sessionmaker)
        self._calls = self._log.call_tools()
        # Its rows are written only while the call's lease holds (broker.db.fence).
        self._buffer = SessionBuffer(session_id, fence=CURRENT_FENCE.get())
        self._writer: EventWriter | None = None
        self._stop_asked = asyncio.Event()

    async def start(self) -> None:
        """Continue after what is already stored (a re-attached session).

        Both the numbering and the coalescible budget go on from the stored log.
        """
        async with self._sessionmaker() as s:
            self._log = EventLog.of(s)
            self._buffer.seq = await queries.next_event_seq(s, self.session_id) - 1
            spent = await queries.coalescible_spent(s, self.session_id)
        self._buffer.coalescible, self._buffer.coalescible_bytes = spent

    def _writer_of(self) -> EventWriter:
        if self._writer is None:
            self._writer = self._log.writer(self._sessionmaker)
            self._writer.register(self._buffer)
        return self._writer

    def record(
        self, direction: str, event: dict[str, Any], event_class: EventClass | None = None
    ) -> None:
        """Queue one event; never blocks.

        Args:
            direction: ``in`` (provider), ``out`` (sent by the broker) or ``broker``.
            event: the event as seen (redacted here, :func:`redact_event`, before it is
                stored, streamed or weighed against the caps).
            event_class: how the log treats it; ``None``: :func:`classify` decides from
                its direction and type. A folded event is only counted; a coalescible one
                past the session's caps, or while the writer's queue is full, is counted as
                dropped instead of queued.
        """
        if event_class is None:
            event_class = classify(direction, event)
        if event_class is EventClass.FOLDED:
            self._log.folded()
            return
        writer = self._writer_of()
        buffer = self._buffer
        payload = redact_event(event, self._calls)
        size = 0
        if event_class is EventClass.COALESCIBLE:
            size = payload_bytes(payload)
            cap = (
                EventCap.OVERLOAD
                if writer.full or self._log.shedding
                else self._log.caps.refuses(buffer.coalescible, buffer.coalescible_bytes, size)
            )
            if cap is not None:
                # Owed: the count reaches the session row with the buffer's next fold.
                buffer.owed.dropped += 1
                self._log.dropped(cap)
                return
            buffer.coalescible += 1
            buffer.coalescible_bytes += size
        buffer.events.append(
            PendingEvent(
                direction=direction,
                type=str(event.get("type", "unknown"))[:100],
                payload=payload,
                at=utcnow(),
                event_class=event_class,
                size=size,
            )
        )
        writer.queued(buffer)

    def discard(self) -> None:
        """Forget everything buffered, unwritten (the call is another instance's now)."""
        if self._writer is not None:
            self._writer.discard(self._buffer)
            self._writer = None

    def stop(self) -> None:
        """Ask :meth:`run` to have what is buffered written and return."""
        self._stop_asked.set()
        self._buffer.closing = True
        if self._writer is not None:
            self._writer.hurry()

    async def run(self) -> None:
        """Keep this session's buffer with the writer until stopped, then flush it."""
        self._writer_of()
        await self._stop_asked.wait()
        await self.flush()

    async def persist(self) -> None:
        """Store what is buffered now, usage included, without waiting for the writer's tick."""
        if self._buffer.events:
            await self._writer_of().persist(self._buffer)

    async def flush(self) -> None:
        """Write everything buffered (the writer's group commit).

        Never raises: the call matters more than its log; a batch the database refused for
        good is dropped (its usage rides on the next write).
        """
        writer = self._writer_of()
        await writer.flush(self._buffer)
        if self._stop_asked.is_set():
            writer.unregister(self._buffer)
            self._writer = None
