"""Spend caps under concurrency: racing requests for one key cannot both pass a count-based
cap, on one SQLite broker or on two brokers sharing one PostgreSQL database.

Every racing request is held just after the quick check (``QuotaGuard.check`` /
``check_live``, which all of them pass: nothing is spent yet) until all of them have passed
it, so they reach the write that spends the cap together: only the count made with that
write (``QuotaGuard.consuming``) stands between them and the cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

from broker import app_state
from broker.auth.quotas import QuotaGuard
from tests.support.broker_server import BrokerFactory, RunningBroker
from tests.support.browser import FakeBrowser
from tests.support.servers import RunningEmulator

RACERS = 12
CAP = 3


async def new_key(broker: RunningBroker) -> tuple[str, str]:
    """A new ``sessions:create`` key (by the admin key): ``(id, key)``."""
    reply = await broker.request(
        "POST",
        "/api/v1/keys",
        json_body={"name": "raced", "scopes": ["sessions:create"], "tools": ["*"]},
    )
    assert reply.status == 201, reply.text
    return reply.json()["id"], reply.json()["key"]


async def put_quotas(broker: RunningBroker, key_id: str, quotas: dict[str, Any]) -> None:
    reply = await broker.request(
        "PUT",
        f"/api/v1/keys/{key_id}/quotas",
        data=json.dumps(quotas),
        content_type="application/json",
    )
    assert reply.status == 200, reply.text


class Gate:
    """Holds every wrapped quick check, once passed, until ``count`` of them have."""

    def __init__(self, count: int) -> None:
        self._count = count
        self._passed = 0
        self._open = asyncio.Event()

    def hold(self, check: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        async def held(*args: Any, **kwargs: Any) -> None:
            await check(*args, **kwargs)
            self._passed += 1
            if self._passed == self._count:
                self._open.set()
            await asyncio.wait_for(self._open.wait(), timeout=20)

        return held


def guard(broker: RunningBroker) -> QuotaGuard:
    return broker.app[app_state.SESSIONS].quotas


async def race_creations(brokers: list[RunningBroker], token: str) -> list[tuple[int, Any]]:
    """``RACERS`` session creations of ``token``'s key, spread over ``brokers``, held
    together past the quick check: each ``(status, body)``."""
    gate = Gate(RACERS)
    for broker in brokers:
        quotas = guard(broker)
        quotas.check = gate.hold(quotas.check)  # type: ignore[method-assign]
    replies = await asyncio.gather(
        *(
            brokers[i % len(brokers)].request(
                "POST", "/api/v1/sessions", token=token, json_body={"sideband": False}
            )
            for i in range(RACERS)
        )
    )
    return [(reply.status, reply.json()) for reply in replies]


def assert_exactly_capped(
    outcomes: list[tuple[int, Any]], limit: str, success: int = 201
) -> list[Any]:
    """Exactly ``CAP`` succeeded; every other one is the cap's 429 (``used`` at the cap)."""
    statuses = sorted(status for status, _ in outcomes)
    assert statuses == [success] * CAP + [429] * (RACERS - CAP), outcomes
    for status, body in outcomes:
        if status == 429:
            assert (body["code"], body["cap"], body["limit"]) == ("quota_exceeded", "key", limit)
            assert (body["allowed"], body["used"]) == (CAP, CAP)
    return [body for status, body in outcomes if status == success]


async def refusals_audited(broker: RunningBroker, count: int) -> list[dict[str, Any]]:
    async with asyncio.timeout(10):
        while True:
            reply = await broker.request("GET", "/api/v1/audit?kind=quota.exceeded")
            assert reply.status == 200, reply.text
            records: list[dict[str, Any]] = reply.json()["records"]
            if len(records) >= count:
                return records
            await asyncio.sleep(0.05)


