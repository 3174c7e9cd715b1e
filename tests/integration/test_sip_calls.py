"""Incoming phone calls through the provider's webhook: the real broker and emulator.

The emulator plays the trunk and the provider (``/_emulator/sip/ring`` posts a signed
``realtime.call.incoming`` to the broker's ``/api/v1/sip/incoming``, and answers only once
the broker did); the broker's lines file says what happens to each number.

- Must-show 1: a call to a configured line is accepted, the sideband attaches, turn detection
  and the greeting come only after it (the event log's order), the caller's spoken turn makes
  the model call an allowlisted tool, which runs once with ``X-Session-ID``, the model
  answers; the ops API shows a phone call (line, caller); an operator's hangup ends it and
  the ``session.ended`` webhook fires.
- Must-show 2: unsigned, badly signed, stale and future deliveries are refused (401) and
  nothing is done; a redelivered ``webhook-id`` is answered and not acted on again; an
  unknown number is rejected with the configured status; reject and refer lines do what
  they say.
- Must-show 4: an accept that answers 404 after a delay: the webhook had its 200 within a
  second, the session ends ``failed`` with ``accept_failed: call_id_not_found``; an accept
  past ``BROKER_SIP_ACCEPT_TIMEOUT_S`` fails ``accept_failed: timeout``.
- A caller's hangup (the sideband cut without a close frame) ends the session.
- The broker stopping while a call is being answered ends the call at the provider (a hangup
  once the accept went out, or before the sideband watches), and the session fails
  ``accept_failed: broker_stopped``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from broker import app_state
from broker.db.engine import create_engine, make_sessionmaker
from broker.db.models import SessionEvent, SessionRow, SipDelivery
from broker.settings.secret import Secret
from broker.webhooks.signature import sign, signed_headers
from tests.support.broker_server import BrokerFactory, RunningBroker
from tests.support.flow import session_events, wait_events, wait_session_ended
from tests.support.servers import RunningEmulator, set_faults
from tests.support.tool_backend import ToolBackend
from tests.support.webhook_receiver import WebhookReceiver, quick_webhooks

SIP_SECRET = "whsec_" + base64.b64encode(b"sip-webhook-secret-of-32-bytes!!").decode()
HOOK_SECRET = "session-ended-webhook-secret-0123456789"
SUPPORT = "+15551230000"
CLOSED = "+15551230001"
MOVED = "+15551239999"
UNKNOWN = "+15550000000"
PRIVATE = "+15551230005"
CALLER = "+14445550000"
GREETING = "Greet the caller as the support line."
LINES = f"""
[unknown]
reject_status = 480

[lines.support]
numbers = ["{SUPPORT}"]
instructions = "You are the support line."
tools = ["lookup_order"]
greeting = "{GREETING}"
turn_detection = "server_vad"
redact_headers = ["Contact"]

[lines.private]
numbers = ["{PRIVATE}"]
tools = ["lookup_order"]
redact_caller = true

[lines.closed]
numbers = ["{CLOSED}"]
action = "reject"
reject_status = 486

[lines.moved]
numbers = ["{MOVED}"]
action = "refer"
refer_to = "tel:+15551230000"
"""


@pytest.fixture
async def phone_broker(
    make_broker: BrokerFactory, receiver: WebhookReceiver, tmp_path: Path
) -> RunningBroker:
    lines = tmp_path / "lines.toml"
    lines.write_text(LINES)
    return await make_broker(
        sip_webhook_secret=Secret(SIP_SECRET),
        sip_lines=lines,
        **quick_webhooks(receiver.url, HOOK_SECRET),
    )


def incoming_url(broker: RunningBroker) -> str:
    return broker.base_url + "/api/v1/sip/incoming"


async def emulator_post(
    emulator: RunningEmulator, path: str, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{emulator.root_url}{path}", json=body or {}, headers=emulator.auth()) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return dict(await resp.json())


async def ring(broker: RunningBroker, emulator: RunningEmulator, to: str) -> dict[str, Any]:
    """The emulator rings ``to`` and posts the webhook to the broker; returns once answered."""
    return await emulator_post(
        emulator,
        "/_emulator/sip/ring",
        {
            "to": to,
            "from": CALLER,
            "webhook_url": incoming_url(broker),
            "webhook_secret": SIP_SECRET,
        },
    )


async def emulator_call(emulator: RunningEmulator, call_id: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{emulator.root_url}/_emulator/calls/{call_id}", headers=emulator.auth()) as r,
    ):
        assert r.status == 200, await r.text()
        return dict(await r.json())


async def wait_emulator_call(
    emulator: RunningEmulator,
    call_id: str,
    key: str,
    timeout: float = 10,  # noqa: ASYNC109
) -> dict[str, Any]:
    """The emulator's view of the call once ``key`` holds a value."""
    async with asyncio.timeout(timeout):
        while not (call := await emulator_call(emulator, call_id)).get(key):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    return call


