"""GET /api/v1/sessions/{id}/events: the session's event log as server-sent events."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker import app_state
from broker.api import events_stream
from broker.db import queries
from broker.db.models import SessionRow, SessionState
from broker.record.event_classes import EventClass
from broker.record.event_log import EventRecorder, append_event
from tests.conftest import BrokerFactory
from tests.support.broker_server import PROVIDER_KEY, RunningBroker
from tests.support.flow import (
    LOOKUP_42_OUTPUT,
    ask,
    connect_browser,
    says,
    session_events,
    wait_session_ended,
)
from tests.support.sql import statements_run

READ_TIMEOUT_S = 10.0


@dataclass
class Message:
    id: int
    event: str
    data: dict[str, Any]


@dataclass
class EventStream:
    """An open SSE response, read line by line; every read is bounded."""

    response: aiohttp.ClientResponse
    lines: list[str] = field(default_factory=list)
    """Every line read, comments and ``retry:`` included."""

    async def next(self, timeout: float = READ_TIMEOUT_S) -> Message | None:  # noqa: ASYNC109
        """The next message, or ``None`` when the server ended the stream."""
        fields: dict[str, str] = {}
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.response.content.readline()
                if not raw:
                    assert not fields, f"stream ended inside a message: {fields}"
                    return None
                line = raw.decode("utf-8").removesuffix("\n")
                self.lines.append(line)
                if line == "":
                    if "data" in fields:
                        return Message(
                            int(fields["id"]), fields["event"], json.loads(fields["data"])
                        )
                    fields = {}  # a block without data (the retry line) dispatches nothing
                elif not line.startswith(":"):
                    name, _, value = line.partition(":")
                    assert name not in fields, f"field {name} twice in one message"
                    fields[name] = value.removeprefix(" ")

    async def take(self, count: int) -> list[Message]:
        messages = []
        for _ in range(count):
            message = await self.next()
            assert message is not None, f"stream ended after {len(messages)} of {count}"
            messages.append(message)
        return messages

    async def rest(self, timeout: float = READ_TIMEOUT_S) -> list[Message]:  # noqa: ASYNC109
        """Every message until the server ends the stream (which it must, within ``timeout``)."""
        messages = []
        async with asyncio.timeout(timeout):
            while (message := await self.next()) is not None:
                messages.append(message)
        return messages


def events_url(broker: RunningBroker, session_id: str, query: str = "") -> str:
    return f"{broker.base_url}/api/v1/sessions/{session_id}/events{query}"


async def open_stream(
    http: aiohttp.ClientSession,
    broker: RunningBroker,
    session_id: str,
    key: str,
    *,
    query: str = "",
    last_event_id: str | None = None,
) -> aiohttp.ClientResponse:
    headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    async with asyncio.timeout(READ_TIMEOUT_S):
        return await http.get(events_url(broker, session_id, query), headers=headers)


async def read_all(
    http: aiohttp.ClientSession, broker: RunningBroker, session_id: str, key: str, **kw: Any
) -> list[Message]:
    response = await open_stream(http, broker, session_id, key, **kw)
    try:
        assert response.status == 200, await response.text()
        return await EventStream(response).rest()
    finally:
        response.close()


async def end_as_elsewhere(
    sessionmaker: async_sessionmaker[AsyncSession], session_id: str, ended_at: datetime
) -> None:
    """Mark the session ended at ``ended_at`` the way another broker process's end looks
    from here: the row changes, and nothing of this process is told."""
    async with sessionmaker.begin() as s:
        await s.execute(
            update(SessionRow)
            .where(SessionRow.id == session_id)
            .values(state=SessionState.ENDED, ended_at=ended_at)
        )


def assert_consecutive(messages: list[Message], first: int = 1) -> None:
    assert [m.id for m in messages] == list(range(first, first + len(messages)))
    for m in messages:
        assert m.data["seq"] == m.id
        assert m.data["direction"] == m.event


async def finished_call(broker: RunningBroker) -> dict[str, Any]:
    """A session whose call ran lookup_order 42 on the sideband, then ended."""
    session = await broker.create_session(tools=["lookup_order"])
    browser = await connect_browser(broker, session)
    try:
        ask(browser, 'lookup_order {"order_id": "42"}')
        await browser.wait_for("response.done", says(LOOKUP_42_OUTPUT))
    finally:
        await browser.close()
    detail = await wait_session_ended(broker, session["id"], timeout=10)
    assert detail["state"] == "ended"
    return session


async def test_a_live_call_streams_every_event_in_order(
    broker: RunningBroker, http: aiohttp.ClientSession
) -> None:
    """Invariant: the stream, opened before the call and read while it runs, is the stored
    log exactly (seq 1, 2, 3, … with nothing skipped or repeated), carries the broker's
    function_call_output while the call is live, and ends by itself once the call has ended.
    """
    monitor = await broker.new_key("monitor:read")
    session = await broker.create_session(tools=["lookup_order"])
    response = await open_stream(http, broker, session["id"], monitor)
    try:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["X-Accel-Buffering"] == "no"
        stream = EventStream(response)
        received: list[Message] = []
        browser = await connect_browser(broker, session)
        try:
            ask(browser, 'lookup_order {"order_id": "42"}')
            # Read live, while the browser is still in the call.
            async with asyncio.timeout(READ_TIMEOUT_S):
                while True:
                    message = await stream.next()
                    assert message is not None, "stream ended while the call was live"
                    received.append(message)
                    item = message.data["payload"].get("item") or {}
                    if item.get("type") == "function_call_output":
                        break
            assert (message.event, message.data["type"]) == ("out", "conversation.item.create")
            assert item["output"] == LOOKUP_42_OUTPUT
            await browser.wait_for("response.done", says(LOOKUP_42_OUTPUT))
        finally:
            await browser.close()
        await wait_session_ended(broker, session["id"], timeout=10)
        received += await stream.rest()
    finally:
        response.close()

    assert stream.lines[:2] == ["retry: 1000", ""]
    assert_consecutive(received)
    assert {m.event for m in received} == {"in", "out", "broker"}
    types = [m.data["type"] for m in received]
    assert "response.function_call_arguments.done" in types
    assert "broker.tool_call" in types
    assert types[-1] == "broker.call_ended"  # written after the session ended: not cut off
    for m in received:
        assert datetime.fromisoformat(m.data["at"]).utcoffset() == timedelta(0)
    # The same as the stored log, event for event.
    stored = await session_events(broker, session["id"])
    assert [(m.event, m.data["type"], m.data["payload"]) for m in received] == [
        (e["direction"], e["type"], e["payload"]) for e in stored
    ]
    raw = "\n".join(stream.lines)
    assert session["client_secret"]["value"] not in raw
    assert PROVIDER_KEY not in raw


async def test_a_dropped_stream_resumes_after_last_event_id_with_no_gap(
    broker: RunningBroker, http: aiohttp.ClientSession
) -> None:
    """Invariant: reconnecting with Last-Event-ID: N goes on at N + 1, and the two halves are
    the full stream exactly (no gap, no duplicate); the header wins over ?since=."""
    monitor = await broker.new_key("monitor:read")
    session = await finished_call(broker)
    full = await read_all(http, broker, session["id"], monitor)
    assert len(full) > 8
    assert_consecutive(full)

    first_n = 5
    response = await open_stream(http, broker, session["id"], monitor)
    try:
        head = await EventStream(response).take(first_n)
    finally:
        response.close()  # the client drops the connection mid-stream

    tail = await read_all(
        http, broker, session["id"], monitor, last_event_id=str(first_n), query="?since=2"
    )
    assert tail[0].id == first_n + 1
    assert head + tail == full


async def test_since_replays_an_ended_session_and_closes(
    broker: RunningBroker, http: aiohttp.ClientSession
) -> None:
    """Invariant: ?since=K on an ended session sends K + 1 … last and then ends the stream
    promptly (no waiting for live events that cannot come)."""
    monitor = await broker.new_key("monitor:read")
    session = await finished_call(broker)
    full = await read_all(http, broker, session["id"], monitor)
    last = full[-1].id

    started = time.monotonic()
    replay = await read_all(http, broker, session["id"], monitor, query="?since=3")
    assert replay == full[3:]
    assert await read_all(http, broker, session["id"], monitor, query=f"?since={last}") == []
    assert await read_all(http, broker, session["id"], monitor, query="?since=999999") == []
    # Both replays ended on their own, well inside the read timeouts.
    assert time.monotonic() - started < 5


async def test_pages_of_a_long_log_join_without_gap_or_duplicate(
    broker: RunningBroker, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Invariant: a log longer than one page (and written while the stream polls) arrives
    whole, in order; resuming in the middle of a page works too."""
    monkeypatch.setattr(events_stream, "FALLBACK_POLL_S", 0.5)
    monitor = await broker.new_key("monitor:read")
    session = await broker.create_session(tools=["lookup_order"])
    sessionmaker = broker.app[app_state.SESSIONMAKER]
    total = 2 * events_stream.PAGE_SIZE + 37

    async def write(first: int, last: int) -> None:
        async with sessionmaker.begin() as s:
            await queries.add_events(
                s,
                [
                    {
                        "session_id": session["id"],
                        "seq": seq,
                        "direction": ("in", "out", "broker")[seq % 3],
                        "type": "test.event",
                        "payload": {"type": "test.event", "n": seq, "text": "line\nbreak"},
                        "at": datetime.now(UTC),
                    }
                    for seq in range(first, last + 1)
                ],
            )

    await write(1, events_stream.PAGE_SIZE + 10)
    response = await open_stream(http, broker, session["id"], monitor)
    try:
        stream = EventStream(response)
        head = await stream.take(events_stream.PAGE_SIZE + 10)
        # Written behind the event log's writers, as by another broker process: no wake-up,
        # so it arrives by the fallback poll.
        await write(events_stream.PAGE_SIZE + 11, total)
        await end_as_elsewhere(
            sessionmaker, session["id"], datetime.now(UTC) - timedelta(minutes=1)
        )
        received = head + await stream.rest()
    finally:
        response.close()
    assert_consecutive(received)
    assert len(received) == total
    assert received[0].data["payload"] == {"type": "test.event", "n": 1, "text": "line\nbreak"}

    resumed = await read_all(
        http, broker, session["id"], monitor, last_event_id=str(events_stream.PAGE_SIZE - 1)
    )
    assert resumed == received[events_stream.PAGE_SIZE - 1 :]


