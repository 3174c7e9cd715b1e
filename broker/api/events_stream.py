"""``GET /api/v1/sessions/{id}/events``: a session's event log as server-sent events.

The log is the ``session_events`` table, written in ``seq`` order by the session's one event
recorder (``broker/record/event_log.py``); this handler only reads it. It replays the events after
the client's cursor (``Last-Event-ID``, else ``?since=``), then sends new ones as they are
stored until the session has ended and its log is complete, and closes. Each message's ``id``
is the event's ``seq``, so a client that reconnects with the last id it saw goes on with no
gap and no duplicate: from another broker process as well, since the cursor is all the state
there is.

A stream does not poll: it sleeps until a writer in this process signals a commit to its
session's log (:class:`broker.record.wakeups.EventWakeups`), and reads the database only then
(or on the slow fallback, :data:`FALLBACK_POLL_S`). Each API key may hold at most
``BROKER_EVENT_STREAMS_PER_KEY`` streams open (``429 too_many_streams``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import hdrs, web
from sqlalchemy.exc import SQLAlchemyError

from broker import app_state
from broker.api._auth import api_principal
from broker.api._times import iso
from broker.auth.principals import Scope
from broker.db import queries
from broker.db.models import SessionEvent, SessionRow, SessionState
from broker.db.times import as_utc
from broker.errors import BadRequestError
from broker.record.redaction import redact_event
from broker.record.wakeups import Watch

logger = logging.getLogger(__name__)

FALLBACK_POLL_S: Final = 5.0
"""The longest a stream sleeps without reading the log although no writer woke it.

Wake-ups come only from writers in this process; a session's events may also be written by
another broker process (its sideband after a restart or on another replica, an ops action
served there). Those are still picked up, this late at worst: slow enough that hundreds of
idle streams cost the database little, fast enough for a person watching."""
ENDING_POLL_S: Final = 0.25
"""The pause while a session has ended but this process's sideband is still finishing: the
supervisor says nothing when it is done, and that state lasts milliseconds."""
CLOSED_CHECK_S: Final = 1.0
"""How often a sleeping stream checks (without the database) whether its client left: aiohttp
does not cancel a handler when the connection drops."""
PAGE_SIZE: Final = 500
KEEPALIVE_S: Final = 15.0
"""A comment line after this much silence keeps proxies from closing an idle stream."""
RETRY_MS: Final = 1000
SETTLE_S: Final = 2.0
"""How long after ``ended_at`` an ended session's last events may still be written.