async def session_of(broker: RunningBroker, call_id: str, timeout: float = 10) -> str:  # noqa: ASYNC109
    """The id of the session the broker made for phone call ``call_id``."""
    async with asyncio.timeout(timeout):
        while True:
            async with broker.app[app_state.SESSIONMAKER]() as s:
                found = await s.scalar(select(SessionRow.id).where(SessionRow.call_id == call_id))
            if found is not None:
                return str(found)
            await asyncio.sleep(0.05)


async def wait_over(broker: RunningBroker, session_id: str, timeout: float = 10) -> dict[str, Any]:  # noqa: ASYNC109
    """The session once it is ``ended`` or ``failed`` (a phone call may wait in ``offered``)."""
    async with asyncio.timeout(timeout):
        while (detail := await broker.get_session(session_id))["state"] not in (  # noqa: ASYNC110
            "ended",
            "failed",
        ):
            await asyncio.sleep(0.05)
    return detail


def first_index(events: list[dict[str, Any]], match: Any) -> int:
    """The index of the first event ``match`` accepts (``len(events)``: none)."""
    return next((i for i, e in enumerate(events) if match(e)), len(events))


async def wait_sideband(broker: RunningBroker, session_id: str) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while (detail := await broker.get_session(session_id))["sideband"]["state"] != (  # noqa: ASYNC110
            "connected"
        ):
            await asyncio.sleep(0.05)
    return detail


async def audit_records(broker: RunningBroker, kind: str, **filters: str) -> list[Any]:
    query = "&".join([f"kind={kind}", *(f"{k}={v}" for k, v in filters.items())])
    reply = await broker.request("GET", f"/api/v1/audit?{query}")
    assert reply.status == 200, reply.text
    return list(reply.json()["records"])


async def deliveries(broker: RunningBroker, call_id: str) -> list[SipDelivery]:
    async with broker.app[app_state.SESSIONMAKER]() as s:
        return list(await s.scalars(select(SipDelivery).where(SipDelivery.call_id == call_id)))


