"""end_session, the one way a session ends: one end, one webhook row, one event, one count.

Run on the test's migrated database (``db_url``), with no app around it: what end_session
writes is all there is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.db import queries
from broker.db.engine import create_engine, make_sessionmaker
from broker.db.models import (
    SessionEvent,
    SessionRow,
    SessionState,
    SidebandState,
    WebhookDelivery,
    utcnow,
)
from broker.metrics import BrokerMetrics
from broker.session.end_reason import EndReason
from broker.session.ending import END_REASON_CHARS, end_session
from tests.support.rows import session_row

EVENT = {"type": "broker.test_end", "why": "a test"}


@pytest.fixture
async def sessionmaker(db_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(db_url)
    yield make_sessionmaker(engine)
    await engine.dispose()


async def add_session(
    sessionmaker: async_sessionmaker[AsyncSession],
    session_id: str,
    state: SessionState = SessionState.LIVE,
    **fields: Any,
) -> None:
    async with sessionmaker.begin() as s:
        s.add(session_row(session_id, [], state=state, notify_ended=True, **fields))


async def row_of(sessionmaker: async_sessionmaker[AsyncSession], session_id: str) -> SessionRow:
    async with sessionmaker() as s:
        row = await s.get(SessionRow, session_id)
    assert row is not None
    return row


async def count(
    sessionmaker: async_sessionmaker[AsyncSession], model: type[Any], session_id: str
) -> int:
    async with sessionmaker() as s:
        found = await s.scalar(
            select(func.count()).select_from(model).where(model.session_id == session_id)
        )
    return int(found or 0)


def ended_counts(metrics: BrokerMetrics) -> dict[str, float]:
    """Every sample of ``broker_sessions_ended_total`` by its ``reason`` label."""
    return {
        sample.labels["reason"]: sample.value
        for family in metrics.registry.collect()
        if family.name == "broker_sessions_ended"
        for sample in family.samples
        if sample.name == "broker_sessions_ended_total"
    }


async def test_an_end_writes_one_row_one_event_one_count_and_a_second_end_nothing(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    metrics = BrokerMetrics()
    await add_session(sessionmaker, "sess_a", call_id="rtc_a")
    before = ended_counts(metrics)

    assert await end_session(sessionmaker, metrics, "sess_a", EndReason.MAX_DURATION, event=EVENT)

    row = await row_of(sessionmaker, "sess_a")
    assert (row.state, row.end_reason) == (SessionState.ENDED, "max_duration")
    assert row.ended_at is not None
    async with sessionmaker() as s:
        [delivery] = (
            await s.scalars(select(WebhookDelivery).where(WebhookDelivery.session_id == "sess_a"))
        ).all()
        [event] = (
            await s.scalars(select(SessionEvent).where(SessionEvent.session_id == "sess_a"))
        ).all()
    assert delivery.type == queries.SESSION_ENDED
    assert (event.seq, event.direction, event.type, event.payload) == (
        1,
        "broker",
        "broker.test_end",
        EVENT,
    )
    assert row.events_stored == 1  # the event went through the event log's counters
    after = ended_counts(metrics)
    assert {k: after[k] - before[k] for k in after if after[k] != before[k]} == {"max_duration": 1}

    # Every other path that could end it now: nothing changes.
    for reason in (EndReason.MAX_DURATION, EndReason.HANGUP, EndReason.OFFER_FAILED):
        assert not await end_session(sessionmaker, metrics, "sess_a", reason, event=EVENT)
    again = await row_of(sessionmaker, "sess_a")
    assert (again.state, again.end_reason, again.ended_at) == (
        SessionState.ENDED,
        "max_duration",
        row.ended_at,
    )
    assert await count(sessionmaker, WebhookDelivery, "sess_a") == 1
    assert await count(sessionmaker, SessionEvent, "sess_a") == 1
    assert ended_counts(metrics) == after


async def test_an_offer_failure_fails_the_session_with_its_detail(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    metrics = BrokerMetrics()
    await add_session(sessionmaker, "sess_b", SessionState.OFFERED)
    detail = "the provider refused the call " + "x" * 300

    assert await end_session(
        sessionmaker,
        metrics,
        "sess_b",
        EndReason.OFFER_FAILED,
        detail=detail,
        from_states=[SessionState.OFFERED],
    )

    row = await row_of(sessionmaker, "sess_b")
    assert row.state == SessionState.FAILED
    assert row.end_reason == ("offer: " + detail)[:END_REASON_CHARS]
    assert len(row.end_reason) == END_REASON_CHARS
    assert ended_counts(metrics)["offer_failed"] == 1
    assert await count(sessionmaker, SessionEvent, "sess_b") == 0  # no event was given


async def test_a_session_outside_the_expected_states_is_left_alone(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """A session not yet in a call (here: created) is not ended by a call's end; the
    sideband state asked for is recorded anyway."""
    metrics = BrokerMetrics()
    await add_session(sessionmaker, "sess_c", SessionState.CREATED, sideband_state="connected")
    before = ended_counts(metrics)

    assert not await end_session(
        sessionmaker,
        metrics,
        "sess_c",
        EndReason.CALL_GONE,
        event=EVENT,
        sideband_state=SidebandState.CLOSED,
    )

    row = await row_of(sessionmaker, "sess_c")
    assert (row.state, row.end_reason, row.sideband_state) == (
        SessionState.CREATED,
        None,
        "closed",
    )
    assert await count(sessionmaker, WebhookDelivery, "sess_c") == 0
    assert await count(sessionmaker, SessionEvent, "sess_c") == 0
    assert ended_counts(metrics) == before


async def test_a_session_that_asked_for_no_webhook_ends_without_one(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    metrics = BrokerMetrics()
    async with sessionmaker.begin() as s:
        s.add(session_row("sess_d", [], state=SessionState.LIVE, notify_ended=False))

    assert await end_session(
        sessionmaker, metrics, "sess_d", EndReason.PROVIDER_CLOSED, detail="1000"
    )

    row = await row_of(sessionmaker, "sess_d")
    assert (row.state, row.end_reason) == (SessionState.ENDED, "provider_closed:1000")
    assert await count(sessionmaker, WebhookDelivery, "sess_d") == 0
    assert ended_counts(metrics)["provider_closed"] == 1


async def test_an_event_written_meanwhile_does_not_cost_the_end(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """The end's event takes the next ``seq`` after what is stored: a recorder that wrote
    first (seq 1, 2) pushes it to 3, and nothing is lost."""
    metrics = BrokerMetrics()
    await add_session(sessionmaker, "sess_e")
    async with sessionmaker.begin() as s:
        await queries.add_events(
            s,
            [
                {
                    "session_id": "sess_e",
                    "seq": seq,
                    "direction": "in",
                    "type": "response.done",
                    "payload": {"type": "response.done"},
                    "at": utcnow(),
                }
                for seq in (1, 2)
            ],
        )

    assert await end_session(
        sessionmaker, metrics, "sess_e", EndReason.TAMPER_REPEATED, event=EVENT
    )

    async with sessionmaker() as s:
        seqs = (
            await s.scalars(
                select(SessionEvent.seq)
                .where(SessionEvent.session_id == "sess_e")
                .order_by(SessionEvent.seq)
            )
        ).all()
    assert list(seqs) == [1, 2, 3]
    row = await row_of(sessionmaker, "sess_e")
    assert row.end_reason == "tamper_repeated"
    assert ended_counts(metrics)["tamper"] == 1  # both tamper ends share the label
    assert "tamper_repeated" not in ended_counts(metrics)


async def test_a_transition_cannot_end_a_session(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """Only end_session ends: the plain transition refuses the end states, so no path can
    end a session without its webhook, event and count."""
    await add_session(sessionmaker, "sess_f")
    for state in (SessionState.ENDED, SessionState.FAILED):
        async with sessionmaker.begin() as s:
            with pytest.raises(ValueError, match="end_session"):
                await queries.transition_session(s, "sess_f", [SessionState.LIVE], state)
    assert (await row_of(sessionmaker, "sess_f")).state == SessionState.LIVE


@pytest.mark.parametrize("reason", list(EndReason))
def test_every_reason_reads_back_from_what_is_stored(reason: EndReason) -> None:
    assert EndReason.of(reason.text()) is reason
    if reason in (EndReason.PROVIDER_CLOSED, EndReason.OFFER_FAILED, EndReason.ACCEPT_FAILED):
        assert EndReason.of(reason.text("some detail")) is reason
    else:
        with pytest.raises(ValueError, match="no detail"):
            reason.text("some detail")


def test_the_two_reasons_with_detail_keep_their_stored_form() -> None:
    assert EndReason.PROVIDER_CLOSED.text("1001") == "provider_closed:1001"
    assert EndReason.OFFER_FAILED.text("interrupted") == "offer: interrupted"
    assert EndReason.of("offer:interrupted") is EndReason.OFFER_FAILED
    assert EndReason.ACCEPT_FAILED.text("call_id_not_found") == "accept_failed: call_id_not_found"
    assert EndReason.of("made up") is EndReason.OTHER
    assert EndReason.of(None) is EndReason.OTHER