async def test_events_written_just_after_the_end_are_not_cut_off(
    broker: RunningBroker, http: aiohttp.ClientSession
) -> None:
    """Invariant: a sideband records the session's end before it flushes its last events, so
    "ended" alone does not close the stream: an event stored shortly after ``ended_at`` (as
    from another broker process, which this one cannot watch) is still sent, then it closes."""
    monitor = await broker.new_key("monitor:read")
    session = await broker.create_session(tools=["lookup_order"])
    sessionmaker = broker.app[app_state.SESSIONMAKER]
    await end_as_elsewhere(sessionmaker, session["id"], datetime.now(UTC))
    response = await open_stream(http, broker, session["id"], monitor)
    try:
        stream = EventStream(response)
        await asyncio.sleep(events_stream.SETTLE_S / 2)
        async with sessionmaker.begin() as s:
            await queries.add_events(
                s,
                [
                    {
                        "session_id": session["id"],
                        "seq": 1,
                        "direction": "broker",
                        "type": "broker.call_ended",
                        "payload": {"type": "broker.call_ended", "reason": "test"},
                        "at": datetime.now(UTC),
                    }
                ],
            )
        received = await stream.rest(timeout=events_stream.SETTLE_S + 3)
    finally:
        response.close()
    assert [(m.id, m.data["type"]) for m in received] == [(1, "broker.call_ended")]


