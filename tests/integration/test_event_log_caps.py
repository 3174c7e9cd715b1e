"""The event log's two classes of events: kept ones always stored, coalescible ones capped.

A page can make the provider emit events as fast as it likes; the log stores every kept event
(lifecycle, tool calls, tamper, leash, usage, errors) and coalescible ones (notices and other
high-rate traffic) up to the session's caps, counting the rest on the session row. The
session list reads those counters, never the event rows.
"""

from __future__ import annotations

import asyncio
from typing import Any

from broker import app_state
from broker.db.models import SessionRow
from broker.record.event_classes import EventClass, classify
from broker.record.event_log import EventRecorder, append_event, payload_bytes
from tests.conftest import BrokerFactory
from tests.support.broker_server import RunningBroker
from tests.support.flow import (
    LOOKUP_42_OUTPUT,
    ask,
    connect_browser,
    says,
    stored_events,
    wait_session_ended,
)
from tests.support.metrics import moved, scrape
from tests.support.sql import statements_run

FLOOD = 20_000


def response_done(total: int) -> dict[str, Any]:
    return {
        "type": "response.done",
        "response": {
            "id": f"resp_{total}",
            "status": "completed",
            "usage": {"total_tokens": total, "input_tokens": total - 1, "output_tokens": 1},
        },
    }


def notice(n: int) -> dict[str, Any]:
    """A coalescible provider event (deltas are folded, never stored: a test below)."""
    return {"type": "rate_limits.updated", "rate_limits": [], "n": n}


async def session_row(broker: RunningBroker, session_id: str) -> SessionRow:
    async with broker.app[app_state.SESSIONMAKER]() as s:
        row = await s.get(SessionRow, session_id)
    assert row is not None
    return row


async def listed(broker: RunningBroker, session_id: str) -> dict[str, Any]:
    reply = await broker.request("GET", "/api/v1/sessions?limit=200")
    assert reply.status == 200, reply.text
    [entry] = [e for e in reply.json()["sessions"] if e["id"] == session_id]
    return dict(entry)


async def test_a_flood_of_coalescible_events_is_capped_and_every_kept_event_stored(
    broker: RunningBroker,
) -> None:
    """Invariant: 20,000 tiny coalescible events leave at most the cap (2,000 by default)
    in the log; every kept event among them (a tool call, each response.done, an error) is
    stored and the usage totals are whole; the dropped events are counted on the session row
    and in broker_events_dropped_total; seq numbers run 1..N with no gap."""
    cap = broker.settings.event_log_max_coalescible
    assert cap == 2000
    session = await broker.create_session(tools=["lookup_order"])
    before = await scrape(broker)
    recorder = EventRecorder(broker.app[app_state.SESSIONMAKER], session["id"])
    async with asyncio.timeout(30):
        await recorder.start()
        writer = asyncio.create_task(recorder.run(), name="test-recorder")
        kept = 0
        for n in range(FLOOD):
            recorder.record("in", notice(n))
            if n == 5_000:
                recorder.record(
                    "in",
                    {
                        "type": "response.function_call_arguments.done",
                        "call_id": "call_1",
                        "name": "lookup_order",
                        "arguments": '{"order_id": "42"}',
                    },
                )
                recorder.record(
                    "broker",
                    {"type": "broker.tool_call", "call_id": "call_1", "status": "succeeded"},
                )
                kept += 2
            if n % 4_000 == 3_999:
                recorder.record("in", response_done(10))
                kept += 1
            if n == 15_000:
                recorder.record("in", {"type": "error", "error": {"code": "bad_event"}})
                kept += 1
            if n % 1_000 == 0:
                await asyncio.sleep(0)  # the writer task flushes while the flood goes on
        recorder.stop()
        await writer

        events = await stored_events(broker, session["id"])
        row = await session_row(broker, session["id"])
        detail = await broker.get_session(session["id"])
        entry = await listed(broker, session["id"])
        after = await scrape(broker)

    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    classes = [classify(e.direction, e.payload) for e in events]
    assert classes.count(EventClass.COALESCIBLE) == cap
    assert classes.count(EventClass.KEPT) == kept
    types = [e.type for e in events]
    assert types.count("response.done") == 5
    assert {"response.function_call_arguments.done", "broker.tool_call", "error"} <= set(types)
    # The first ``cap`` notices are the ones stored; the rest were dropped, not reordered.
    stored_notices = [e.payload["n"] for e in events if e.type == "rate_limits.updated"]
    assert stored_notices == list(range(cap))

    assert (row.events_stored, row.events_coalescible) == (len(events), cap)
    assert (row.events_dropped, row.events_errors) == (FLOOD - cap, 1)
    assert row.events_coalescible_bytes == sum(
        payload_bytes(e.payload) for e, c in zip(events, classes, strict=True) if c == "coalescible"
    )
    assert (detail["usage"]["responses"], detail["usage"]["total_tokens"]) == (5, 50)
    assert entry["events"] == {"stored": len(events), "dropped": FLOOD - cap}
    assert entry["errors"] == 1
    assert moved(before, after, "broker_events_dropped_total", cap="events") == FLOOD - cap


