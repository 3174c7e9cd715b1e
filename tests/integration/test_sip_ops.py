"""Ops actions and keys on phone calls: transfer (SIP ``refer``), DTMF, the ops view.

A phone call here is a call the emulator rang (``/_emulator/sip/ring``) and the broker's
provider accepted, with a session row of ``connection_type: "sip"`` whose sideband the
supervisor watches: set up directly (:func:`phone_call`), so these tests stand on the
supervisor and the emulator alone, not on the incoming-webhook path (tested on its own).

- Transfer (must-show 3): ``POST /api/v1/sessions/{id}/transfer`` sends ``refer`` (the emulator
  records the target), ``call.referred`` is audited with the operator's key, the
  ``broker.transfer`` event is kept, and the session ends ``transferred`` (the sideband's
  close that follows is no failure). Refusals: not a phone call (409), another tenant's (404),
  no ``admin`` (403), a bad target (422), an ended call (409), a refer the provider refuses
  (502, the call goes on).
- DTMF: the caller's keys reach the timeline (``broker.dtmf``), a ``dtmf = true`` tool gets
  them (``X-DTMF-Digits``), and a keypad turn makes the scripted model call a tool; also
  through the whole incoming path (the emulator rings a line with ``dtmf_turn``, the broker
  accepts from the signed webhook), with the ops API showing a phone call. A line with
  ``dtmf_record = "masked"`` keeps the keys out of the event log (streamed by the events API)
  while its ``dtmf`` tool still gets them.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from broker_client import AsyncBrokerClient, ConflictError
from sqlalchemy import select

from broker import app_state
from broker.api.ops_actions import TARGET_URI
from broker.call.keypad import KeypadTurn
from broker.db import queries
from broker.db.models import ConnectionType, SessionRow, SessionState
from broker.session.offer import provider_session_config
from broker.settings.secret import Secret
from tests.support.broker_server import ADMIN_KEY, BrokerFactory, RunningBroker
from tests.support.flow import connect_browser, session_events, wait_events, wait_session_ended
from tests.support.servers import RunningEmulator
from tests.support.tenants import make_team
from tests.support.tool_backend import ToolBackend

SIP_SECRET = "whsec_" + base64.b64encode(b"sip-ops-webhook-secret-32-bytes!").decode()
KEYPAD_LINE = "+15551237777"
DIALLED = "+15551230000"
CALLER = "+14445550000"
TARGET = "tel:+14155550123"


def keyed_tools_toml(backend: ToolBackend) -> str:
    """The backend's tools, and ``order_by_phone``: an HTTP tool that wants the caller's keys."""
    return (
        backend.config_toml()
        + f"""
[tools.order_by_phone]
description = "Look up the order whose number the caller keyed in."
http = "{backend.base_url}/tools/order_by_phone"
secret = "{backend.secret}"
dtmf = true
[tools.order_by_phone.parameters]
type = "object"
required = ["order_id"]
properties.order_id = {{ type = "string" }}
"""
    )


@pytest.fixture
async def keyed_broker(
    make_broker: BrokerFactory, tool_backend: ToolBackend, tmp_path: Path
) -> RunningBroker:
    tools = tmp_path / "keyed-tools.toml"
    tools.write_text(keyed_tools_toml(tool_backend))
    return await make_broker(tools_config=tools)


def phone_settings(tool_backend: ToolBackend, tmp_path: Path, lines: str) -> dict[str, Any]:
    """A broker's settings for answering phone calls on ``lines`` with the keypad tools."""
    tools = tmp_path / "keyed-tools.toml"
    tools.write_text(keyed_tools_toml(tool_backend))
    lines_file = tmp_path / "lines.toml"
    lines_file.write_text(lines)
    return {
        "tools_config": tools,
        "sip_webhook_secret": Secret(SIP_SECRET),
        "sip_lines": lines_file,
    }


