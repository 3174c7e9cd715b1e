"""Retention and erasure (must-show 4 of the tenants issue), on the real stack.

Retention is driven through the broker's own sweeper with an injected clock (31 days on);
sessions are real calls through the emulator (a user turn, a tool call, the assistant's
answer), so what is erased is what the broker really stored. Tenants' own periods are set
through ``PUT /api/v1/tenants/{id}/retention``; tenants and keys' tenants are made in SQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from broker import app_state
from broker.db.models import ApiKey, SessionRow, Tenant, ToolCall, utcnow
from broker.session.retention import RetentionSweeper
from tests.support.audit_chain import broker_cli_run, cli_environment
from tests.support.broker_server import AUDIT_SIGNER, BrokerFactory, RunningBroker
from tests.support.browser import FakeBrowser
from tests.support.flow import (
    LOOKUP_42_OUTPUT,
    ask,
    connect_browser,
    lookup_42_and_leave,
    says,
    stored_events,
    wait_session_ended,
)

ERASED = '{"erased":true}'
NAME = "Ada Lovelace"


@pytest.fixture
async def broker(make_broker: BrokerFactory) -> RunningBroker:
    return await make_broker(retention_days=30)


def clock(at: datetime) -> Callable[[], datetime]:
    return lambda: at


async def add_tenant(broker: RunningBroker, tenant_id: str, retention_days: int | None) -> None:
    async with broker.app[app_state.SESSIONMAKER].begin() as s:
        s.add(Tenant(id=tenant_id, name=tenant_id.title(), retention_days=retention_days))


async def set_session(broker: RunningBroker, session_id: str, **values: Any) -> None:
    async with broker.app[app_state.SESSIONMAKER].begin() as s:
        await s.execute(update(SessionRow).where(SessionRow.id == session_id).values(**values))


async def session_row(broker: RunningBroker, session_id: str) -> SessionRow:
    async with broker.app[app_state.SESSIONMAKER]() as s:
        row = await s.get(SessionRow, session_id)
    assert row is not None
    return row


async def tool_calls(broker: RunningBroker, session_id: str) -> list[ToolCall]:
    async with broker.app[app_state.SESSIONMAKER]() as s:
        rows = await s.scalars(select(ToolCall).where(ToolCall.session_id == session_id))
        return list(rows.all())


async def ended_call(broker: RunningBroker) -> dict[str, Any]:
    """A session whose call said something, ran ``lookup_order`` and ended; its detail."""
    session = await broker.create_session(
        tools=["lookup_order"], instructions=f"Greet {NAME}.", metadata={"user": "ada-1815"}
    )
    await lookup_42_and_leave(broker, session)
    await wait_session_ended(broker, session["id"])
    detail = await transcribed(broker, session["id"])
    assert detail["state"] == "ended"
    # What a redacting tool's call keeps besides (lookup_order redacts nothing).
    async with broker.app[app_state.SESSIONMAKER].begin() as s:
        await s.execute(
            update(ToolCall)
            .where(ToolCall.session_id == session["id"])
            .values(arguments_sealed="sealed-arguments", output_sealed="sealed-output")
        )
    return detail


async def transcribed(broker: RunningBroker, session_id: str) -> dict[str, Any]:
    """The detail once the transcript shows the turn and the tool call (written in batches)."""
    async with asyncio.timeout(5):
        while True:
            detail = await broker.get_session(session_id)
            if len(detail["transcript"]) >= 2 and detail["tool_calls"]:
                return detail
            await asyncio.sleep(0.05)


async def live_call(broker: RunningBroker) -> tuple[dict[str, Any], FakeBrowser]:
    session = await broker.create_session(tools=["lookup_order"], metadata={"user": "live"})
    browser = await connect_browser(broker, session)
    ask(browser, "lookup_order 42")
    await browser.wait_for("response.done", says(LOOKUP_42_OUTPUT))
    await transcribed(broker, session["id"])
    return session, browser


async def audit_records(broker: RunningBroker, session_id: str) -> list[dict[str, Any]]:
    await broker.app[app_state.AUDIT].chain_pending()
    reply = await broker.request("GET", f"/api/v1/audit?session_id={session_id}&limit=500")
    assert reply.status == 200, reply.text
    records: list[dict[str, Any]] = reply.json()["records"]
    return records


async def event_stream(broker: RunningBroker, session_id: str) -> str:
    reply = await broker.request("GET", f"/api/v1/sessions/{session_id}/events")
    assert reply.status == 200, reply.text
    return reply.text


async def assert_erased(broker: RunningBroker, session_id: str, actor: str) -> dict[str, Any]:
    """Everything said is gone; the tombstone and the audit headers stay. The detail."""
    detail = await broker.get_session(session_id)
    assert detail["erased_at"] is not None
    assert detail["state"] == "ended"
    assert detail["transcript"] == []
    assert detail["metadata"] == {}
    assert detail["usage"]["total_tokens"] > 0  # usage is kept
    [call] = detail["tool_calls"]
    assert (call["tool"], call["status"]) == ("lookup_order", "succeeded")
    assert (call["arguments"], call["output"]) == (ERASED, ERASED)
    [row] = await tool_calls(broker, session_id)
    assert (row.arguments_sealed, row.output_sealed) == (None, None)
    assert (await session_row(broker, session_id)).instructions == ""
    assert await stored_events(broker, session_id) == []
    assert "data:" not in await event_stream(broker, session_id)
    records = await audit_records(broker, session_id)
    kinds = [r["kind"] for r in records]
    assert kinds[0] == "session.created"
    assert {"tool.requested", "tool.succeeded", "session.ended"} <= set(kinds)
    erased_through = next(r for r in records if r["kind"] == "audit.erased")
    assert erased_through["body"]["through_seq"] >= records[0]["seq"]
    for record in records:
        if record["seq"] <= erased_through["body"]["through_seq"]:
            assert record["body"] is None, record  # the header stays, the body is gone
    [closing] = [r for r in records if r["kind"] == "session.erased"]
    assert closing["actor"] == actor
    assert closing["body"]["tool_calls"] == 1
    assert closing["body"]["events"] > 0
    assert NAME not in str(records)
    return detail


async def assert_intact(broker: RunningBroker, session_id: str) -> None:
    detail = await broker.get_session(session_id)
    assert detail["erased_at"] is None
    assert detail["transcript"]
    assert detail["tool_calls"][0]["arguments"] != ERASED
    assert detail["metadata"]
    assert await stored_events(broker, session_id)
    assert all(r["body"] is not None for r in await audit_records(broker, session_id))


async def verify_chain(
    broker: RunningBroker,
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> str:
    """``broker audit verify`` with the stack's public key pinned; its output (it passed)."""
    await broker.app[app_state.AUDIT].chain_pending()
    public_key = tmp_path / "audit.pub"
    public_key.write_text(AUDIT_SIGNER.public_pem)
    cli_environment(monkeypatch, db_url, tmp_path)
    run = await broker_cli_run(capsys, "audit", "verify", "--public-key", str(public_key))
    assert run.code == 0, run
    assert "audit chain intact" in run.out
    return run.out


