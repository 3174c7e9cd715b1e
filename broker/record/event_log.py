"""A session's event log: redacted sideband traffic and broker decisions, written in order.

The sideband reader must never wait on the database, so :meth:`EventRecorder.record` only
appends to a buffer; one writer task per session flushes it in batches. Every writer (the
recorder, :func:`append_event`) takes each event's :class:`~broker.record.event_classes.EventClass`:
kept events are always stored, coalescible ones up to the session's caps, then dropped and
counted. An event's ``seq`` is assigned when it is stored, so the log has no gap where a
dropped event (or a batch lost to the database) would have been. After each commit the
writer wakes the session's event streams (:class:`~broker.record.wakeups.EventWakeups`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.db import queries
from broker.db.models import utcnow
from broker.metrics import BrokerMetrics, EventCap
from broker.record.event_classes import EventClass, classify
from broker.record.usage import Usage, usage_of_events
from broker.record.wakeups import EventWakeups

logger = logging.getLogger(__name__)

# Fields that carry base64 audio: stored as their size only.
_AUDIO_FIELDS: Final = {
    "input_audio_buffer.append": "audio",
    "response.output_audio.delta": "delta",
}
MAX_BATCH: Final = 500
WRITE_ATTEMPTS: Final = 3
FLUSH_LINGER_S: Final = 0.05
"""How long the writer lets events gather after the first one before it writes them: a tool
call's dozen events (its response, the output, the echo, the reply) then share one
transaction instead of one each. Stopping the recorder writes at once."""
DEFAULT_MAX_COALESCIBLE: Final = 2000
DEFAULT_MAX_COALESCIBLE_BYTES: Final = 2 * 1024 * 1024
_INFO_KEY: Final = "broker.event_log"
"""Where a sessionmaker bound with :meth:`EventLog.bind` keeps its :class:`EventLog`."""


def redact_event(event: dict[str, Any]) -> dict[str, Any]:
    """The event as stored and streamed: audio payloads replaced by their length."""
    field = _AUDIO_FIELDS.get(str(event.get("type")))
    if field is None or not isinstance(event.get(field), str):
        return event
    return {**event, field: {"redacted": "audio", "base64_chars": len(event[field])}}


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

    def __init__(self, caps: EventCaps | None = None, metrics: BrokerMetrics | None = None):
        self.caps = caps or EventCaps()
        self.wakeups = EventWakeups()
        self._metrics = metrics

    def bind(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        """Make this the event log of every session ``sessionmaker`` opens (``Session.info``)."""
        info = dict(sessionmaker.kw.get("info") or {})
        info[_INFO_KEY] = self
        sessionmaker.configure(info=info)

    @classmethod
    def of(cls, s: AsyncSession) -> EventLog:
        found = s.info.get(_INFO_KEY)
        return found if isinstance(found, EventLog) else cls()

    def dropped(self, cap: EventCap) -> None:
        if self._metrics is not None:
            self._metrics.event_dropped(cap)


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
            log.wakeups.notify(session_id)
            return
        except IntegrityError:
            if attempt == WRITE_ATTEMPTS:
                raise


@dataclass(slots=True)
class _Pending:
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


def _tally(batch: list[_Pending], dropped: int) -> queries.LogTally:
    coalescible = [p for p in batch if p.event_class is EventClass.COALESCIBLE]
    return queries.LogTally(
        coalescible=len(coalescible),
        coalescible_bytes=sum(p.size for p in coalescible),
        dropped=dropped,
    )


class EventRecorder:
    """Buffers one session's events and writes them with consecutive ``seq`` numbers.

    The coalescible caps are enforced here, as events are recorded (never blocking): the
    recorder starts from the session's stored counts (:meth:`start`) and counts what it
    buffers. A session is recorded by one recorder at a time.
    """

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        session_id: str,
        *,
        linger: float = FLUSH_LINGER_S,
    ) -> None:
        self._sessionmaker = sessionmaker
        self.session_id = session_id
        self._log = EventLog()
        self._buffer: list[_Pending] = []
        self._wake = asyncio.Event()
        self._stop_asked = asyncio.Event()
        self._linger = linger
        self._stopped = False
        self._seq = 0
        """The last ``seq`` this recorder stored (or found stored)."""
        self._coalescible = 0
        self._coalescible_bytes = 0
        """Coalescible events stored or buffered: what the caps are checked against."""
        self._dropped = 0
        """Dropped at a cap and not yet added to the session row's ``events_dropped``."""
        self._carried = Usage()
        """Usage of batches dropped after failed writes: events may be lost, billing not."""

    async def start(self) -> None:
        """Continue after what is already stored (a re-attached session).

        Both the numbering and the coalescible budget go on from the stored log.
        """
        async with self._sessionmaker() as s:
            self._log = EventLog.of(s)
            self._seq = await queries.next_event_seq(s, self.session_id) - 1
            spent = await queries.coalescible_spent(s, self.session_id)
        self._coalescible, self._coalescible_bytes = spent

    def record(
        self, direction: str, event: dict[str, Any], event_class: EventClass | None = None
    ) -> None:
        """Queue one event; never blocks.

        Args:
            direction: ``in`` (provider), ``out`` (sent by the broker) or ``broker``.
            event: the event as seen (redacted here before it is stored).
            event_class: how the log treats it; ``None``: :func:`classify` decides from
                its direction and type. A coalescible event past the session's caps is
                counted as dropped instead of queued.
        """
        if event_class is None:
            event_class = classify(direction, event)
        payload = redact_event(event)
        size = 0
        if event_class is EventClass.COALESCIBLE:
            size = payload_bytes(payload)
            cap = self._log.caps.refuses(self._coalescible, self._coalescible_bytes, size)
            if cap is not None:
                self._dropped += 1
                self._log.dropped(cap)
                self._wake.set()  # the count reaches the session row with the next write
                return
            self._coalescible += 1
            self._coalescible_bytes += size
        self._buffer.append(
            _Pending(
                direction=direction,
                type=str(event.get("type", "unknown"))[:100],
                payload=payload,
                at=utcnow(),
                event_class=event_class,
                size=size,
            )
        )
        self._wake.set()

    async def _resync_seq(self) -> None:
        async with self._sessionmaker() as s:
            self._seq = await queries.next_event_seq(s, self.session_id) - 1
        logger.info(
            "event log renumbered session_id=%s from seq=%d", self.session_id, self._seq + 1
        )

    def stop(self) -> None:
        """Ask :meth:`run` to flush what is buffered and return."""
        self._stopped = True
        self._stop_asked.set()
        self._wake.set()

    async def run(self) -> None:
        """Write batches until stopped and drained; a failed write is retried, then dropped.

        A batch is written :data:`FLUSH_LINGER_S` after its first event (at once when the
        buffer is full or the recorder stops), so events that come together are written
        together.
        """
        while True:
            await self._wake.wait()
            if self._linger > 0 and not self._stopped and len(self._buffer) < MAX_BATCH:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._linger):
                        await self._stop_asked.wait()
            self._wake.clear()
            await self.flush()
            if self._stopped:
                return

    async def flush(self) -> None:
        """Write everything buffered. Never raises: the call matters more than its log.

        Each batch is numbered just before it is written, after what this recorder last
        stored: a batch the database refused for good is gone without a gap in ``seq``.
        """
        failures = 0
        clashes = 0
        while self._buffer or self._dropped or not self._carried.empty:
            batch = self._buffer[:MAX_BATCH]
            dropped = self._dropped
            rows = [p.row(self.session_id, self._seq + 1 + n) for n, p in enumerate(batch)]
            try:
                async with self._sessionmaker.begin() as s:
                    if rows:
                        await queries.add_events(
                            s, rows, usage=usage_of_events(rows), tally=_tally(batch, dropped)
                        )
                    elif dropped:
                        await queries.fold_event_counts(
                            s, self.session_id, tally=queries.LogTally(dropped=dropped)
                        )
                    if not self._carried.empty:
                        await queries.add_session_usage(s, self.session_id, self._carried)
                self._carried = Usage()
            except IntegrityError:
                clashes += 1
                if clashes <= WRITE_ATTEMPTS:
                    # Another writer (the duration backstop) took the next seq: number the
                    # batch after what is stored now.
                    await self._resync_seq()
                    continue
                logger.error(
                    "event log dropped %d events session_id=%s", len(batch), self.session_id
                )
            except SQLAlchemyError:
                failures += 1
                if failures < WRITE_ATTEMPTS:
                    logger.warning(
                        "event log write failed session_id=%s attempt=%d",
                        self.session_id,
                        failures,
                        exc_info=True,
                    )
                    await asyncio.sleep(0.2 * failures)
                    continue
                logger.error(
                    "event log dropped %d events session_id=%s", len(batch), self.session_id
                )
            else:
                self._seq += len(batch)
                del self._buffer[: len(batch)]
                # Records made during the write's await stay counted for the next one.
                self._dropped -= dropped
                failures = 0
                self._log.wakeups.notify(self.session_id)
                continue
            # Dropped: its usage rides on the next write (or the final flush's retry), and so
            # does the count of events dropped at the caps. Its coalescible events were
            # never stored, so they give their share of the budget back.
            self._carried += usage_of_events(rows)
            unstored = _tally(batch, 0)
            self._coalescible -= unstored.coalescible
            self._coalescible_bytes -= unstored.coalescible_bytes
            if not batch:
                return  # only counts, and the database still fails: the next flush
            # Removed only now: a batch is never lost between being taken and being written.
            del self._buffer[: len(batch)]
            failures = 0