The sideband records the session's end before it flushes its last buffered events, so
"ended" alone does not mean the log is complete. In this process the supervisor says when
the sideband is done; for a sideband another process ran, this grace (a flush takes
milliseconds, a retried one under a second) stands in for it.
"""

_ENDED_STATES: Final = frozenset({SessionState.ENDED, SessionState.FAILED})
_SEQ = re.compile(r"[0-9]{1,18}")  # fits the column's 64-bit integer


def _parse_seq(value: str, code: str, name: str) -> int:
    if not _SEQ.fullmatch(value):
        raise BadRequestError(code, f"{name} must be an event id (a non-negative integer)")
    return int(value)


def _cursor(request: web.Request) -> int:
    """The last ``seq`` the client has: ``Last-Event-ID`` wins over ``?since=``; 0 for none."""
    # An empty header is EventSource's "no id yet" (it should not send one at all).
    last_event_id = request.headers.get(hdrs.LAST_EVENT_ID)
    if last_event_id:
        return _parse_seq(last_event_id, "invalid_last_event_id", "Last-Event-ID")
    since = request.query.get("since")
    if since is not None:
        return _parse_seq(since, "invalid_since", "since")
    return 0


def _message(event: SessionEvent | Mapping[str, Any]) -> bytes:
    """One SSE message: a stored row, or a row the writer handed over as it committed it."""
    if isinstance(event, SessionEvent):
        seq, direction, type_, at, payload = (
            event.seq,
            event.direction,
            event.type,
            event.at,
            # Redacted when recorded; again here for a row an older broker stored (before
            # item audio was redacted, or during a rolling deploy): no stream carries audio.
            redact_event(event.payload),
        )
    else:
        seq, direction, type_, at, payload = (
            event["seq"],
            event["direction"],
            event["type"],
            event["at"],
            event["payload"],
        )
    data = json.dumps(
        {"seq": seq, "direction": direction, "type": type_, "at": iso(at), "payload": payload},
        separators=(",", ":"),
    )
    # json.dumps escapes every line break, so the data is one line as SSE requires.
    return f"id: {seq}\nevent: {direction}\ndata: {data}\n\n".encode()


def _handed_after(watch: Watch, cursor: int) -> list[Mapping[str, Any]] | None:
    """The rows the writer handed over that follow ``cursor`` with no gap.

    ``[]`` if there are none; ``None`` if a row another writer stored is missing (the
    database has it).
    """
    rows = [r for r in watch.take() if r["seq"] > cursor]
    for expected, row in enumerate(rows, start=cursor + 1):
        if row["seq"] != expected:
            return None
    return rows


def _log_complete(row: SessionRow, recording_here: bool) -> bool:
    """Whether no event can still be added to the ended session's log (see :data:`SETTLE_S`)."""
    if row.state not in _ENDED_STATES or recording_here:
        return False
    if row.ended_at is None:
        return True
    return (datetime.now(UTC) - as_utc(row.ended_at)).total_seconds() >= SETTLE_S


def _closing(request: web.Request) -> bool:
    """Whether the client left or the server is shutting down."""
    transport = request.transport
    if transport is None or transport.is_closing():
        return True
    # aiohttp waits for handlers (up to its shutdown timeout) before the app's cleanup (the
    # sidebands' drain) begins: a stream must end as soon as shutdown starts.
    return request.app[app_state.SHUTTING_DOWN].is_set()


def _next_read_in(row: SessionRow, recording_here: bool) -> float:
    """How long the stream may sleep before it reads the log again with no wake-up."""
    if row.state not in _ENDED_STATES:
        return FALLBACK_POLL_S
    if recording_here:
        return ENDING_POLL_S
    if row.ended_at is None:
        return 0.0
    settled_in = SETTLE_S - (datetime.now(UTC) - as_utc(row.ended_at)).total_seconds()
    # Woken when the grace is over: the stream then closes without waiting out a poll.
    return min(FALLBACK_POLL_S, max(settled_in, 0.0))


async def _pump(
    request: web.Request, response: web.StreamResponse, session_id: str, cursor: int, watch: Watch
) -> None:
    sessionmaker = request.app[app_state.SESSIONMAKER]
    supervisor = request.app[app_state.SUPERVISOR]
    loop = asyncio.get_running_loop()
    last_write = loop.time()
    read_at: float | None = None
    while not _closing(request):
        # Armed before the read: a commit signalled while this reads or writes ends the
        # sleep below at once, so no event waits for the fallback poll.
        watch.arm()
        handed = _handed_after(watch, cursor)
        live = read_at is not None and supervisor.running(session_id)
        if handed and live and read_at is not None:
            # Live, from memory: the rows this process's writer just committed. While the
            # sideband is watched here the log cannot be complete, so the row need not be
            # read; the fallback poll (read_at) still reads the database.
            await response.write(b"".join(_message(row) for row in handed))
            cursor = int(handed[-1]["seq"])
            last_write = loop.time()
            last_write = await _sleep(request, response, watch, read_at, last_write)
            continue
        if (
            live
            and handed == []
            and not watch.unseen
            and read_at is not None
            and loop.time() < read_at
        ):
            # Woken early (by a publish whose rows the last turn already took): nothing is
            # new, in memory or elsewhere; reading would only cost the database a query.
            last_write = await _sleep(request, response, watch, read_at, last_write)
            continue
        # Cleared before the read: a row another writer stores meanwhile sets it again.
        watch.unseen = False
        async with sessionmaker() as s:
            # The row before the events: whatever was written before the row said the log is
            # complete is in this page, so ending below loses nothing.
            row = await queries.get_session_row(s, session_id)
            page = await queries.session_events_after(s, session_id, cursor, PAGE_SIZE)
        if page:
            await response.write(b"".join(_message(event) for event in page))
            cursor = page[-1].seq
            last_write = loop.time()
            if len(page) == PAGE_SIZE:
                continue  # more backlog: no pause
        recording_here = supervisor.running(session_id)
        if row is None or _log_complete(row, recording_here):
            return
        read_at = loop.time() + _next_read_in(row, recording_here)
        last_write = await _sleep(request, response, watch, read_at, last_write)