async def ring(emulator: RunningEmulator) -> str:
    """A phone call rings at the emulator (no webhook is posted); its call id."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{emulator.root_url}/_emulator/sip/ring",
            json={"to": DIALLED, "from": CALLER},
            headers=emulator.auth(),
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["call_id"])


async def wait_sideband(broker: RunningBroker, session_id: str) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while (detail := await broker.get_session(session_id))["sideband"]["state"] != (  # noqa: ASYNC110
            "connected"
        ):
            await asyncio.sleep(0.05)
    return detail


async def phone_call(
    broker: RunningBroker,
    emulator: RunningEmulator,
    tools: list[str],
    *,
    turn: KeypadTurn | None = None,
) -> tuple[str, str]:
    """A live phone call watched by the broker's supervisor: ``(session_id, call_id)``."""
    call_id = await ring(emulator)
    session = await broker.create_session(tools=tools)
    app = broker.app
    async with app[app_state.SESSIONMAKER].begin() as s:
        row = await queries.get_session_row(s, session["id"])
        assert row is not None
        row.connection_type = ConnectionType.SIP
        row.sip_line = "support"
        row.caller = CALLER
    config = provider_session_config(app[app_state.TOOLS], row)
    await app[app_state.PROVIDER].accept_call(call_id, config)
    async with app[app_state.SESSIONMAKER].begin() as s:
        assert await queries.transition_session(
            s, session["id"], [SessionState.CREATED], SessionState.LIVE, call_id=call_id
        )
    supervisor = app[app_state.SUPERVISOR]
    if turn is not None:
        supervisor.keypad_turn = lambda line: turn if line == "support" else None
    supervisor.start(session["id"], call_id, row.tools, config)
    await wait_sideband(broker, session["id"])
    return session["id"], call_id


async def incoming_call(
    broker: RunningBroker, emulator: RunningEmulator, to: str
) -> tuple[str, str]:
    """The emulator rings ``to`` with the broker's webhook: ``(session_id, call_id)`` once the
    broker accepted the call and its sideband attached."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{emulator.root_url}/_emulator/sip/ring",
            json={
                "to": to,
                "from": CALLER,
                "webhook_url": broker.base_url + "/api/v1/sip/incoming",
                "webhook_secret": SIP_SECRET,
            },
            headers=emulator.auth(),
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
        rung = await resp.json()
    assert rung["delivery_status"] == 200
    call_id = str(rung["call_id"])
    async with asyncio.timeout(10):
        while True:
            async with broker.app[app_state.SESSIONMAKER]() as s:
                session_id = await s.scalar(
                    select(SessionRow.id).where(SessionRow.call_id == call_id)
                )
            if session_id is not None:
                break
            await asyncio.sleep(0.05)
    await wait_sideband(broker, session_id)
    return session_id, call_id


async def press(emulator: RunningEmulator, call_id: str, digits: str) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{emulator.root_url}/_emulator/calls/{call_id}/dtmf",
            json={"digits": digits},
            headers=emulator.auth(),
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()


async def heard_the_tools_answer(broker: RunningBroker, session_id: str) -> None:
    """Wait until the model answered with the keypad tool's result."""
    await wait_events(
        broker,
        session_id,
        "response.done",
        predicate=lambda payload: "order_by_phone returned" in str(payload),
    )


async def audit_records(broker: RunningBroker, session_id: str, kind: str) -> list[Any]:
    reply = await broker.request("GET", f"/api/v1/audit?session_id={session_id}&kind={kind}")
    assert reply.status == 200, reply.text
    return list(reply.json()["records"])