async def test_a_phone_call_is_accepted_watched_greeted_runs_a_tool_and_is_hung_up(
    phone_broker: RunningBroker,
    emulator: RunningEmulator,
    tool_backend: ToolBackend,
    receiver: WebhookReceiver,
) -> None:
    broker = phone_broker
    started = time.monotonic()
    rung = await ring(broker, emulator, SUPPORT)
    answered_in = time.monotonic() - started
    assert rung["delivery_status"] == 200
    assert answered_in < 1.0
    call_id = rung["call_id"]
    session_id = await session_of(broker, call_id)
    detail = await wait_sideband(broker, session_id)
    assert (detail["connection_type"], detail["sip_line"], detail["caller"]) == (
        "sip",
        "support",
        CALLER,
    )
    # The greeting and the turn detection come after the sideband attached, never before.
    await wait_events(
        broker,
        session_id,
        "response.create",
        lambda p: p.get("response", {}).get("instructions") == GREETING,
    )
    events = await session_events(broker, session_id)
    attached = first_index(events, lambda e: e["type"] == "broker.sideband_attached")
    turn_on = first_index(
        events,
        lambda e: (
            e["type"] == "session.update"
            and e["direction"] == "out"
            and bool(
                e["payload"]["session"].get("audio", {}).get("input", {}).get("turn_detection")
            )
        ),
    )
    greet = first_index(
        events,
        lambda e: (
            e["type"] == "response.create"
            and e["payload"].get("response", {}).get("instructions") == GREETING
        ),
    )
    assert attached < turn_on < greet < len(events)
    accepted = await emulator_call(emulator, call_id)
    assert accepted["state"] == "live"

    await emulator_post(emulator, f"/_emulator/calls/{call_id}/say", {"text": "lookup_order 42"})
    [tool_call] = await tool_backend.wait_calls_to("lookup_order", 1)
    assert tool_call.headers["X-Session-ID"] == session_id
    assert tool_call.arguments == {"order_id": "42"}
    # The model answers from the tool's output: a response done after the output was sent.
    async with asyncio.timeout(10):
        while True:
            events = await session_events(broker, session_id)
            output = first_index(
                events,
                lambda e: (
                    e["type"] == "conversation.item.create"
                    and e["payload"].get("item", {}).get("type") == "function_call_output"
                ),
            )
            if any(
                e["type"] == "response.done" and e["direction"] == "in" for e in events[output:]
            ):
                break
            await asyncio.sleep(0.05)
    assert len(tool_backend.calls_to("lookup_order")) == 1
    # The broker's own turn detection change and greeting are no tampering.
    assert await session_events(broker, session_id, "broker.tamper") == []

    listed = await broker.request("GET", "/api/v1/sessions")
    assert listed.status == 200, listed.text
    [mine] = [s for s in listed.json()["sessions"] if s["id"] == session_id]
    assert mine["connection_type"] == "sip"
    [incoming] = await audit_records(broker, "sip.incoming")
    assert incoming["actor"] == "broker"
    assert (incoming["body"]["call_id"], incoming["body"]["line"]) == (call_id, "support")
    [accept] = await audit_records(broker, "call.accepted", session_id=session_id)
    assert accept["body"]["ok"] is True
    [created] = await audit_records(broker, "session.created", session_id=session_id)
    assert created["actor"] == "key:line:support"
    async with broker.app[app_state.SESSIONMAKER]() as s:
        stored = await s.scalar(select(SessionRow.sip_headers).where(SessionRow.id == session_id))
    headers = {h["name"]: h["value"] for h in stored or ()}
    assert headers["Contact"].startswith("hmac-sha256:")

    hung = await broker.request("POST", f"/api/v1/sessions/{session_id}/hangup", json_body={})
    assert hung.status == 200, hung.text
    ended = await wait_session_ended(broker, session_id, timeout=10)
    assert (ended["state"], ended["end_reason"]) == ("ended", "ops_hangup")
    [delivery] = await receiver.wait_deliveries(1)
    event = delivery.verified(HOOK_SECRET)
    assert (event["type"], event["data"]["session_id"]) == ("session.ended", session_id)


async def test_unsigned_bad_stale_and_replayed_deliveries_do_nothing(
    phone_broker: RunningBroker, emulator: RunningEmulator
) -> None:
    broker = phone_broker
    body = json.dumps(
        {
            "object": "event",
            "id": "evt_1",
            "type": "realtime.call.incoming",
            "created_at": int(time.time()),
            "data": {
                "call_id": "rtc_forged",
                "sip_headers": [{"name": "To", "value": f"<sip:{SUPPORT}@sip.example>"}],
            },
        }
    ).encode()
    now = int(time.time())
    good = signed_headers(SIP_SECRET, "wh_forged", body, now)
    cases = {
        "unsigned": {},
        "bad signature": {**good, "Webhook-Signature": sign(SIP_SECRET, "wh_other", now, body)},
        "other secret": signed_headers(
            "whsec_" + base64.b64encode(b"x" * 32).decode(), "wh_forged", body, now
        ),
        "stale": signed_headers(SIP_SECRET, "wh_forged", body, now - 301),
        "future": signed_headers(SIP_SECRET, "wh_forged", body, now + 301),
    }
    async with aiohttp.ClientSession() as http:
        for name, headers in cases.items():
            async with http.post(
                incoming_url(broker),
                data=body,
                headers={**headers, "Content-Type": "application/json"},
            ) as resp:
                problem = await resp.json(content_type=None)
                assert (resp.status, problem["code"]) == (401, "invalid_signature"), name
                assert resp.content_type == "application/problem+json"
    assert await deliveries(broker, "rtc_forged") == []
    assert await audit_records(broker, "sip.incoming") == []

    # A real call, then the same delivery again (and a stale copy): one accept, one session.
    rung = await ring(broker, emulator, SUPPORT)
    call_id = rung["call_id"]
    session_id = await session_of(broker, call_id)
    await wait_sideband(broker, session_id)
    again = await emulator_post(emulator, f"/_emulator/sip/calls/{call_id}/redeliver")
    assert (again["webhook_id"], again["delivery_status"]) == (rung["webhook_id"], 200)
    stale = await emulator_post(
        emulator,
        f"/_emulator/sip/calls/{call_id}/redeliver",
        {"timestamp": int(time.time()) - 3600},
    )
    assert stale["delivery_status"] == 401
    [delivery] = await deliveries(broker, call_id)
    assert (delivery.session_id, delivery.action) == (session_id, "accept")
    async with broker.app[app_state.SESSIONMAKER]() as s:
        sessions = list(await s.scalars(select(SessionRow.id).where(SessionRow.call_id == call_id)))
    assert sessions == [session_id]
    assert len(await audit_records(broker, "sip.incoming")) == 1
    assert len(await audit_records(broker, "call.accepted", session_id=session_id)) == 1