async def _sleep(
    request: web.Request,
    response: web.StreamResponse,
    watch: Watch,
    read_at: float,
    last_write: float,
) -> float:
    """Sleep until a writer signals or the next read is due; the last write's time.

    Wakes now and then (no database) to send keepalives and to notice a client that left.
    """
    loop = asyncio.get_running_loop()
    while not _closing(request):
        now = loop.time()
        if now - last_write >= KEEPALIVE_S:
            await response.write(b": keepalive\n\n")
            last_write = now
        pause = min(read_at - now, KEEPALIVE_S - (now - last_write), CLOSED_CHECK_S)
        if pause <= 0 or await watch.wait(pause) or loop.time() >= read_at:
            break
    return last_write


async def session_events(request: web.Request) -> web.StreamResponse:
    """The session's events after the client's cursor, then live ones; ``monitor:read``.

    The stream ends when the session has ended and every event has been sent, when the client
    leaves, or when the server shuts down (the client resumes with ``Last-Event-ID``).

    Raises (before any byte of the stream is sent):
        UnauthorizedError: ``missing_credentials``, ``invalid_api_key``.
        ForbiddenError: ``insufficient_scope`` (no ``monitor:read``).
        BadRequestError: ``invalid_last_event_id``, ``invalid_since``.
        RateLimitedError: ``too_many_streams`` (the key holds its most open streams).
        NotFoundError: ``session_not_found`` (unknown, or another tenant's).
    """
    principal = await api_principal(request)
    principal.require(Scope.MONITOR_READ)
    cursor = _cursor(request)
    session_id = request.match_info["session_id"]
    # The slot before the session's look-up: a key at its cap costs no more database work.
    with request.app[app_state.STREAM_SLOTS].hold(principal.key_id):
        # Another tenant's session is not found, as an unknown one.
        await request.app[app_state.SESSIONS].visible_row(principal, session_id)
        with request.app[app_state.EVENT_LOG].wakeups.watch(session_id) as watch:
            return await _stream(request, session_id, cursor, watch)


async def _stream(
    request: web.Request, session_id: str, cursor: int, watch: Watch
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            hdrs.CACHE_CONTROL: "no-store",
            # nginx and friends would otherwise hold events back in their buffers.
            "X-Accel-Buffering": "no",
        }
    )
    response.content_type = "text/event-stream"
    await response.prepare(request)
    if request.method == hdrs.METH_HEAD:
        return response
    logger.debug("event stream opened session_id=%s after_seq=%d", session_id, cursor)
    try:
        await response.write(f"retry: {RETRY_MS}\n\n".encode())
        await _pump(request, response, session_id, cursor, watch)
    except ConnectionResetError:
        pass  # the client left between our check and the write
    except SQLAlchemyError:
        # The headers are out: no problem body now. The client resumes from its last id.
        logger.warning(
            "event stream cut by a database error session_id=%s", session_id, exc_info=True
        )
    logger.debug("event stream closed session_id=%s", session_id)
    return response