async def test_retention_erases_old_ended_sessions_and_leaves_recent_and_live_ones(
    broker: RunningBroker,
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Invariant: 30 days after its end a session keeps no word of what was said (events,
    transcript, tool arguments and outputs, instructions, metadata, audit bodies); a session
    ended 29 days ago and a live call are untouched; the audit chain still verifies and
    counts the erasure."""
    old = await ended_call(broker)
    recent = await ended_call(broker)
    live, browser = await live_call(broker)
    try:
        now = utcnow() + timedelta(days=31)  # `old` ended 31 days before the sweep
        await set_session(broker, recent["id"], ended_at=now - timedelta(days=29))
        live_events = len(await stored_events(broker, live["id"]))
        sweeper = broker.app[app_state.RETENTION]
        sweeper.now = clock(now)

        assert await sweeper.sweep() == 1
        assert await sweeper.sweep() == 0  # erased once

        detail = await assert_erased(broker, old["id"], "broker")
        assert detail["usage"] == old["usage"]
        await assert_intact(broker, recent["id"])
        still = await broker.get_session(live["id"])
        assert (still["state"], still["erased_at"]) == ("live", None)
        assert len(await stored_events(broker, live["id"])) >= live_events
        assert (await session_row(broker, live["id"])).metadata_ == {"user": "live"}
    finally:
        await browser.close()
    out = await verify_chain(broker, db_url, tmp_path, monkeypatch, capsys)
    assert "(1 erasures)" in out
    assert "erased      no bodies" not in out


async def test_a_tenants_own_period_overrides_the_setting(broker: RunningBroker) -> None:
    """``tenants.retention_days`` replaces ``BROKER_RETENTION_DAYS`` (30 here) for its
    sessions, shorter or longer; other tenants keep the setting's period."""
    now = utcnow()
    for tenant, days in (("brief", 7), ("archive", 90)):
        await add_tenant(broker, tenant, None)
        reply = await broker.request(
            "PUT", f"/api/v1/tenants/{tenant}/retention", json_body={"retention_days": days}
        )
        assert reply.status == 200, reply.text
        assert reply.json() == {"tenant": tenant, "retention_days": days}
    ages = {"brief": (10, 5), "archive": (40, 100), "default": (40, 10)}
    sessions: dict[tuple[str, int], str] = {}
    for tenant, days in ages.items():
        for age in days:
            made = await broker.create_session()
            ended_at = now - timedelta(days=age)
            await set_session(
                broker,
                made["id"],
                tenant_id=tenant,
                state="ended",
                created_at=ended_at - timedelta(minutes=5),
                ended_at=ended_at,
            )
            sessions[tenant, age] = made["id"]
    sweeper = broker.app[app_state.RETENTION]
    sweeper.now = clock(now)

    assert await sweeper.sweep() == 3

    erased = {key for key, sid in sessions.items() if (await session_row(broker, sid)).erased_at}
    assert erased == {("brief", 10), ("archive", 100), ("default", 40)}


async def test_a_tenants_period_is_set_by_its_admin_and_audited(broker: RunningBroker) -> None:
    await add_tenant(broker, "team", None)
    await add_tenant(broker, "rival", None)
    key_id, key = await new_admin_key(broker)
    async with broker.app[app_state.SESSIONMAKER].begin() as s:
        await s.execute(update(ApiKey).where(ApiKey.id == key_id).values(tenant_id="team"))
    path = "/api/v1/tenants/{}/retention"
    own = await broker.request(
        "PUT", path.format("team"), token=key, json_body={"retention_days": 3}
    )
    assert own.status == 200, own.text
    cleared = await broker.request(
        "PUT", path.format("team"), token=key, json_body={"retention_days": None}
    )
    assert cleared.json() == {"tenant": "team", "retention_days": None}
    for tenant in ("rival", "nosuchtenant"):
        hidden = await broker.request(
            "PUT", path.format(tenant), token=key, json_body={"retention_days": 3}
        )
        assert (hidden.status, hidden.code) == (404, "tenant_not_found")
    bad = await broker.request("PUT", path.format("team"), json_body={"retention_days": 0})
    assert (bad.status, bad.code) == (422, "invalid_request")
    await broker.app[app_state.AUDIT].chain_pending()
    reply = await broker.request("GET", "/api/v1/audit?kind=tenant.retention_changed")
    bodies = [(r["actor"], r["body"]) for r in reply.json()["records"]]
    assert bodies == [
        (f"key:{key_id}", {"tenant": "team", "before": None, "after": 3}),
        (f"key:{key_id}", {"tenant": "team", "before": 3, "after": None}),
    ]


async def test_racing_sweepers_erase_each_session_once(
    broker: RunningBroker,
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Two sweepers (as two instances on one database) at once: each session is marked and
    recorded as erased by one of them, and the chain still verifies."""
    now = utcnow()
    ids = []
    for _ in range(3):
        made = await broker.create_session(metadata={"user": "someone"})
        ended_at = now - timedelta(days=40)
        await set_session(broker, made["id"], state="ended", created_at=ended_at, ended_at=ended_at)
        ids.append(made["id"])
    first = broker.app[app_state.RETENTION]
    first.now = clock(now)
    second = RetentionSweeper(
        broker.app[app_state.SESSIONMAKER], broker.app[app_state.AUDIT], 30, now=clock(now)
    )

    counts = await asyncio.gather(first.sweep(), second.sweep())

    assert sum(counts) == 3
    for session_id in ids:
        row = await session_row(broker, session_id)
        assert (row.erased_at is not None, row.metadata_) == (True, {})
        kinds = [r["kind"] for r in await audit_records(broker, session_id)]
        assert kinds.count("session.erased") == 1
    await verify_chain(broker, db_url, tmp_path, monkeypatch, capsys)


async def test_two_instances_on_postgresql_erase_each_session_once(
    make_broker: BrokerFactory,
    pg_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Two broker instances sharing PostgreSQL sweep at once (each chaining its own audit
    records under the head's lock): every session is erased and recorded once, the chain
    still verifies."""
    one = await make_broker(database_url=pg_url, retention_days=30)
    two = await make_broker(database_url=pg_url, retention_days=30)
    now = utcnow()
    ids = []
    for broker in (one, two, one, two):
        made = await broker.create_session(metadata={"user": "someone"})
        ended_at = now - timedelta(days=40)
        await set_session(broker, made["id"], state="ended", created_at=ended_at, ended_at=ended_at)
        ids.append(made["id"])
    for broker in (one, two):
        broker.app[app_state.RETENTION].now = clock(now)

    counts = await asyncio.gather(*(b.app[app_state.RETENTION].sweep() for b in (one, two)))

    assert sum(counts) == len(ids)
    for session_id in ids:
        assert (await session_row(one, session_id)).erased_at is not None
        kinds = [r["kind"] for r in await audit_records(one, session_id)]
        assert kinds.count("session.erased") == 1
    await two.app[app_state.AUDIT].chain_pending()
    await verify_chain(one, pg_url, tmp_path, monkeypatch, capsys)


async def test_without_a_period_nothing_is_erased(make_broker: BrokerFactory) -> None:
    unset = await make_broker()
    made = await unset.create_session()
    await set_session(unset, made["id"], state="ended", ended_at=utcnow())
    sweeper = unset.app[app_state.RETENTION]
    sweeper.now = clock(utcnow() + timedelta(days=10_000))
    assert await sweeper.due() == []


async def new_admin_key(broker: RunningBroker) -> tuple[str, str]:
    reply = await broker.request(
        "POST", "/api/v1/keys", json_body={"name": "erasing admin", "scopes": ["admin"]}
    )
    assert reply.status == 201, reply.text
    return reply.json()["id"], reply.json()["key"]


async def test_delete_erases_one_session_now_and_records_who_did(
    broker: RunningBroker,
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Invariant: ``DELETE /api/v1/sessions/{id}`` erases what retention would, at once,
    recorded as ``session.erased`` by the acting key; a second one erases nothing more; a
    live session is refused (409 ``session_live``), untouched; another tenant's session, or
    an unknown one, does not exist (404)."""
    key_id, key = await new_admin_key(broker)
    done = await ended_call(broker)
    other = await ended_call(broker)
    live, browser = await live_call(broker)
    try:
        reply = await broker.request("DELETE", f"/api/v1/sessions/{done['id']}", token=key)
        assert reply.status == 200, reply.text
        body = reply.json()
        assert body["id"] == done["id"]
        assert (body["erased"], body["already_erased"], body["tool_calls"]) == (True, False, 1)
        assert body["events"] > 0 and body["audit_bodies"] > 0
        detail = await assert_erased(broker, done["id"], f"key:{key_id}")
        assert detail["erased_at"] == body["erased_at"]

        again = await broker.request("DELETE", f"/api/v1/sessions/{done['id']}", token=key)
        assert again.status == 200, again.text
        assert again.json()["already_erased"] is True
        assert (again.json()["events"], again.json()["audit_bodies"]) == (0, 0)
        assert again.json()["erased_at"] == body["erased_at"]
        records = await audit_records(broker, done["id"])
        assert [r["kind"] for r in records].count("session.erased") == 1

        refused = await broker.request("DELETE", f"/api/v1/sessions/{live['id']}", token=key)
        assert (refused.status, refused.code) == (409, "session_live")
        still = await broker.get_session(live["id"])
        assert (still["state"], still["erased_at"]) == ("live", None)
        assert still["transcript"]
    finally:
        await browser.close()

    unknown = await broker.request("DELETE", "/api/v1/sessions/sess_nosuchsession", token=key)
    assert (unknown.status, unknown.code) == (404, "session_not_found")
    reader = await broker.new_key("monitor:read")
    scoped = await broker.request("DELETE", f"/api/v1/sessions/{other['id']}", token=reader)
    assert (scoped.status, scoped.code) == (403, "insufficient_scope")
    await add_tenant(broker, "other", None)
    other_id, other_key = await new_admin_key(broker)
    async with broker.app[app_state.SESSIONMAKER].begin() as s:
        await s.execute(update(ApiKey).where(ApiKey.id == other_id).values(tenant_id="other"))
    hidden = await broker.request("DELETE", f"/api/v1/sessions/{other['id']}", token=other_key)
    assert (hidden.status, hidden.code) == (404, "session_not_found")
    await assert_intact(broker, other["id"])

    out = await verify_chain(broker, db_url, tmp_path, monkeypatch, capsys)
    assert "(1 erasures)" in out
