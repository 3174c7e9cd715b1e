"""Stranded sessions reach an end: never offered before their secret expired, or left
``offered`` by a broker that stopped mid-offer."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from broker import app_state
from broker.db.models import SessionRow, utcnow
from tests.support.broker_server import RunningBroker
from tests.support.flow import session_events
from tests.support.metrics import moved, scrape


async def backdate(broker: RunningBroker, session_id: str, **values: object) -> None:
    async with broker.app[app_state.SESSIONMAKER].begin() as s:
        await s.execute(update(SessionRow).where(SessionRow.id == session_id).values(**values))


async def test_stranded_sessions_are_ended_once_and_fresh_ones_are_left(
    broker: RunningBroker,
) -> None:
    ttl = broker.settings.client_secret_ttl
    never_offered = await broker.create_session()
    interrupted = await broker.create_session()
    fresh = await broker.create_session()
    long_ago = utcnow() - timedelta(seconds=ttl + 120)
    await backdate(broker, never_offered["id"], created_at=long_ago)
    await backdate(
        broker,
        interrupted["id"],
        state="offered",
        offered_at=utcnow() - timedelta(seconds=3 * broker.settings.provider_timeout + 120),
    )
    before = await scrape(broker)

    assert await broker.app[app_state.REAPER].sweep() == 2
    assert await broker.app[app_state.REAPER].sweep() == 0  # ended once

    expired = await broker.get_session(never_offered["id"])
    assert (expired["state"], expired["end_reason"]) == ("ended", "expired")
    failed = await broker.get_session(interrupted["id"])
    assert (failed["state"], failed["end_reason"]) == ("failed", "offer: interrupted")
    assert (await broker.get_session(fresh["id"]))["state"] == "created"
    [swept] = await session_events(broker, never_offered["id"], "broker.session_swept")
    assert swept["payload"] == {
        "type": "broker.session_swept",
        "state_was": "created",
        "reason": "expired",
    }
    after = await scrape(broker)
    assert moved(before, after, "broker_sessions_ended_total", reason="expired") == 1
    assert moved(before, after, "broker_sessions_ended_total", reason="offer_failed") == 1