async def test_racing_creations_on_one_sqlite_broker_pass_the_daily_cap_exactly(
    broker: RunningBroker,
) -> None:
    """Invariant: of 12 creations racing for a key with max_sessions_per_day 3, on one
    instance, exactly 3 are created; the other 9 are 429 quota_exceeded, each audited."""
    key_id, token = await new_key(broker)
    await put_quotas(broker, key_id, {"max_sessions_per_day": CAP})
    outcomes = await race_creations([broker], token)
    assert_exactly_capped(outcomes, "max_sessions_per_day")
    usage = (await broker.request("GET", "/api/v1/usage", token=token)).json()
    assert usage["key"]["caps"]["max_sessions_per_day"]["used"] == CAP
    records = await refusals_audited(broker, RACERS - CAP)
    assert len(records) == RACERS - CAP


async def test_racing_creations_on_two_postgres_brokers_pass_the_daily_cap_exactly(
    pg_url: str, make_broker: BrokerFactory
) -> None:
    """Invariant: two instances on one PostgreSQL, 12 creations for one key racing across
    both (max_sessions_per_day 3): exactly 3 are created, whichever instance took them; the
    other 9 are 429 quota_exceeded naming the key's cap."""
    one = await make_broker(database_url=pg_url, instance_id="quota-one")
    two = await make_broker(database_url=pg_url, instance_id="quota-two")
    key_id, token = await new_key(one)
    await put_quotas(one, key_id, {"max_sessions_per_day": CAP})
    outcomes = await race_creations([one, two], token)
    assert_exactly_capped(outcomes, "max_sessions_per_day")
    for broker in (one, two):
        usage = (await broker.request("GET", "/api/v1/usage", token=token)).json()
        assert usage["key"]["caps"]["max_sessions_per_day"]["used"] == CAP


async def test_racing_offers_on_two_postgres_brokers_pass_the_live_call_cap_exactly(
    pg_url: str, make_broker: BrokerFactory, emulator: RunningEmulator
) -> None:
    """Invariant: a key with max_live_calls 3 and 12 sessions made under it (created is not
    live); their 12 offers race across two instances on one PostgreSQL: exactly 3 calls are
    made, the other 9 are 429 quota_exceeded and their sessions stay ``created`` (nothing
    spent)."""
    one = await make_broker(database_url=pg_url, instance_id="quota-one")
    two = await make_broker(database_url=pg_url, instance_id="quota-two")
    brokers = [one, two]
    key_id, token = await new_key(one)
    await put_quotas(one, key_id, {"max_live_calls": CAP})
    sessions = []
    for _ in range(RACERS):
        reply = await one.request(
            "POST", "/api/v1/sessions", token=token, json_body={"sideband": False}
        )
        assert reply.status == 201, reply.text
        sessions.append(reply.json())
    gate = Gate(RACERS)
    for broker in brokers:
        quotas = guard(broker)
        quotas.check_live = gate.hold(quotas.check_live)  # type: ignore[method-assign]
    browsers = [FakeBrowser() for _ in sessions]
    try:
        offers = [await browser.create_offer() for browser in browsers]
        replies = await asyncio.gather(
            *(
                brokers[i % 2].offer(session, offer)
                for i, (session, offer) in enumerate(zip(sessions, offers, strict=True))
            )
        )
        outcomes = [
            (reply.status, reply.text if reply.status == 201 else reply.json()) for reply in replies
        ]
        assert_exactly_capped(outcomes, "max_live_calls")
        states: dict[int, set[str]] = {201: set(), 429: set()}
        for session, reply in zip(sessions, replies, strict=True):
            detail = (await one.request("GET", f"/api/v1/sessions/{session['id']}")).json()
            states[reply.status].add(detail["state"])
        assert states[429] == {"created"}
        assert states[201] <= {"offered", "live"}
        usage = (await two.request("GET", "/api/v1/usage", token=token)).json()
        assert usage["key"]["caps"]["max_live_calls"]["used"] == CAP
    finally:
        for session in sessions:
            with contextlib.suppress(Exception):
                await one.request(
                    "POST",
                    f"/api/v1/sessions/{session['id']}/end",
                    token=session["client_secret"]["value"],
                )
        for browser in browsers:
            await browser.close()