async def test_a_transfer_sends_refer_is_recorded_and_ends_the_session(
    broker: RunningBroker, emulator: RunningEmulator
) -> None:
    session_id, call_id = await phone_call(broker, emulator, ["lookup_order"])
    detail = await broker.get_session(session_id)
    assert (detail["connection_type"], detail["sip_line"], detail["caller"]) == (
        "sip",
        "support",
        CALLER,
    )
    reply = await broker.request(
        "POST", f"/api/v1/sessions/{session_id}/transfer", json_body={"target_uri": TARGET}
    )
    assert reply.status == 200, reply.text
    assert reply.json() == {"id": session_id, "transferred": True, "target_uri": TARGET}
    call = emulator.registry.get(call_id)
    assert call is not None
    assert getattr(call, "referred_to", None) == TARGET
    ended = await wait_session_ended(broker, session_id)
    assert (ended["state"], ended["end_reason"]) == ("ended", "transferred")
    assert ended["sideband"]["state"] == "closed"
    [event] = await wait_events(broker, session_id, "broker.transfer")
    assert event["payload"] == {"type": "broker.transfer", "target_uri": TARGET, "by": "admin"}
    # The sideband's close after the refer is the transfer's consequence, not a failure.
    assert await session_events(broker, session_id, "broker.degraded") == []
    assert await session_events(broker, session_id, "broker.call_ended") == []
    [referred] = await audit_records(broker, session_id, "call.referred")
    assert referred["actor"] == "key:admin"
    assert referred["body"] == {"call_id": call_id, "target_uri": TARGET}
    [ended_record] = await audit_records(broker, session_id, "session.ended")
    assert ended_record["actor"] == "key:admin"
    assert ended_record["body"]["end_reason"] == "transferred"
    again = await broker.request(
        "POST", f"/api/v1/sessions/{session_id}/transfer", json_body={"target_uri": TARGET}
    )
    assert (again.status, again.code) == (409, "session_not_live")


async def test_a_transfer_is_refused_for_what_is_not_an_operators_live_phone_call(
    broker: RunningBroker, emulator: RunningEmulator
) -> None:
    session_id, call_id = await phone_call(broker, emulator, ["lookup_order"])
    path = f"/api/v1/sessions/{session_id}/transfer"
    watcher = await broker.new_key("monitor:read")
    refused = await broker.request("POST", path, json_body={"target_uri": TARGET}, token=watcher)
    assert (refused.status, refused.code) == (403, "insufficient_scope")
    other = await make_team(broker, "elsewhere")
    hidden = await broker.request("POST", path, json_body={"target_uri": TARGET}, token=other.ops)
    assert (hidden.status, hidden.code) == (404, "session_not_found")
    for bad in (
        "+14155550123",
        "tel:14155550123",
        "tel:+1415555012345678",
        "mailto:x@example.com",
        "sip:",
        "sip:bob@ex ample.com",
        "sip:<bob@example.com>",
        "sip:bob@example.com\r\nX-Evil: 1",
        "sip:" + "a" * 300 + "@example.com",
    ):
        reply = await broker.request("POST", path, json_body={"target_uri": bad})
        assert (reply.status, reply.code) == (422, "invalid_request"), bad
    missing = await broker.request("POST", path, json_body={})
    assert (missing.status, missing.code) == (422, "invalid_request")
    call = emulator.registry.get(call_id)
    assert call is not None and getattr(call, "referred_to", None) is None
    assert (await broker.get_session(session_id))["state"] == "live"
    for good in (
        "sip:support@pbx.example.com:5061;transport=tls",
        "sips:+14155550123@trunk.test",
        "tel:+1-415-555-0123",
    ):
        assert TARGET_URI.match(good), good


async def test_a_browser_call_is_not_a_phone_call(broker: RunningBroker) -> None:
    session = await broker.create_session(tools=["lookup_order"])
    browser = await connect_browser(broker, session)
    try:
        reply = await broker.request(
            "POST",
            f"/api/v1/sessions/{session['id']}/transfer",
            json_body={"target_uri": TARGET},
        )
        assert (reply.status, reply.code) == (409, "not_a_phone_call")
        unknown = await broker.request(
            "POST", "/api/v1/sessions/sess_nope/transfer", json_body={"target_uri": TARGET}
        )
        assert (unknown.status, unknown.code) == (404, "session_not_found")
    finally:
        await browser.close()


