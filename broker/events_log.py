"""A session's event log: redacted sideband traffic and broker decisions, written in order.

The sideband reader must never wait on the database, so :meth:`EventRecorder.record` only
appends to a buffer; one writer task per session flushes it in batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Final

from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.db import queries
from broker.db.models import utcnow
from broker.usage import Usage, usage_of_events

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


def redact_event(event: dict[str, Any]) -> dict[str, Any]:
    """The event as stored and streamed: audio payloads replaced by their length."""
    field = _AUDIO_FIELDS.get(str(event.get("type")))
    if field is None or not isinstance(event.get(field), str):
        return event
    return {**event, field: {"redacted": "audio", "base64_chars": len(event[field])}}


async def append_event(
    sessionmaker: async_sessionmaker[AsyncSession], session_id: str, event: dict[str, Any]
) -> None:
    """Write one broker event after the session's last one, outside any recorder.

    A recorder of the same session may be writing meanwhile: a seq it takes first is
    retried with the next one (and the recorder renumbers what it had not written).
    """
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        try:
            async with sessionmaker.begin() as s:
                seq = await queries.next_event_seq(s, session_id)
                row = {
                    "session_id": session_id,
                    "seq": seq,
                    "direction": "broker",
                    "type": str(event["type"]),
                    "payload": event,
                    "at": utcnow(),
                }
                await queries.add_events(s, [row])
            return
        except IntegrityError:
            if attempt == WRITE_ATTEMPTS:
                raise


class EventRecorder:
    """Buffers one session's events and writes them with consecutive ``seq`` numbers."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        session_id: str,
        *,
        linger: float = FLUSH_LINGER_S,
    ) -> None:
        self._sessionmaker = sessionmaker
        self.session_id = session_id
        self._buffer: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._stop_asked = asyncio.Event()
        self._linger = linger
        self._stopped = False
        self._seq = 0
        self._carried = Usage()
        """Usage of batches dropped after failed writes: events may be lost, billing not."""

    async def start(self) -> None:
        """Continue numbering after what is already stored (a re-attached session)."""
        async with self._sessionmaker() as s:
            self._seq = await queries.next_event_seq(s, self.session_id) - 1

    def record(self, direction: str, event: dict[str, Any]) -> None:
        """Queue one event; never blocks."""
        self._seq += 1
        self._buffer.append(
            {
                "session_id": self.session_id,
                "seq": self._seq,
                "direction": direction,
                "type": str(event.get("type", "unknown"))[:100],
                "payload": redact_event(event),
                "at": utcnow(),
            }
        )
        self._wake.set()

    async def _renumber(self) -> None:
        async with self._sessionmaker() as s:
            first = await queries.next_event_seq(s, self.session_id)
        # No await from here on: events recorded meanwhile are renumbered too.
        for offset, row in enumerate(self._buffer):
            row["seq"] = first + offset
        self._seq = first + len(self._buffer) - 1
        logger.info("event log renumbered session_id=%s from seq=%d", self.session_id, first)

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
        """Write everything buffered. Never raises: the call matters more than its log."""
        failures = 0
        clashes = 0
        while self._buffer or not self._carried.empty:
            batch = self._buffer[:MAX_BATCH]
            try:
                async with self._sessionmaker.begin() as s:
                    if batch:
                        await queries.add_events(s, batch)
                    if not self._carried.empty:
                        await queries.add_session_usage(s, self.session_id, self._carried)
                self._carried = Usage()
            except IntegrityError:
                clashes += 1
                if clashes <= WRITE_ATTEMPTS:
                    # Another writer (the duration backstop) took a seq handed out here to
                    # an event not yet written: number what is buffered after what is stored.
                    await self._renumber()
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
                del self._buffer[: len(batch)]
                failures = 0
                continue
            # Dropped: its usage rides on the next write (or the final flush's retry).
            self._carried += usage_of_events(batch)
            if not batch:
                return  # only carried usage, and the database still fails: the next flush
            # Removed only now: a batch is never lost between being taken and being written.
            del self._buffer[: len(batch)]
            failures = 0