async def test_a_delivery_repeated_to_another_instance_is_not_acted_on_again(
    make_broker: BrokerFactory, emulator: RunningEmulator, tmp_path: Path
) -> None:
    lines = tmp_path / "lines.toml"
    lines.write_text(LINES)
    first, second = [
        await make_broker(sip_webhook_secret=Secret(SIP_SECRET), sip_lines=lines) for _ in range(2)
    ]
    rung = await ring(first, emulator, SUPPORT)
    call_id = rung["call_id"]
    session_id = await session_of(first, call_id)
    again = await emulator_post(
        emulator,
        f"/_emulator/sip/calls/{call_id}/redeliver",
        {"webhook_url": incoming_url(second)},
    )
    assert again["delivery_status"] == 200
    await wait_sideband(first, session_id)
    [delivery] = await deliveries(second, call_id)
    assert delivery.session_id == session_id
    async with second.app[app_state.SESSIONMAKER]() as s:
        sessions = list(await s.scalars(select(SessionRow.id).where(SessionRow.call_id == call_id)))
    assert sessions == [session_id]
    assert len(await audit_records(second, "call.accepted")) == 1


@pytest.mark.parametrize(
    ("number", "key", "expected", "kind"),
    [
        (UNKNOWN, "reject_status_code", 480, "call.rejected"),
        (CLOSED, "reject_status_code", 486, "call.rejected"),
        (MOVED, "referred_to", "tel:+15551230000", "call.referred"),
    ],
    ids=["unknown", "reject-line", "refer-line"],
)
async def test_unknown_rejecting_and_referring_numbers(
    phone_broker: RunningBroker,
    emulator: RunningEmulator,
    number: str,
    key: str,
    expected: Any,
    kind: str,
) -> None:
    broker = phone_broker
    rung = await ring(broker, emulator, number)
    assert rung["delivery_status"] == 200
    call = await wait_emulator_call(emulator, rung["call_id"], key)
    assert call[key] == expected
    async with asyncio.timeout(5):
        while not (records := await audit_records(broker, kind)):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert records[0]["body"]["call_id"] == rung["call_id"]
    assert records[0]["body"]["ok"] is True
    async with broker.app[app_state.SESSIONMAKER]() as s:
        made = await s.scalar(select(SessionRow.id).where(SessionRow.call_id == rung["call_id"]))
    assert made is None


async def test_an_accept_answering_404_late_fails_the_session_after_a_prompt_200(
    phone_broker: RunningBroker, emulator: RunningEmulator
) -> None:
    broker = phone_broker
    async with aiohttp.ClientSession() as http:
        await set_faults(http, emulator, accept_delay_ms=1500, accept_not_found=True)
    started = time.monotonic()
    rung = await ring(broker, emulator, SUPPORT)
    assert rung["delivery_status"] == 200
    assert time.monotonic() - started < 1.0
    session_id = await session_of(broker, rung["call_id"])
    ended = await wait_over(broker, session_id)
    assert (ended["state"], ended["end_reason"]) == ("failed", "accept_failed: call_id_not_found")
    [event] = await wait_events(broker, session_id, "broker.accept_failed")
    assert event["payload"]["reason"] == "call_id_not_found"
    [accept] = await audit_records(broker, "call.accepted", session_id=session_id)
    assert (accept["body"]["ok"], accept["body"]["error"]) == (False, "call_id_not_found")