async def test_a_quiet_stream_sends_keepalive_comments(
    broker: RunningBroker, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Invariant: silence is broken by ': keepalive' comments, which carry no event."""
    monkeypatch.setattr(events_stream, "KEEPALIVE_S", 0.3)
    monitor = await broker.new_key("monitor:read")
    session = await broker.create_session(tools=["lookup_order"])
    response = await open_stream(http, broker, session["id"], monitor)
    try:
        stream = EventStream(response)
        with pytest.raises(TimeoutError):
            await stream.next(timeout=1.2)  # a session with no call has no events
    finally:
        response.close()
    assert stream.lines.count(": keepalive") >= 2


async def test_the_handler_stops_when_the_client_leaves(
    broker: RunningBroker, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """Invariant: a stream whose client disconnected stops polling (no handler left behind)."""
    caplog.set_level(logging.DEBUG, logger=events_stream.__name__)
    monitor = await broker.new_key("monitor:read")
    session = await broker.create_session(tools=["lookup_order"])
    response = await open_stream(http, broker, session["id"], monitor)
    async with asyncio.timeout(2):
        while "event stream opened" not in caplog.text:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    response.close()
    async with asyncio.timeout(3):
        while "event stream closed" not in caplog.text:  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def test_an_open_stream_does_not_hold_up_shutdown(
    make_broker: BrokerFactory, http: aiohttp.ClientSession
) -> None:
    """Invariant: stopping the broker ends open streams at once instead of waiting out
    aiohttp's shutdown timeout (5 s here, 60 s under run_app) before the sidebands drain."""
    broker = await make_broker()
    monitor = await broker.new_key("monitor:read")
    session = await broker.create_session(tools=["lookup_order"])
    response = await open_stream(http, broker, session["id"], monitor)
    try:
        stream = EventStream(response)
        started = time.monotonic()
        async with asyncio.timeout(4):
            await broker.close()
        assert time.monotonic() - started < 2
        # The client sees the stream end (and would resume elsewhere with Last-Event-ID).
        assert await stream.rest(timeout=2) == []
        assert stream.lines[:2] == ["retry: 1000", ""]
    finally:
        response.close()


async def test_auth_scope_unknown_session_and_bad_cursor(broker: RunningBroker) -> None:
    """Invariant: no key 401, a key without monitor:read 403 (even for its own session),
    an unknown session 404, a malformed cursor 400 with a stable code; never a stream."""
    session = await broker.create_session(tools=["lookup_order"])
    path = f"/api/v1/sessions/{session['id']}/events"
    creator = await broker.new_key("sessions:create")
    monitor = await broker.new_key("monitor:read")

    reply = await broker.request("GET", path, token=None)
    assert (reply.status, reply.code) == (401, "missing_credentials")
    reply = await broker.request("GET", path, token="bk_not_a_key")
    assert (reply.status, reply.code) == (401, "invalid_api_key")
    reply = await broker.request("GET", path, token=creator)
    assert (reply.status, reply.code) == (403, "insufficient_scope")
    reply = await broker.request("GET", "/api/v1/sessions/sess_nope/events", token=monitor)
    assert (reply.status, reply.code) == (404, "session_not_found")

    for bad in ("abc", "-1", "1.5", "0x10", "1 2", "9" * 19):
        reply = await broker.request("GET", path, token=monitor, headers={"Last-Event-ID": bad})
        assert (reply.status, reply.code) == (400, "invalid_last_event_id"), bad
        assert reply.headers["Content-Type"].startswith("application/problem+json")
        assert bad not in reply.json()["detail"]
    for bad in ("", "abc", "-3"):
        reply = await broker.request("GET", f"{path}?since={bad}", token=monitor)
        assert (reply.status, reply.code) == (400, "invalid_since"), bad


def stream_reads(statements: list[str]) -> list[str]:
    """The event stream's reads of the log (``seq > cursor``), among ``statements``."""
    return [s for s in statements if s.startswith("SELECT") and "session_events.seq >" in s]


async def test_an_idle_stream_sleeps_until_the_writer_commits(
    broker: RunningBroker, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Invariant: an idle stream does not poll the database; it reads the log when the event
    log's writer (the recorder, or append_event) has committed to its session, and then sends
    what was written. The fallback poll (for other processes' writes) is set a minute away,
    so only the writer's wake-up can deliver these events."""
    monkeypatch.setattr(events_stream, "FALLBACK_POLL_S", 60.0)
    monitor = await broker.new_key("monitor:read")
    session = await broker.create_session(tools=["lookup_order"])
    sessionmaker = broker.app[app_state.SESSIONMAKER]
    engine = broker.app[app_state.ENGINE]
    await append_event(sessionmaker, session["id"], {"type": "broker.test", "n": 1})
    response = await open_stream(http, broker, session["id"], monitor)
    try:
        stream = EventStream(response)
        [first] = await stream.take(1)  # the stream has read the log and goes to sleep
        assert first.data["payload"]["n"] == 1
        with statements_run(engine) as statements:
            async with asyncio.timeout(10):
                await asyncio.sleep(1.5)  # the old stream read the log 6 times in this second
                assert stream_reads(statements) == []

                recorder = EventRecorder(sessionmaker, session["id"])
                await recorder.start()
                recorder.record("broker", {"type": "broker.test", "n": 2}, EventClass.KEPT)
                await recorder.flush()
                [second] = await stream.take(1)
                assert len(stream_reads(statements)) == 1  # one read, after the commit

                await append_event(
                    sessionmaker, session["id"], {"type": "broker.test", "n": 3}, EventClass.KEPT
                )
                [third] = await stream.take(1)
                assert len(stream_reads(statements)) == 2
    finally:
        response.close()
    assert [(m.id, m.data["payload"]["n"]) for m in (second, third)] == [(2, 2), (3, 3)]


async def test_a_call_watched_here_is_streamed_from_memory_not_read_back(
    broker: RunningBroker, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Invariant: while this process watches the call, the events its writer commits reach
    the stream from memory (the database is read for the replay, after a gap and on the
    fallback poll, set a minute away here); what is sent is the stored log exactly."""
    monkeypatch.setattr(events_stream, "FALLBACK_POLL_S", 60.0)
    monitor = await broker.new_key("monitor:read")
    session = await broker.create_session(tools=["lookup_order"])
    browser = await connect_browser(broker, session)
    try:
        response = await open_stream(http, broker, session["id"], monitor)
        try:
            stream = EventStream(response)
            replayed = await stream.take(1)  # the replay read the log once
            received = list(replayed)
            with statements_run(broker.app[app_state.ENGINE]) as statements:
                ask(browser, 'lookup_order {"order_id": "42"}')
                async with asyncio.timeout(READ_TIMEOUT_S):
                    while not any(m.data["type"] == "broker.tool_call" for m in received):
                        message = await stream.next()
                        assert message is not None
                        received.append(message)
                    await browser.wait_for("response.done", says(LOOKUP_42_OUTPUT))
                reads = stream_reads(statements)
        finally:
            response.close()
    finally:
        await browser.close()
    assert len(received) > 10
    assert reads == []
    assert_consecutive(received)
    stored = await session_events(broker, session["id"])
    assert [(m.event, m.data["type"], m.data["payload"]) for m in received] == [
        (e["direction"], e["type"], e["payload"]) for e in stored[: len(received)]
    ]


async def test_a_key_at_its_stream_cap_is_refused_while_another_key_streams(
    make_broker: BrokerFactory, http: aiohttp.ClientSession
) -> None:
    """Invariant: one API key holds at most BROKER_EVENT_STREAMS_PER_KEY streams open; the
    next is 429 too_many_streams (problem+json, Retry-After) and never a stream; another key
    still streams; a stream that ends gives its slot back."""
    broker = await make_broker(event_streams_per_key=2)
    session = await broker.create_session(tools=["lookup_order"])
    greedy = await broker.new_key("monitor:read")
    other = await broker.new_key("monitor:read")
    held = [await open_stream(http, broker, session["id"], greedy) for _ in range(2)]
    try:
        assert [r.status for r in held] == [200, 200]
        refused = await open_stream(http, broker, session["id"], greedy)
        try:
            assert refused.status == 429
            assert refused.headers["Content-Type"].startswith("application/problem+json")
            assert int(refused.headers["Retry-After"]) >= 1
            async with asyncio.timeout(READ_TIMEOUT_S):
                problem = json.loads(await refused.text())
            assert (problem["status"], problem["code"]) == (429, "too_many_streams")
        finally:
            refused.close()

        elsewhere = await open_stream(http, broker, session["id"], other)
        elsewhere.close()
        assert elsewhere.status == 200

        held.pop().close()  # the client leaves: the handler notices, and frees the slot
        async with asyncio.timeout(5):
            while True:
                again = await open_stream(http, broker, session["id"], greedy)
                again.close()
                if again.status == 200:
                    break
                assert again.status == 429
                await asyncio.sleep(0.1)
    finally:
        for r in held:
            r.close()