async def test_a_refer_the_provider_refuses_leaves_the_call_going(
    broker: RunningBroker, emulator: RunningEmulator
) -> None:
    """A call the provider cannot transfer (here: no SIP leg, a 404 for refer) is a 502; the
    session stays live and watched, and ends later for its own reason."""
    session = await broker.create_session(tools=["lookup_order"])
    browser = await connect_browser(broker, session)
    try:
        async with broker.app[app_state.SESSIONMAKER].begin() as s:
            row = await queries.get_session_row(s, session["id"])
            assert row is not None
            row.connection_type = ConnectionType.SIP
        reply = await broker.request(
            "POST",
            f"/api/v1/sessions/{session['id']}/transfer",
            json_body={"target_uri": TARGET},
        )
        assert (reply.status, reply.code) == (502, "provider_error")
        assert await session_events(broker, session["id"], "broker.transfer") == []
        assert await audit_records(broker, session["id"], "call.referred") == []
        hangup = await broker.request("POST", f"/api/v1/sessions/{session['id']}/hangup")
        assert hangup.status == 200, hangup.text
        ended = await wait_session_ended(broker, session["id"])
        assert ended["end_reason"] == "ops_hangup"
    finally:
        await browser.close()


async def test_keys_reach_the_timeline_and_a_dtmf_tool(
    keyed_broker: RunningBroker, emulator: RunningEmulator, tool_backend: ToolBackend
) -> None:
    broker = keyed_broker
    session_id, call_id = await phone_call(
        broker,
        emulator,
        ["order_by_phone", "lookup_order"],
        turn=KeypadTurn("#", "The caller keyed in an order number: order_by_phone {digits}"),
    )
    await press(emulator, call_id, "1234#")
    events = await wait_events(broker, session_id, "broker.dtmf", count=5)
    assert [e["payload"]["digit"] for e in events] == list("1234#")
    # The keypad turn is a user message of the broker's; the model calls the tool from it.
    [request] = await tool_backend.wait_calls_to("order_by_phone")
    assert request.arguments == {"order_id": "1234"}
    assert request.headers["X-DTMF-Digits"] == "1234#"
    assert request.headers["X-Session-ID"] == session_id
    await heard_the_tools_answer(broker, session_id)
    hangup = await broker.request("POST", f"/api/v1/sessions/{session_id}/hangup")
    assert hangup.status == 200, hangup.text
    await wait_session_ended(broker, session_id)


KEYPAD_PROMPT = "The caller keyed in an order number: order_by_phone {digits}"
KEYPAD_LINES = f"""
[lines.keypad]
numbers = ["{KEYPAD_LINE}"]
instructions = "You are the order line. A number the caller keys in is an order number."
tools = ["order_by_phone"]
greeting = "Greet the caller and ask them to key in their order number, then the hash key."
dtmf_turn = {{terminator = "#", prompt = "{KEYPAD_PROMPT}"}}
"""


async def test_a_keypad_turn_through_the_incoming_path_runs_a_dtmf_tool(
    make_broker: BrokerFactory,
    emulator: RunningEmulator,
    tool_backend: ToolBackend,
    tmp_path: Path,
) -> None:
    """Must-show 1's keypad turn: ring → signed webhook → accept → sideband; ``1234#`` is a
    turn, the model calls the allowlisted ``dtmf`` tool, which runs once with
    ``X-Session-ID`` and the keys, and the model answers; the ops API shows a phone call."""
    broker = await make_broker(**phone_settings(tool_backend, tmp_path, KEYPAD_LINES))
    session_id, call_id = await incoming_call(broker, emulator, KEYPAD_LINE)
    detail = await broker.get_session(session_id)
    assert (detail["connection_type"], detail["sip_line"], detail["caller"]) == (
        "sip",
        "keypad",
        CALLER,
    )
    # The greeting was asked for once the sideband watched; then the caller keys in.
    await wait_events(broker, session_id, "response.done")
    await press(emulator, call_id, "1234#")
    [request] = await tool_backend.wait_calls_to("order_by_phone")
    assert request.arguments == {"order_id": "1234"}
    assert request.headers["X-DTMF-Digits"] == "1234#"
    assert request.headers["X-Session-ID"] == session_id
    await heard_the_tools_answer(broker, session_id)
    events = await session_events(broker, session_id, "broker.dtmf")
    assert [e["payload"]["digit"] for e in events] == list("1234#")
    listed = await broker.request("GET", "/api/v1/sessions?state=live")
    [row] = [r for r in listed.json()["sessions"] if r["id"] == session_id]
    assert (row["connection_type"], row["sip_line"], row["caller"]) == ("sip", "keypad", CALLER)
    hangup = await broker.request("POST", f"/api/v1/sessions/{session_id}/hangup")
    assert hangup.status == 200, hangup.text
    ended = await wait_session_ended(broker, session_id)
    assert ended["end_reason"] == "ops_hangup"
    assert len(tool_backend.calls_to("order_by_phone")) == 1


