"""Leases and fencing on a real database (SQLite, and PostgreSQL where two engines race).

A broker started on the test database creates the sessions; the lease queries and the fence
are then driven directly, as two instances would.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker import app_state
from broker.db import queries
from broker.db.engine import create_engine, make_sessionmaker
from broker.db.fence import Fence, LeaseLostError, check_fence, fenced, lost_fences
from broker.db.models import CallLease, SessionRow, utcnow
from tests.conftest import BrokerFactory
from tests.support.broker_server import RunningBroker

TTL = 30.0


@pytest.fixture
async def quiet(make_broker: BrokerFactory) -> RunningBroker:
    """A broker whose own ownership task ticks once a minute: it leaves the test's leases to
    the test."""
    return await make_broker(lease_ttl_s=300)


async def live_session(broker: RunningBroker) -> str:
    """A session row in state ``live`` (the call itself plays no part here)."""
    session = await broker.create_session()
    async with broker.app[app_state.SESSIONMAKER].begin() as s:
        await s.execute(
            update(SessionRow)
            .where(SessionRow.id == session["id"])
            .values(state="live", call_id=f"rtc_{session['id']}", sideband_state="connected")
        )
    return str(session["id"])


async def expire(sm: async_sessionmaker[AsyncSession], session_id: str) -> None:
    async with sm.begin() as s:
        await s.execute(
            update(CallLease).where(CallLease.session_id == session_id).values(expires_at=0.0)
        )


async def test_a_lease_is_taken_only_once_it_ran_out_and_each_take_fences_the_last(
    quiet: RunningBroker,
) -> None:
    broker = quiet
    sm = broker.app[app_state.SESSIONMAKER]
    session_id = await live_session(broker)
    async with sm.begin() as s:
        token = await queries.grant_lease(s, session_id, "a", TTL)
    a = Fence(session_id, "a", token)
    async with sm.begin() as s:
        assert await queries.take_lease(s, session_id, "b", TTL) is None  # a holds it
        assert await queries.renew_leases(s, "a", TTL) == {session_id: token}
    await expire(sm, session_id)
    async with sm.begin() as s:
        assert [row.id for row in await queries.orphaned_calls(s, 10)] == [session_id]
        assert await queries.renew_leases(s, "a", TTL) == {}  # too late to renew
        taken = await queries.take_lease(s, session_id, "b", TTL)
    assert taken == token + 1
    async with sm() as s:
        with pytest.raises(LeaseLostError):
            await check_fence(s, a)
        await check_fence(s, Fence(session_id, "b", taken))
        assert await lost_fences(s, [a, Fence(session_id, "b", taken)]) == {session_id}


async def test_a_commit_under_a_lost_fence_writes_nothing(quiet: RunningBroker) -> None:
    """The before-commit check: the stale owner's transaction rolls back whole."""
    broker = quiet
    sm = broker.app[app_state.SESSIONMAKER]
    session_id = await live_session(broker)
    async with sm.begin() as s:
        token = await queries.grant_lease(s, session_id, "a", TTL)
    with fenced(Fence(session_id, "a", token)):
        async with sm.begin() as s:
            await queries.set_instructions(s, session_id, "written while owned")
    await expire(sm, session_id)
    async with sm.begin() as s:
        await queries.take_lease(s, session_id, "b", TTL)
    with fenced(Fence(session_id, "a", token)), pytest.raises(LeaseLostError):
        async with sm.begin() as s:
            await queries.set_instructions(s, session_id, "written after the lease was lost")
    async with sm() as s:
        row = await queries.get_session_row(s, session_id)
    assert row is not None and row.instructions == "written while owned"


async def test_a_handoff_passes_the_lease_only_to_its_ready_successor(quiet: RunningBroker) -> None:
    broker = quiet
    sm = broker.app[app_state.SESSIONMAKER]
    session_id = await live_session(broker)
    async with sm.begin() as s:
        token = await queries.grant_lease(s, session_id, "a", TTL)
        assert await queries.ask_handoff(s, "a") == 1
        assert await queries.claim_successions(s, "a", 10) == []  # never to itself
        assert await queries.claim_successions(s, "b", 10) == [session_id]
        assert await queries.claim_successions(s, "c", 10) == []  # one successor
        assert await queries.ready_successors(s, "a") == {}
        assert await queries.successor_ready(s, session_id, "b")
        assert await queries.ready_successors(s, "a") == {session_id: "b"}
        assert await queries.hand_over(s, session_id, "a", token + 7, "b", TTL) is None
        new = await queries.hand_over(s, session_id, "a", token, "b", TTL)
        assert new == token + 1
        assert await queries.leases_owned_by(s, "b", [session_id]) == {session_id: new}