async def test_an_accept_past_the_timeout_fails_the_session(
    make_broker: BrokerFactory, emulator: RunningEmulator, tmp_path: Path
) -> None:
    lines = tmp_path / "lines.toml"
    lines.write_text(LINES)
    broker = await make_broker(
        sip_webhook_secret=Secret(SIP_SECRET), sip_lines=lines, sip_accept_timeout_s=0.3
    )
    async with aiohttp.ClientSession() as http:
        await set_faults(http, emulator, accept_delay_ms=1500)
    rung = await ring(broker, emulator, SUPPORT)
    session_id = await session_of(broker, rung["call_id"])
    ended = await wait_over(broker, session_id)
    assert (ended["state"], ended["end_reason"]) == ("failed", "accept_failed: timeout")


async def test_a_caller_hanging_up_ends_the_session(
    phone_broker: RunningBroker, emulator: RunningEmulator
) -> None:
    broker = phone_broker
    rung = await ring(broker, emulator, SUPPORT)
    session_id = await session_of(broker, rung["call_id"])
    await wait_sideband(broker, session_id)
    await emulator_post(emulator, f"/_emulator/calls/{rung['call_id']}/caller_hangup")
    ended = await wait_session_ended(broker, session_id, timeout=15)
    assert (ended["state"], ended["end_reason"]) == ("ended", "call_gone")


async def test_a_line_that_redacts_the_caller_stores_keyed_hashes(
    phone_broker: RunningBroker, emulator: RunningEmulator
) -> None:
    broker = phone_broker
    rung = await ring(broker, emulator, PRIVATE)
    session_id = await session_of(broker, rung["call_id"])
    detail = await wait_sideband(broker, session_id)
    assert detail["sip_line"] == "private"
    assert detail["caller"].startswith("hmac-sha256:") and CALLER not in detail["caller"]
    async with broker.app[app_state.SESSIONMAKER]() as s:
        stored = await s.scalar(select(SessionRow.sip_headers).where(SessionRow.id == session_id))
    headers = {h["name"]: h["value"] for h in stored or ()}
    assert headers["From"].startswith("hmac-sha256:")
    assert PRIVATE in headers["To"]
    [incoming] = await audit_records(broker, "sip.incoming")
    assert incoming["body"]["caller"] == detail["caller"]
    assert CALLER not in json.dumps(await audit_records(broker, "sip.incoming"))


async def test_phone_calls_off_answers_404(broker: RunningBroker) -> None:
    reply = await broker.request("POST", "/api/v1/sip/incoming", json_body={}, token=None)
    assert (reply.status, reply.code) == (404, "sip_not_configured")


async def test_a_line_whose_tenant_is_at_a_spend_cap_answers_busy(
    phone_broker: RunningBroker, emulator: RunningEmulator
) -> None:
    """A phone call is a session of the line's tenant: its caps apply as to any session."""
    broker = phone_broker
    reply = await broker.request(
        "PUT", "/api/v1/tenants/default/quotas", json_body={"max_sessions_per_day": 1}
    )
    assert reply.status == 200, reply.text
    await broker.create_session()  # the tenant's one session of the day
    rung = await ring(broker, emulator, SUPPORT)
    assert rung["delivery_status"] == 200
    call = await wait_emulator_call(emulator, rung["call_id"], "reject_status_code")
    assert call["reject_status_code"] == 486
    async with asyncio.timeout(5):
        while not (records := await audit_records(broker, "call.rejected")):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert records[0]["body"]["reason"] == "quota_exceeded"
    assert await audit_records(broker, "quota.exceeded")
    async with broker.app[app_state.SESSIONMAKER]() as s:
        made = await s.scalar(select(SessionRow.id).where(SessionRow.call_id == rung["call_id"]))
    assert made is None


async def stored_session(broker: RunningBroker, session_id: str) -> tuple[SessionRow, list[Any]]:
    """A stopped broker's session row and its ``broker.accept_failed`` events, from its database."""
    engine = create_engine(broker.settings.database_url)
    try:
        async with make_sessionmaker(engine)() as s:
            row = await s.get(SessionRow, session_id)
            events = list(
                await s.scalars(
                    select(SessionEvent.payload).where(
                        SessionEvent.session_id == session_id,
                        SessionEvent.type == "broker.accept_failed",
                    )
                )
            )
    finally:
        await engine.dispose()
    assert row is not None
    return row, events


