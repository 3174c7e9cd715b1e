"""Two writers of one session's event log (its recorder and a broker event written outside
it, like the duration backstop's) never lose an event to a seq clash."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from broker import app_state
from broker.db import queries
from broker.db.models import SessionEvent
from broker.record import event_writer
from broker.record.event_classes import EventClass
from broker.record.event_log import WRITE_ATTEMPTS, EventCaps, EventRecorder, append_event
from tests.support.broker_server import RunningBroker
from tests.support.flow import session_events, stored_events


async def test_a_seq_taken_by_another_writer_renumbers_the_recorders_buffer(
    broker: RunningBroker,
) -> None:
    session = await broker.create_session(tools=["lookup_order"])
    sessionmaker = broker.app[app_state.SESSIONMAKER]
    recorder = EventRecorder(sessionmaker, session["id"])
    await recorder.start()
    for n in range(3):
        recorder.record("in", {"type": "response.created", "n": n})
    # Written before the recorder flushes: it takes seq 1, which the recorder handed out.
    await append_event(sessionmaker, session["id"], {"type": "broker.leash", "limit": "x"})
    await recorder.flush()
    recorder.record("in", {"type": "response.done", "n": 3})
    await recorder.flush()

    rows = await stored_events(broker, session["id"])
    assert [r.seq for r in rows] == [1, 2, 3, 4, 5]
    assert [r.type for r in rows] == [
        "broker.leash",
        "response.created",
        "response.created",
        "response.created",
        "response.done",
    ]
    assert [r.payload.get("n") for r in rows[1:]] == [0, 1, 2, 3]


def response_done(total: int) -> dict[str, Any]:
    return {
        "type": "response.done",
        "response": {
            "id": f"resp_{total}",
            "status": "completed",
            "usage": {"total_tokens": total, "input_tokens": total - 1, "output_tokens": 1},
        },
    }


def fail_next_writes(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    """The event log's next ``count`` writes fail as a locked database would."""
    real = queries.store_event_batch
    left = [count]

    async def flaky(s: Any, folds: Any) -> None:
        if left[0]:
            left[0] -= 1
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        await real(s, folds)

    monkeypatch.setattr(queries, "store_event_batch", flaky)