async def test_deltas_are_folded_into_their_done_event_and_only_counted(
    broker: RunningBroker,
) -> None:
    """A talking call's transcript deltas, and the part events its item repeats, are not
    stored (the item's done event holds the whole text): none reaches the log or the
    coalescible budget, each is counted in broker_events_folded_total, and the kept events
    around them are stored in order."""
    session = await broker.create_session(tools=["lookup_order"])
    before = await scrape(broker)
    recorder = EventRecorder(broker.app[app_state.SESSIONMAKER], session["id"])
    text = "".join(f"w{n} " for n in range(30))
    async with asyncio.timeout(30):
        await recorder.start()
        recorder.record("in", {"type": "response.created", "response": {"id": "resp_1"}})
        recorder.record("in", {"type": "response.content_part.added", "part": {"type": "audio"}})
        for n in range(30):
            recorder.record(
                "in",
                {"type": "response.output_audio_transcript.delta", "delta": f"w{n} "},
            )
        recorder.record("in", {"type": "response.output_audio_transcript.done", "transcript": text})
        recorder.record(
            "in",
            {
                "type": "response.output_item.done",
                "item": {"id": "item_1", "type": "message", "content": [{"transcript": text}]},
            },
        )
        recorder.record("in", response_done(3))
        await recorder.flush()
        events = await stored_events(broker, session["id"])
        row = await session_row(broker, session["id"])
        after = await scrape(broker)
    assert [e.type for e in events] == [
        "response.created",
        "response.output_item.done",
        "response.done",
    ]
    assert events[1].payload["item"]["content"][0]["transcript"] == text
    assert [e.seq for e in events] == [1, 2, 3]
    assert (row.events_stored, row.events_coalescible, row.events_dropped) == (3, 0, 0)
    assert moved(before, after, "broker_events_folded_total") == 32


async def test_the_bytes_cap_holds_across_writers_and_a_reattached_recorder(
    make_broker: BrokerFactory,
) -> None:
    """Invariant: coalescible events stop being stored once the session's stored ones would
    pass the bytes cap, whichever writer records them: a second recorder (a re-attached
    sideband) starts from the stored budget, and append_event checks the row; kept events
    still go in; every drop is counted."""
    broker = await make_broker(event_log_max_coalescible_bytes=1_000)
    sessionmaker = broker.app[app_state.SESSIONMAKER]
    session = await broker.create_session(tools=["lookup_order"])
    before = await scrape(broker)
    padded = [{"type": "rate_limits.updated", "pad": "p" * 150, "n": n} for n in range(20)]
    per_event = payload_bytes(padded[0])
    fits = 1_000 // per_event
    async with asyncio.timeout(10):
        first = EventRecorder(sessionmaker, session["id"])
        await first.start()
        for event in padded[:10]:
            first.record("in", event)
        await first.flush()

        second = EventRecorder(sessionmaker, session["id"])  # the sideband re-attached
        await second.start()
        for event in padded[10:]:
            second.record("in", event)
        second.record("broker", {"type": "broker.sideband_attached", "kind": "reconnect"})
        await second.flush()
        await append_event(
            sessionmaker,
            session["id"],
            {"type": "broker.note", "pad": "p" * 150},
            EventClass.COALESCIBLE,
        )
        await append_event(sessionmaker, session["id"], {"type": "broker.leash", "limit": "x"})

        events = await stored_events(broker, session["id"])
        row = await session_row(broker, session["id"])
        after = await scrape(broker)

    assert [e.payload.get("n") for e in events if e.type == "rate_limits.updated"] == list(
        range(fits)
    )
    assert [e.type for e in events][-2:] == ["broker.sideband_attached", "broker.leash"]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert row.events_coalescible_bytes <= 1_000
    assert row.events_dropped == 20 - fits + 1
    assert moved(before, after, "broker_events_dropped_total", cap="bytes") == 20 - fits + 1