async def test_a_transfer_through_the_incoming_path(
    make_broker: BrokerFactory,
    emulator: RunningEmulator,
    tool_backend: ToolBackend,
    tmp_path: Path,
) -> None:
    """Must-show 3 on a call the broker answered from the webhook: refer sent, recorded, ended."""
    broker = await make_broker(**phone_settings(tool_backend, tmp_path, KEYPAD_LINES))
    ops = await broker.new_key("admin", name="phone ops")
    session_id, call_id = await incoming_call(broker, emulator, KEYPAD_LINE)
    target = "sip:desk@pbx.example.com"
    reply = await broker.request(
        "POST",
        f"/api/v1/sessions/{session_id}/transfer",
        json_body={"target_uri": target},
        token=ops,
    )
    assert reply.status == 200, reply.text
    call = emulator.registry.get(call_id)
    assert call is not None and getattr(call, "referred_to", None) == target
    ended = await wait_session_ended(broker, session_id)
    assert (ended["state"], ended["end_reason"]) == ("ended", "transferred")
    keys = (await broker.request("GET", "/api/v1/keys")).json()["keys"]
    [key] = [k for k in keys if k["name"] == "phone ops"]
    [referred] = await audit_records(broker, session_id, "call.referred")
    assert referred["actor"] == f"key:{key['id']}"
    assert referred["body"] == {"call_id": call_id, "target_uri": target}
    [event] = await wait_events(broker, session_id, "broker.transfer")
    assert event["payload"]["by"] == key["id"]


async def test_the_python_client_transfers_a_phone_call(
    broker: RunningBroker, emulator: RunningEmulator
) -> None:
    session_id, call_id = await phone_call(broker, emulator, ["lookup_order"])
    async with AsyncBrokerClient(broker.base_url, ADMIN_KEY) as client:
        assert await client.transfer(session_id, TARGET) is True
        with pytest.raises(ConflictError) as again:
            await client.transfer(session_id, TARGET)
    assert again.value.code == "session_not_live"
    call = emulator.registry.get(call_id)
    assert call is not None and getattr(call, "referred_to", None) == TARGET


PIN = "4711"
MASKED_LINES = KEYPAD_LINES + '\ndtmf_record = "masked"\n'


async def stream_of(broker: RunningBroker, session_id: str) -> list[dict[str, Any]]:
    """Every event of an ended session, as ``GET /api/v1/sessions/{id}/events`` streams it."""
    reply = await broker.request("GET", f"/api/v1/sessions/{session_id}/events")
    assert reply.status == 200, reply.text
    return [
        json.loads(line.removeprefix("data: "))
        for line in reply.text.splitlines()
        if line.startswith("data: ")
    ]