async def test_usage_of_a_batch_dropped_after_failed_writes_is_still_counted(
    broker: RunningBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database fails every attempt at one batch (it is dropped from the log): the usage
    in it rides on the next write, so the session's totals, which bill, stay whole."""
    session = await broker.create_session(tools=["lookup_order"])
    sessionmaker = broker.app[app_state.SESSIONMAKER]
    fail_next_writes(monkeypatch, WRITE_ATTEMPTS)
    recorder = EventRecorder(sessionmaker, session["id"])
    await recorder.start()
    recorder.record("in", response_done(15))
    await recorder.flush()  # every attempt fails: the batch is dropped
    recorder.record("in", response_done(2))
    await recorder.flush()

    detail = await broker.get_session(session["id"])
    assert detail["usage"]["responses"] == 2
    assert detail["usage"]["total_tokens"] == 17
    stored = await session_events(broker, session["id"], "response.done")
    assert [e["payload"]["response"]["id"] for e in stored] == ["resp_2"]  # the log lost one


async def test_carried_usage_alone_is_written_by_the_final_flush(
    broker: RunningBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = await broker.create_session(tools=["lookup_order"])
    sessionmaker = broker.app[app_state.SESSIONMAKER]
    fail_next_writes(monkeypatch, WRITE_ATTEMPTS)
    recorder = EventRecorder(sessionmaker, session["id"])
    await recorder.start()
    recorder.record("in", response_done(9))
    await recorder.flush()  # dropped
    await recorder.flush()  # nothing buffered: the carried usage alone is written
    detail = await broker.get_session(session["id"])
    assert (detail["usage"]["responses"], detail["usage"]["total_tokens"]) == (1, 9)


async def test_a_write_alongside_an_event_is_stored_with_it_or_not_at_all(
    broker: RunningBroker,
) -> None:
    """An operator's instructions change and its audit event share one transaction: when
    the event cannot be stored, the change is rolled back too."""
    session = await broker.create_session(tools=["lookup_order"])
    sessionmaker = broker.app[app_state.SESSIONMAKER]

    async def instructions() -> str | None:
        async with sessionmaker() as s:
            row = await queries.get_session_row(s, session["id"])
        assert row is not None
        return row.instructions

    def alongside(text: str) -> Any:
        async def store(s: Any) -> None:
            await queries.set_instructions(s, session["id"], text)

        return store

    before = await instructions()
    with pytest.raises(KeyError):
        # No "type": the event's row cannot be built, after the change was made.
        await append_event(
            sessionmaker, session["id"], {"by": "x"}, EventClass.KEPT, alongside=alongside("lost")
        )
    assert await instructions() == before != "lost"
    assert await session_events(broker, session["id"]) == []

    await append_event(
        sessionmaker,
        session["id"],
        {"type": "broker.instructions_updated", "instructions": "kept"},
        EventClass.KEPT,
        alongside=alongside("kept"),
    )
    assert await instructions() == "kept"
    assert [e["type"] for e in await session_events(broker, session["id"])] == [
        "broker.instructions_updated"
    ]


async def test_the_writers_lag_is_the_oldest_unstored_events_wait_and_clears_when_stored(
    broker: RunningBroker,
) -> None:
    """The overload signal reads the writer's lag: it must grow while events wait and fall
    to zero once everything is stored, whichever write stored it (two flushes at once: the
    second finds its events stored by the first's write). A lag left behind would read as
    a stuck writer and refuse every new session."""
    sessionmaker = broker.app[app_state.SESSIONMAKER]
    event_log = broker.app[app_state.EVENT_LOG]
    first = await broker.create_session(tools=["lookup_order"])
    second = await broker.create_session(tools=["lookup_order"])
    recorders = [EventRecorder(sessionmaker, s["id"]) for s in (first, second)]
    for recorder in recorders:
        await recorder.start()
        recorder.record("in", {"type": "response.created", "n": 1})
    waited = event_log.lag_s
    assert waited >= 0.0 and event_log.pending_events == 2
    await asyncio.sleep(0.01)
    assert event_log.lag_s > waited
    await asyncio.gather(*(recorder.flush() for recorder in recorders))
    assert (event_log.pending_events, event_log.lag_s) == (0, 0.0)
    for recorder in recorders:
        recorder.stop()
        await recorder.flush()


async def _row_and_rows(broker: RunningBroker, session_id: str) -> tuple[Any, int]:
    async with broker.app[app_state.SESSIONMAKER]() as s:
        row = await queries.get_session_row(s, session_id)
        rows = await s.scalars(select(SessionEvent).where(SessionEvent.session_id == session_id))
        return row, len(rows.all())


async def test_counts_are_folded_lazily_usage_at_once_and_everything_by_a_flush(
    broker: RunningBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows are stored every tick; the session row's counters follow within FOLD_EVERY_S
    (folding a thousand rows a tick cost more than their rows), except usage, which is
    folded with the response.done that reports it, and a flush, which folds everything."""
    monkeypatch.setattr(event_writer, "FOLD_EVERY_S", 30.0)
    session = await broker.create_session(tools=["lookup_order"])
    recorder = EventRecorder(broker.app[app_state.SESSIONMAKER], session["id"])
    await recorder.start()
    writer = asyncio.create_task(recorder.run())
    try:
        for n in range(3):
            recorder.record("in", {"type": "response.created", "n": n})
        async with asyncio.timeout(10):
            while (await _row_and_rows(broker, session["id"]))[1] < 3:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        row, _ = await _row_and_rows(broker, session["id"])
        assert row.events_stored == 0  # owed, not yet folded

        recorder.record("in", response_done(7))
        async with asyncio.timeout(10):
            while (await _row_and_rows(broker, session["id"]))[1] < 4:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        row, _ = await _row_and_rows(broker, session["id"])
        # Usage is folded with its rows, and the owed counts ride along.
        assert (row.usage_responses, row.usage_total_tokens, row.events_stored) == (1, 7, 4)

        recorder.record("in", {"type": "rate_limits.updated", "rate_limits": []})
        await recorder.flush()
        row, stored = await _row_and_rows(broker, session["id"])
        assert (row.events_stored, row.events_coalescible, stored) == (5, 1, 5)
    finally:
        recorder.stop()
        await asyncio.wait_for(writer, 10)


async def test_owed_counts_of_a_quiet_session_are_folded_when_due(
    broker: RunningBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session that goes quiet (or only drops events at its cap) still gets its counts
    folded, by the writer's own sweep, with no flush and no new row."""
    monkeypatch.setattr(event_writer, "FOLD_EVERY_S", 0.3)
    broker.app[app_state.EVENT_LOG].caps = EventCaps(coalescible_events=1)
    session = await broker.create_session(tools=["lookup_order"])
    recorder = EventRecorder(broker.app[app_state.SESSIONMAKER], session["id"])
    await recorder.start()
    writer = asyncio.create_task(recorder.run())
    try:
        recorder.record("in", {"type": "rate_limits.updated", "n": 1})
        recorder.record("in", {"type": "rate_limits.updated", "n": 2})  # past the cap
        async with asyncio.timeout(10):
            while True:
                row, stored = await _row_and_rows(broker, session["id"])
                if row.events_stored == 1 and row.events_dropped == 1:
                    break
                await asyncio.sleep(0.05)
        assert stored == 1
    finally:
        recorder.stop()
        await asyncio.wait_for(writer, 10)
