"""Rate limits and the tool kill switch hold across broker instances on one PostgreSQL database.

Issue 17: several brokers share a database, and a client's requests land on any of them.
Each test gives each "instance" its own engine (its own pool, as a process would have) or
runs two whole brokers on one ``pg_url``. SQLite keeps its buckets in memory (one process).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from broker import app_state
from broker.auth.shared_ratelimit import (
    PRUNE_EVERY_S,
    RateLimits,
    SharedTokenBucketLimiter,
)
from broker.db.engine import create_engine
from tests.conftest import BrokerFactory
from tests.support.broker_server import RunningBroker
from tests.support.flow import LOOKUP_42_OUTPUT, connect_browser
from tests.support.tool_backend import ToolBackend


@pytest.fixture
async def engines(pg_url: str) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    """Two engines on one database: two broker processes' pools."""
    first, second = create_engine(pg_url), create_engine(pg_url)
    yield first, second
    await first.dispose()
    await second.dispose()


async def _buckets(engine: AsyncEngine) -> dict[str, float]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT key, tokens FROM rate_buckets"))
        return {key: tokens for key, tokens in rows.all()}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- the limiter, two instances on one database ----------------------------------------------


async def test_two_instances_spend_one_budget(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    """Burst 3 across both: takes alternating between the instances get three tokens, then
    each is refused with the wait until the next one (nothing spent on a refusal)."""
    a, b = (SharedTokenBucketLimiter(e, "create", 1, 3) for e in engines)  # one a minute
    assert [await a.take("key_1"), await b.take("key_1"), await a.take("key_1")] == [None] * 3
    for limiter in (b, a, b):
        wait = await limiter.take("key_1")
        assert wait is not None and 55 < wait <= 60
    # Another key, and another limiter's bucket for the same key, are their own.
    assert await b.take("key_2") is None
    assert await SharedTokenBucketLimiter(engines[0], "offer", 1, 3).take("key_1") is None
    assert await _buckets(engines[0]) == {
        "create:key_1": pytest.approx(0.0, abs=0.01),
        "create:key_2": pytest.approx(2.0, abs=0.01),
        "offer:key_1": pytest.approx(2.0, abs=0.01),
    }


async def test_a_bucket_refills_at_the_rate_up_to_the_burst(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    """Two a second: a refused take's wait is about half a second, and after it a token is
    there for either instance; however long the bucket rests, it holds the burst at most."""
    a, b = (SharedTokenBucketLimiter(e, "bridge", 120, 2) for e in engines)
    assert [await a.take("sess_1"), await b.take("sess_1")] == [None, None]
    wait = await a.take("sess_1")
    assert wait is not None and 0 < wait <= 0.5
    await asyncio.sleep(wait + 0.05)
    assert await b.take("sess_1") is None
    await asyncio.sleep(1.5)  # three tokens' worth of time
    assert [await b.take("sess_1"), await a.take("sess_1")] == [None, None]
    assert await b.take("sess_1") is not None


async def test_concurrent_takes_from_two_instances_never_pass_the_burst(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    """120 takes at once, half through each engine, on a new key (both racing to create its
    row) and on a key already drawn down: exactly the burst is granted, and no bucket goes
    below zero."""
    a, b = (SharedTokenBucketLimiter(e, "create", 1, 10) for e in engines)
    assert [await a.take("drawn") for _ in range(4)] == [None] * 4

    async def flood(key: str) -> list[float | None]:
        return await asyncio.gather(*((a if n % 2 else b).take(key) for n in range(120)))

    async with asyncio.timeout(60):
        fresh, drawn = await asyncio.gather(flood("fresh"), flood("drawn"))
    assert sum(w is None for w in fresh) == 10
    assert sum(w is None for w in drawn) == 6
    assert all(w > 0 for w in fresh + drawn if w is not None)
    assert min((await _buckets(engines[0])).values()) >= 0.0


async def test_refilled_buckets_are_pruned_now_and_then(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    """Once a minute a limiter deletes its buckets untouched for longer than a refill from
    empty (they hold nothing a missing row does not); busy buckets and other limiters'
    stay."""
    clock = FakeClock()
    limiter = SharedTokenBucketLimiter(engines[0], "offer", 12, 5, clock=clock)
    other = SharedTokenBucketLimiter(engines[1], "end", 12, 5)
    for key in ("sess_old", "sess_busy"):
        assert await limiter.take(key) is None
    assert await other.take("sess_old") is None
    async with engines[0].begin() as conn:
        # Last spent an hour ago (far more than 5 / 12 a minute = 25 minutes).
        await conn.execute(
            text("UPDATE rate_buckets SET updated_at = updated_at - 3600 WHERE key LIKE '%_old'")
        )
    assert await limiter.take("sess_busy") is None  # not due yet
    assert set(await _buckets(engines[0])) == {"offer:sess_old", "offer:sess_busy", "end:sess_old"}
    clock.now += PRUNE_EVERY_S
    assert await limiter.take("sess_busy") is None
    assert set(await _buckets(engines[0])) == {"offer:sess_busy", "end:sess_old"}
    # A pruned key starts full again.
    assert [await limiter.take("sess_old") for _ in range(5)] == [None] * 5


async def test_sqlite_keeps_the_buckets_in_memory(tmp_path: Path) -> None:
    """One process: no database work per request, as before."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'broker.db'}")
    try:
        limits = RateLimits.for_engine(engine)
        assert not limits.shared
        limiter = limits.limiter("create", 1, 1)
        assert not isinstance(limiter, SharedTokenBucketLimiter)
        assert await limiter.take("k") is None
        assert await limiter.take("k") is not None
        with pytest.raises(ValueError, match="PostgreSQL"):
            SharedTokenBucketLimiter(engine, "create", 1, 1)
    finally:
        await engine.dispose()


# --- two brokers on one database -------------------------------------------------------------


async def _two_brokers(make_broker: BrokerFactory, pg_url: str, **settings: Any) -> list[Any]:
    return [await make_broker(database_url=pg_url, **settings) for _ in range(2)]


async def test_the_session_create_rate_holds_across_brokers(
    make_broker: BrokerFactory, pg_url: str
) -> None:
    """Burst 3 a key: creates alternating between two brokers get three sessions, then each
    broker answers 429 ``rate_limited`` with the wait of the one bucket."""
    a, b = await _two_brokers(make_broker, pg_url, session_create_rate=1, session_create_burst=3)
    assert a.app[app_state.RATE_LIMITS].shared
    for broker in (a, b, a):
        reply = await broker.request("POST", "/api/v1/sessions", json_body={})
        assert reply.status == 201, reply.text
    for broker in (b, a):
        limited = await broker.request("POST", "/api/v1/sessions", json_body={})
        assert (limited.status, limited.code) == (429, "rate_limited"), limited.text
        assert 55 <= int(limited.headers["Retry-After"]) <= 60


async def test_a_sessions_bridge_rate_holds_across_brokers(
    make_broker: BrokerFactory, pg_url: str
) -> None:
    """A page whose bridge requests a load balancer spreads over two brokers gets one burst."""
    a, b = await _two_brokers(make_broker, pg_url, bridge_rate=1, bridge_burst=3)
    session = await a.create_session(sideband=False)
    for broker in (a, b, a):
        reply = await broker.bridge(session, "lookup_order", "call_1", {"order_id": "42"})
        assert (reply.status, reply.code) == (409, "session_not_live")
    for broker in (b, a):
        reply = await broker.bridge(session, "lookup_order", "call_1", {"order_id": "42"})
        assert (reply.status, reply.code) == (429, "rate_limited")


async def _bridged(broker: RunningBroker, session: dict[str, Any], call_id: str) -> Any:
    reply = await broker.bridge(session, "lookup_order", call_id, {"order_id": call_id})
    assert reply.status == 200, reply.text
    return reply.json()


async def test_a_tool_switched_off_on_one_broker_is_refused_by_another(
    pg_url: str, make_broker: BrokerFactory, tool_backend: ToolBackend
) -> None:
    """The kill switch is read from the database at each decision: an operator's switch on
    broker A denies the next call broker B decides (a page's bridge request that the load
    balancer sent to B), without running the tool; switched on again through B, A runs it."""
    a, b = await _two_brokers(make_broker, pg_url)
    session = await a.create_session(tools=["lookup_order"], sideband=False)
    browser = await connect_browser(a, session)
    try:
        reply = await b.bridge(session, "lookup_order", "call_before", {"order_id": "42"})
        assert reply.status == 200, reply.text
        assert reply.json()["output"] == LOOKUP_42_OUTPUT

        off = await a.request("POST", "/api/v1/tools/lookup_order/disable", json_body={})
        assert off.status == 200, off.text
        denied = await _bridged(b, session, "call_off")
        assert denied["status"] == "denied"
        assert json.loads(denied["output"])["error"]["code"] == "tool_disabled"

        on = await b.request("POST", "/api/v1/tools/lookup_order/enable")
        assert on.status == 200, on.text
        assert (await _bridged(a, session, "call_on"))["status"] == "succeeded"
    finally:
        await browser.close()
    ran = [r.arguments["order_id"] for r in tool_backend.calls_to("lookup_order")]
    assert ran == ["42", "call_on"]