async def test_a_masking_line_keeps_the_keys_out_of_the_record_but_not_from_its_tool(
    make_broker: BrokerFactory,
    emulator: RunningEmulator,
    tool_backend: ToolBackend,
    tmp_path: Path,
) -> None:
    """``dtmf_record = "masked"``: the timeline's keys, the provider's key events and the stored
    keypad turn carry ``*``; the ``dtmf = true`` tool gets the real keys, and the model the
    real turn (it calls the tool with them)."""
    broker = await make_broker(**phone_settings(tool_backend, tmp_path, MASKED_LINES))
    session_id, call_id = await incoming_call(broker, emulator, KEYPAD_LINE)
    await wait_events(broker, session_id, "response.done")
    await press(emulator, call_id, PIN + "#")
    [request] = await tool_backend.wait_calls_to("order_by_phone")
    assert request.headers["X-DTMF-Digits"] == PIN + "#"
    assert request.arguments == {"order_id": PIN}
    await heard_the_tools_answer(broker, session_id)
    hangup = await broker.request("POST", f"/api/v1/sessions/{session_id}/hangup")
    assert hangup.status == 200, hangup.text
    await wait_session_ended(broker, session_id)
    events = await stream_of(broker, session_id)
    keys = [e["payload"] for e in events if e["type"] == "broker.dtmf"]
    assert keys == [{"type": "broker.dtmf", "digit": "*", "masked": True}] * 5
    pressed = [
        e["payload"] for e in events if e["type"] == "input_audio_buffer.dtmf_event_received"
    ]
    assert len(pressed) == 5
    assert all(p["event"] == "*" and p["masked"] is True for p in pressed)
    masked_turn = KEYPAD_PROMPT.replace("{digits}", "****")
    turn = [e for e in events if masked_turn in json.dumps(e["payload"])]
    # The note sent and the provider's echoes of it (added, done): each stored masked.
    assert {e["type"] for e in turn} >= {"conversation.item.create", "conversation.item.done"}
    # What the model said and passed to its tool is its own, recorded as it is (README's
    # known limit); nothing the caller's keys put in the log carries them.
    of_the_keys = [*keys, *pressed, *(e["payload"] for e in turn)]
    assert PIN not in json.dumps(of_the_keys)
    assert KEYPAD_PROMPT.replace("{digits}", PIN) not in json.dumps(events)


async def test_a_transfer_asked_of_another_instance_is_carried_out_by_the_calls_owner(
    make_broker: BrokerFactory,
    emulator: RunningEmulator,
    tool_backend: ToolBackend,
    tmp_path: Path,
    pg_url: str,
) -> None:
    """Two instances on one PostgreSQL: the one that answered the phone owns the call; the
    other, asked to transfer it, has the owner send the refer (a call command), and answers
    with the owner's outcome."""
    phone = phone_settings(tool_backend, tmp_path, KEYPAD_LINES)
    owner = await make_broker(database_url=pg_url, instance_id="sip-owner", **phone)
    other = await make_broker(database_url=pg_url, instance_id="sip-other", **phone)
    session_id, call_id = await incoming_call(owner, emulator, KEYPAD_LINE)
    target = "sip:desk@pbx.example.com"
    reply = await other.request(
        "POST", f"/api/v1/sessions/{session_id}/transfer", json_body={"target_uri": target}
    )
    assert reply.status == 200, reply.text
    assert reply.json() == {"id": session_id, "transferred": True, "target_uri": target}
    call = emulator.registry.get(call_id)
    assert call is not None and getattr(call, "referred_to", None) == target
    ended = await wait_session_ended(other, session_id)
    assert (ended["state"], ended["end_reason"]) == ("ended", "transferred")
    [referred] = await audit_records(other, session_id, "call.referred")
    assert (referred["actor"], referred["body"]) == (
        "key:admin",
        {"call_id": call_id, "target_uri": target},
    )
    [event] = await wait_events(owner, session_id, "broker.transfer")
    assert event["payload"] == {"type": "broker.transfer", "target_uri": target, "by": "admin"}
    again = await other.request(
        "POST", f"/api/v1/sessions/{session_id}/transfer", json_body={"target_uri": target}
    )
    assert (again.status, again.code) == (409, "session_not_live")