async def test_a_real_call_with_no_room_for_coalescible_events_keeps_what_matters(
    make_broker: BrokerFactory,
) -> None:
    """Invariant: with the coalescible cap at 0, a real call through the emulator still
    stores its whole lifecycle, its tool call and its usage (every stored event is kept, seq
    has no gap), and the session row counts what was dropped."""
    broker = await make_broker(event_log_max_coalescible=0)
    session = await broker.create_session(tools=["lookup_order"])
    browser = await connect_browser(broker, session)
    try:
        ask(browser, 'lookup_order {"order_id": "42"}')
        await browser.wait_for("response.done", says(LOOKUP_42_OUTPUT))
    finally:
        await browser.close()
    detail = await wait_session_ended(broker, session["id"], timeout=10)
    async with asyncio.timeout(10):
        events = await stored_events(broker, session["id"])
        row = await session_row(broker, session["id"])

    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert {classify(e.direction, e.payload) for e in events} == {EventClass.KEPT}
    types = [e.type for e in events]
    for needed in (
        "broker.sideband_attached",
        "response.created",
        "response.function_call_arguments.done",
        "broker.tool_call",
        "response.done",
        "broker.call_ended",
    ):
        assert needed in types, needed
    assert detail["usage"]["responses"] == types.count("response.done") >= 2
    assert row.events_dropped > 0
    assert (row.events_stored, row.events_coalescible) == (len(events), 0)


async def test_the_session_list_reads_counters_not_event_rows(broker: RunningBroker) -> None:
    """Invariant: listing sessions sends no statement that touches session_events; each
    row's errors, last_event_at and event counts come from the session's counters, which
    equal what the log stores."""
    sessionmaker = broker.app[app_state.SESSIONMAKER]
    busy = await broker.create_session(tools=["lookup_order"])
    quiet = await broker.create_session(tools=["lookup_order"])
    async with asyncio.timeout(10):
        recorder = EventRecorder(sessionmaker, busy["id"])
        await recorder.start()
        for n in range(30):
            recorder.record("in", notice(n))
        recorder.record("in", {"type": "error", "error": {"code": "x"}})
        recorder.record("out", {"type": "error"})  # not a provider error
        await recorder.flush()
        events = await stored_events(broker, busy["id"])

        with statements_run(broker.app[app_state.ENGINE]) as statements:
            reply = await broker.request("GET", "/api/v1/sessions")
    assert reply.status == 200, reply.text
    assert statements, "the list ran no SQL at all?"
    assert not [s for s in statements if "session_events" in s]

    by_id = {e["id"]: e for e in reply.json()["sessions"]}
    assert by_id[busy["id"]]["errors"] == 1
    assert by_id[busy["id"]]["events"] == {"stored": 32, "dropped": 0}
    assert by_id[busy["id"]]["last_event_at"] is not None
    last = max(e.at for e in events)
    assert by_id[busy["id"]]["last_event_at"].startswith(last.strftime("%Y-%m-%dT%H:%M:%S"))
    assert by_id[quiet["id"]]["errors"] == 0
    assert by_id[quiet["id"]]["events"] == {"stored": 0, "dropped": 0}
    assert by_id[quiet["id"]]["last_event_at"] is None