async def test_the_reaper_prunes_leases_of_calls_that_ended_long_ago(quiet: RunningBroker) -> None:
    broker = quiet
    sm = broker.app[app_state.SESSIONMAKER]
    old, recent = await live_session(broker), await live_session(broker)
    async with sm.begin() as s:
        for session_id in (old, recent):
            await queries.grant_lease(s, session_id, "a", TTL)
        await s.execute(
            update(SessionRow)
            .where(SessionRow.id == old)
            .values(state="ended", ended_at=utcnow() - timedelta(hours=1))
        )
        await s.execute(
            update(SessionRow)
            .where(SessionRow.id == recent)
            .values(state="ended", ended_at=utcnow())
        )
    await broker.app[app_state.REAPER].sweep()
    async with sm() as s:
        owned = await queries.leases_owned_by(s, "a", [old, recent])
    assert set(owned) == {recent}  # the recent end's last fenced writes may still come


@pytest.fixture
async def second_engine(pg_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(pg_url)
    yield make_sessionmaker(engine)
    await engine.dispose()


async def test_two_instances_racing_for_an_expired_lease_one_wins(
    make_broker: BrokerFactory, pg_url: str, second_engine: async_sessionmaker[AsyncSession]
) -> None:
    """On PostgreSQL: many concurrent takes from two engines; exactly one gets the call."""
    broker = await make_broker(database_url=pg_url, lease_ttl_s=300)
    first = broker.app[app_state.SESSIONMAKER]
    session_id = await live_session(broker)
    async with first.begin() as s:
        await queries.grant_lease(s, session_id, "dead", TTL)
    await expire(first, session_id)

    async def take(sm: async_sessionmaker[AsyncSession], owner: str) -> int | None:
        async with sm.begin() as s:
            return await queries.take_lease(s, session_id, owner, TTL)

    results = await asyncio.gather(
        *(take(first if n % 2 else second_engine, f"i{n}") for n in range(20))
    )
    assert len([r for r in results if r is not None]) == 1


async def test_an_owner_stuck_inside_a_fenced_commit_does_not_hold_its_call_forever(
    make_broker: BrokerFactory, pg_url: str
) -> None:
    """On PostgreSQL: an owner paused between its fence check and its commit holds the
    lease row locked; a taker waits at most briefly, the server ends the stuck session, the
    call is taken, and the stuck owner's commit fails."""
    broker = await make_broker(database_url=pg_url, lease_ttl_s=300)
    taker = broker.app[app_state.SESSIONMAKER]
    session_id = await live_session(broker)
    async with taker.begin() as s:
        token = await queries.grant_lease(s, session_id, "stuck", 0.5)
    stuck_engine = create_engine(pg_url, idle_transaction_timeout_s=1.0)
    try:
        stuck = make_sessionmaker(stuck_engine)()
        await check_fence(stuck, Fence(session_id, "stuck", token))  # FOR SHARE, then paused
        await asyncio.sleep(0.6)  # the lease runs out while the owner is paused

        async def take() -> int | None:
            async with taker.begin() as s:
                await queries.wait_for_locks_at_most(s, 0.2)
                return await queries.take_lease(s, session_id, "taker", TTL)

        with pytest.raises(SQLAlchemyError):
            await take()  # still locked: the taker gives up quickly instead of hanging
        await asyncio.sleep(1.5)  # past the server's idle-in-transaction timeout
        assert await take() == token + 1
        with pytest.raises(SQLAlchemyError):
            await stuck.commit()
        await stuck.close()
    finally:
        await stuck_engine.dispose()


async def test_an_instance_stops_owning_a_call_that_ended_quietly(
    quiet: RunningBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """Its lease is not renewed any more, and its end is no 'lease lost' warning."""
    broker = quiet
    sm = broker.app[app_state.SESSIONMAKER]
    ownership = broker.app[app_state.OWNERSHIP]
    session_id = await live_session(broker)
    async with sm.begin() as s:
        token = await queries.grant_lease(s, session_id, ownership.instance_id, TTL)
    ownership.hold(session_id, token, time.monotonic())
    await ownership.tick()
    assert ownership.owns(session_id)
    async with sm.begin() as s:
        await s.execute(
            update(SessionRow)
            .where(SessionRow.id == session_id)
            .values(state="ended", ended_at=utcnow())
        )
        renewed = await queries.renew_leases(s, ownership.instance_id, TTL)
    assert session_id not in renewed
    await ownership.tick()
    assert not ownership.owns(session_id)
    assert "lease lost" not in caplog.text