async def test_a_broker_stopping_during_the_accept_hangs_the_call_up(
    phone_broker: RunningBroker, emulator: RunningEmulator
) -> None:
    """The accept is in flight (slow at the provider) when the broker stops: the call is hung
    up rather than left to go live late with nobody watching, and the session fails."""
    broker = phone_broker
    # 6 s at the provider, under the broker's 8 s accept timeout: a stop that waited for the
    # accept would see it succeed. The stop's own bound leaves a loaded machine room.
    async with aiohttp.ClientSession() as http:
        await set_faults(http, emulator, accept_delay_ms=6000)
    rung = await ring(broker, emulator, SUPPORT)
    call_id = rung["call_id"]
    session_id = await session_of(broker, call_id)
    accept_sent = time.monotonic()
    await asyncio.sleep(0.5)  # the accept went out as the row was stored; it waits 6 s there
    await asyncio.wait_for(broker.close(), timeout=5.0)
    call = await emulator_call(emulator, call_id)
    assert (call["state"], call["end_reason"]) == ("ended", "hangup")
    row, [event] = await stored_session(broker, session_id)
    assert (row.state, row.end_reason) == ("failed", "accept_failed: broker_stopped")
    assert event["reason"] == "broker_stopped"
    # The provider's late accept finds the call gone: it never goes live, watched or not.
    await asyncio.sleep(max(0.0, accept_sent + 6.5 - time.monotonic()))
    sip_call = emulator.registry.get(call_id)
    assert sip_call is not None and not getattr(sip_call, "accepted", True)


async def test_a_broker_stopping_before_the_sideband_watches_hangs_the_call_up(
    phone_broker: RunningBroker, emulator: RunningEmulator
) -> None:
    """Accepted, its sideband not attached yet (no turn detection, no greeting): stopping the
    broker ends the call at the provider instead of leaving a caller on an unwatched line."""
    broker = phone_broker
    async with aiohttp.ClientSession() as http:
        await set_faults(http, emulator, sideband_unavailable_ms=10_000)
    rung = await ring(broker, emulator, SUPPORT)
    call_id = rung["call_id"]
    session_id = await session_of(broker, call_id)
    async with asyncio.timeout(10):
        while (await broker.get_session(session_id))["state"] != "live":  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert (await emulator_call(emulator, call_id))["state"] == "live"
    await asyncio.wait_for(broker.close(), timeout=5.0)
    call = await emulator_call(emulator, call_id)
    assert (call["state"], call["end_reason"]) == ("ended", "hangup")
    row, [event] = await stored_session(broker, session_id)
    assert (row.state, row.end_reason) == ("failed", "accept_failed: broker_stopped")
    assert event["reason"] == "broker_stopped"


async def test_a_broker_stopping_before_the_accept_went_out_rejects_the_call(
    phone_broker: RunningBroker, emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped while the line's spend caps are still being checked (held here, so the stop
    lands there): nothing was accepted, so the call is declined (603), not left ringing."""
    broker = phone_broker
    quotas = broker.app[app_state.SESSIONS].quotas
    checking, held = asyncio.Event(), asyncio.Event()
    check_owner = quotas.check_owner

    async def held_check(owner: str, tenant: str) -> None:
        checking.set()
        await held.wait()
        await check_owner(owner, tenant)

    monkeypatch.setattr(quotas, "check_owner", held_check)
    rung = await ring(broker, emulator, SUPPORT)
    await asyncio.wait_for(checking.wait(), timeout=5)
    await asyncio.wait_for(broker.close(), timeout=5.0)
    call = await emulator_call(emulator, rung["call_id"])
    assert (call["state"], call["end_reason"], call["reject_status_code"]) == (
        "ended",
        "rejected",
        603,
    )
    engine = create_engine(broker.settings.database_url)
    try:
        async with make_sessionmaker(engine)() as s:
            made = await s.scalar(
                select(SessionRow.id).where(SessionRow.call_id == rung["call_id"])
            )
    finally:
        await engine.dispose()
    assert made is None  # stopped before its session was stored
