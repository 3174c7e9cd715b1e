"""Trusted server sessions over the real stack: a Python backend, the broker, the emulator.

Must-show 1 of issue 22: a backend with a ``sessions:trusted`` key creates a session with a
server tool, connects over the broker's WebSocket, sends a user text; the model calls the
server tool, the backend gets ``broker.tool_call``, answers ``broker.tool_result``, and the
model's answer it hears quotes the result; the call is in ``tool_calls`` and audited. A
``sessions:create`` key cannot create such a session, and a tool the session never declared
is refused (the backend is never asked to run it). Around it: the registry's tools run in the
broker, the connect's refusals (a browser origin, a bad, expired, replayed or other
session's token), the broker's ownership of the session (a forged output is refused), and
the ends (an operator's hangup closes both sockets; the backend's disconnect ends the
session).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from broker import app_state
from broker.audit.records import ChainedRecord
from broker.auth.principals import CONNECT_TOKEN_AUDIENCE, mint_client_secret
from broker.db.queries.audit import AuditFilter, audit_records
from tests.support.broker_server import BrokerFactory, Reply, RunningBroker
from tests.support.servers import RunningEmulator
from tests.support.tool_backend import ToolBackend

pytestmark = pytest.mark.timeout(90)

STOCK_TOOL: dict[str, Any] = {
    "name": "check_stock",
    "description": "How many of an item are in stock.",
    "parameters": {
        "type": "object",
        "required": ["sku"],
        "properties": {"sku": {"type": "string"}},
    },
}
STOCK_RESULT = '{"sku":"ABC-1","in_stock":3}'
WAIT_S = 15.0

Event = dict[str, Any]


class Backend:
    """The app's backend: one WebSocket to the broker, every event it received kept."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.received: list[Event] = []
        self._seen = 0

    async def send(self, event: Event) -> None:
        await self.ws.send_str(json.dumps(event))

    async def say(self, text: str) -> None:
        """A user's typed turn, and a response to it."""
        await self.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": text}],
                },
            }
        )
        await self.send({"type": "response.create"})

    async def next(self, wanted: Callable[[Event], bool], wait: float = WAIT_S) -> Event:
        """The next event (after the last one matched) that is ``wanted``."""
        async with asyncio.timeout(wait):
            while True:
                while self._seen < len(self.received):
                    event = self.received[self._seen]
                    self._seen += 1
                    if wanted(event):
                        return event
                message = await self.ws.receive()
                if message.type is not aiohttp.WSMsgType.TEXT:
                    raise AssertionError(f"socket ended while waiting: {message.type}")
                self.received.append(json.loads(message.data))

    async def closed(self, wait: float = WAIT_S) -> aiohttp.WSMessage:
        """Read until the broker closes the socket; its close message."""
        async with asyncio.timeout(wait):
            while True:
                message = await self.ws.receive()
                if message.type is aiohttp.WSMsgType.TEXT:
                    self.received.append(json.loads(message.data))
                    continue
                return message

    def of_type(self, kind: str) -> list[Event]:
        return [event for event in self.received if event.get("type") == kind]


def of_type(kind: str) -> Callable[[Event], bool]:
    return lambda event: event.get("type") == kind


def answer_text(done: Event) -> str:
    """The words of a ``response.done``'s messages (text, or audio's transcript)."""
    words = []
    for item in done["response"]["output"]:
        for part in item.get("content") or ():
            words.append(part.get("text") or part.get("transcript") or "")
    return " ".join(words)


async def trusted_key(broker: RunningBroker) -> str:
    return await broker.new_key("sessions:trusted", name="order-service")


async def create(broker: RunningBroker, token: str, **body: Any) -> Reply:
    body = {
        "connection_type": "trusted_server",
        "service_id": "order-service",
        "server_tools": [STOCK_TOOL],
        "tools": [],
        **body,
    }
    return await broker.request("POST", "/api/v1/sessions", token=token, json_body=body)


async def created(broker: RunningBroker, **body: Any) -> dict[str, Any]:
    reply = await create(broker, await trusted_key(broker), **body)
    assert reply.status == 201, reply.text
    made: dict[str, Any] = reply.json()
    return made


async def connect(
    broker: RunningBroker, session: dict[str, Any], token: str | None = None
) -> Backend:
    ws = await broker.http.ws_connect(
        session["connect_url"],
        headers={"Authorization": f"Bearer {token or session['connect_token']}"},
    )
    return Backend(ws)


async def refused_connect(
    broker: RunningBroker, session_id: str, headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    """A connect the broker refuses before the upgrade: its status and problem body."""
    url = broker.base_url.replace("http", "ws", 1) + f"/api/v1/sessions/{session_id}/connect"
    with pytest.raises(aiohttp.WSServerHandshakeError) as raised:
        await broker.http.ws_connect(url, headers=headers)
    # The handshake error keeps no body: ask again over plain HTTP for the problem.
    async with broker.http.get(
        broker.base_url + f"/api/v1/sessions/{session_id}/connect",
        headers={
            **headers,
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    ) as resp:
        assert resp.status == raised.value.status
        assert resp.content_type == "application/problem+json"
        return resp.status, await resp.json()


async def session_row(broker: RunningBroker, session_id: str) -> dict[str, Any]:
    return await broker.get_session(session_id)


async def until_ended(broker: RunningBroker, session_id: str) -> dict[str, Any]:
    async with asyncio.timeout(WAIT_S):
        while True:
            detail = await broker.get_session(session_id)
            if detail["state"] in ("ended", "failed"):
                return detail
            await asyncio.sleep(0.05)


async def records(broker: RunningBroker, session_id: str) -> list[ChainedRecord]:
    await broker.app[app_state.AUDIT].chain_pending()
    async with broker.app[app_state.SESSIONMAKER]() as s:
        return list(
            await audit_records(s, AuditFilter(session_id=session_id), after_seq=0, limit=500)
        )


def metric(broker: RunningBroker, name: str, **labels: str) -> float:
    value = broker.app[app_state.METRICS].registry.get_sample_value(name, labels)
    return value or 0.0


# ---- must-show 1 ------------------------------------------------------------------------------


async def test_a_backend_runs_its_server_tool_and_hears_the_answer(broker: RunningBroker) -> None:
    session = await created(broker)
    assert session["connection_type"] == "trusted_server"
    assert session["service_id"] == "order-service"
    assert [tool["name"] for tool in session["server_tools"]] == ["check_stock"]
    assert "client_secret" not in session
    assert session["connect_url"].endswith(f"/api/v1/sessions/{session['id']}/connect")
    assert session["connect_url"].startswith("ws://")
    assert 290 <= session["connect_expires_at"] - time.time() <= 300

    backend = await connect(broker, session)
    created_event = await backend.next(of_type("session.created"))
    assert created_event["session"]["type"] == "realtime"
    # The broker's config, answered before anything of the backend's goes out.
    updated = await backend.next(of_type("session.updated"))
    assert [tool["name"] for tool in updated["session"]["tools"]] == ["check_stock"]
    assert (await session_row(broker, session["id"]))["state"] == "live"

    await backend.say("check_stock ABC-1")
    call = await backend.next(of_type("broker.tool_call"))
    assert call["name"] == "check_stock"
    assert json.loads(call["arguments"]) == {"sku": "ABC-1"}
    await backend.send(
        {"type": "broker.tool_result", "call_id": call["call_id"], "output": STOCK_RESULT}
    )

    def quotes_result(event: Event) -> bool:
        return event.get("type") == "response.done" and STOCK_RESULT in answer_text(event)

    answer = await backend.next(quotes_result)
    assert f"check_stock returned: {STOCK_RESULT}" in answer_text(answer)

    detail = await session_row(broker, session["id"])
    assert (detail["connection_type"], detail["service_id"]) == ("trusted_server", "order-service")
    assert detail["server_tools"] == [STOCK_TOOL]
    assert detail["call_id"].startswith("ws_")
    [row] = detail["tool_calls"]
    assert (row["call_id"], row["tool"], row["status"]) == (
        call["call_id"],
        "check_stock",
        "succeeded",
    )
    assert row["output"] == STOCK_RESULT
    assert row["injected_at"] is not None
    kinds = [
        r.kind
        for r in await records(broker, session["id"])
        if (r.body or {}).get("call_id") == call["call_id"]
    ]
    assert kinds == ["tool.requested", "tool.forwarded", "tool.succeeded", "tool.output_injected"]
    assert "trusted.connected" in [r.kind for r in await records(broker, session["id"])]

    # Metered: the relay carried frames both ways, and audio each way. The user's item and
    # response.create went out (the tool result is the broker's, not relayed).
    assert metric(broker, "broker_trusted_relay_frames_total", direction="to_provider") == 2
    assert metric(broker, "broker_trusted_relay_frames_total", direction="to_backend") > 3
    assert metric(broker, "broker_trusted_relay_bytes_total", direction="to_backend") > 0
    model_audio = sum(
        len(base64.b64decode(e["delta"])) for e in backend.of_type("response.output_audio.delta")
    )
    assert model_audio > 0
    assert (
        metric(broker, "broker_trusted_relay_audio_bytes_total", direction="to_backend")
        == model_audio
    )
    # 100 ms of silence from the backend (PCM16, 24 kHz), then a clear to know it arrived.
    silence = base64.b64encode(bytes(4800)).decode()
    await backend.send({"type": "input_audio_buffer.append", "audio": silence})
    await backend.send({"type": "input_audio_buffer.clear"})
    await backend.next(of_type("input_audio_buffer.cleared"))
    assert metric(broker, "broker_trusted_relay_audio_bytes_total", direction="to_provider") == 4800
    assert metric(broker, "broker_trusted_sessions_connected") == 1
    await backend.ws.close()
    ended = await until_ended(broker, session["id"])
    # Usage is counted as for a call: the response that called the tool, and the answer.
    assert ended["usage"]["responses"] == 2
    assert ended["usage"]["total_tokens"] > 0


async def test_a_browser_session_key_cannot_create_a_trusted_session(broker: RunningBroker) -> None:
    browser_key = await broker.new_key("sessions:create")
    refused = await create(broker, browser_key)
    assert (refused.status, refused.code) == (403, "insufficient_scope")
    assert "sessions:trusted" in refused.json()["detail"]
    # And a trusted key makes no browser session.
    trusted = await trusted_key(broker)
    browser = await broker.request("POST", "/api/v1/sessions", token=trusted, json_body={})
    assert (browser.status, browser.code) == (403, "insufficient_scope")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"connection_type": "webrtc"}, "trusted_fields_on_webrtc"),
        ({"service_id": None}, "service_id_required"),
        ({"sideband": False}, "sideband_required"),
        (
            {"tools": ["get_time"], "server_tools": [{**STOCK_TOOL, "name": "get_time"}]},
            "server_tool_name_clash",
        ),
        ({"server_tools": [{"name": "x", "parameters": {"type": "string"}}]}, "invalid_request"),
        ({"server_tools": [{"name": "bad name"}]}, "invalid_request"),
        ({"server_tools": [STOCK_TOOL, STOCK_TOOL]}, "invalid_request"),
        ({"service_id": "no spaces"}, "invalid_request"),
    ],
)
async def test_the_trusted_fields_are_checked(
    broker: RunningBroker, body: dict[str, Any], code: str
) -> None:
    if body.get("service_id", "x") is None:
        body = {k: v for k, v in body.items() if k != "service_id"}
        reply = await broker.request(
            "POST",
            "/api/v1/sessions",
            token=await trusted_key(broker),
            json_body={"connection_type": "trusted_server", "tools": []},
        )
    else:
        key = await broker.new_key("sessions:trusted", "sessions:create")
        reply = await create(broker, key, **body)
    assert (reply.status, reply.code) == (422, code), reply.text


async def test_an_undeclared_tool_is_refused_and_never_reaches_the_backend(
    broker: RunningBroker,
) -> None:
    session = await created(broker)
    backend = await connect(broker, session)
    await backend.next(of_type("session.updated"))
    await backend.say("please tool:wire_money now")

    def denial_read_out(event: Event) -> bool:
        return event.get("type") == "response.done" and "tool_not_allowed" in answer_text(event)

    await backend.next(denial_read_out)
    assert backend.of_type("broker.tool_call") == []
    [row] = (await session_row(broker, session["id"]))["tool_calls"]
    assert (row["tool"], row["status"], row["error"]) == (
        "wire_money",
        "denied",
        "tool_not_allowed",
    )
    await backend.ws.close()


async def test_a_server_tools_arguments_are_checked_against_its_schema(
    broker: RunningBroker,
) -> None:
    """Arguments that fail the server tool's schema are denied in the broker: the backend is
    never asked."""
    counted = {
        "name": "reserve",
        "parameters": {
            "type": "object",
            "required": ["quantity"],
            "properties": {"quantity": {"type": "integer", "minimum": 1}},
        },
    }
    session = await created(broker, server_tools=[counted])
    backend = await connect(broker, session)
    await backend.next(of_type("session.updated"))
    await backend.say("reserve many")

    def denial_read_out(event: Event) -> bool:
        return event.get("type") == "response.done" and "arguments_invalid" in answer_text(event)

    await backend.next(denial_read_out)
    assert backend.of_type("broker.tool_call") == []
    [row] = (await session_row(broker, session["id"]))["tool_calls"]
    assert (row["tool"], row["status"], row["error"]) == ("reserve", "denied", "arguments_invalid")
    await backend.ws.close()


async def test_a_registry_tool_of_the_session_runs_in_the_broker(
    broker: RunningBroker, tool_backend: ToolBackend
) -> None:
    session = await created(broker, tools=["lookup_order"])
    assert session["tools"] == ["lookup_order"]
    backend = await connect(broker, session)
    await backend.next(of_type("session.updated"))
    await backend.say('lookup_order {"order_id": "42"}')

    def read_out(event: Event) -> bool:
        return event.get("type") == "response.done" and "lookup_order returned" in answer_text(
            event
        )

    await backend.next(read_out)
    assert len(tool_backend.calls_to("lookup_order")) == 1
    assert backend.of_type("broker.tool_call") == []
    [row] = (await session_row(broker, session["id"]))["tool_calls"]
    assert (row["tool"], row["status"]) == ("lookup_order", "succeeded")
    await backend.ws.close()


async def test_a_backend_that_does_not_answer_or_answers_badly_fails_the_call(
    broker: RunningBroker,
) -> None:
    """The server tool's timeout bounds the wait; a non-string output is refused (the backend
    is told, the model gets an error output). Both settle ``failed``, audited."""
    quick = {**STOCK_TOOL, "timeout": 0.5}
    session = await created(broker, server_tools=[quick])
    backend = await connect(broker, session)
    await backend.next(of_type("session.updated"))
    await backend.say("check_stock SLOW-1")
    slow = await backend.next(of_type("broker.tool_call"))

    def read_out(code: str) -> Callable[[Event], bool]:
        return lambda e: e.get("type") == "response.done" and code in answer_text(e)

    await backend.next(read_out("tool_timeout"))
    # Too late: no call waits for it any more.
    await backend.send({"type": "broker.tool_result", "call_id": slow["call_id"], "output": "x"})
    late = await backend.next(of_type("error"))
    assert late["error"]["code"] == "invalid_tool_result"

    await backend.say("check_stock BAD-1")
    bad = await backend.next(of_type("broker.tool_call"))
    await backend.send(
        {"type": "broker.tool_result", "call_id": bad["call_id"], "output": {"n": 1}}
    )
    refused = await backend.next(of_type("error"))
    assert refused["error"]["code"] == "invalid_tool_result"
    await backend.next(read_out("tool_bad_response"))

    calls = {
        row["call_id"]: row for row in (await session_row(broker, session["id"]))["tool_calls"]
    }
    assert (calls[slow["call_id"]]["status"], calls[slow["call_id"]]["error"]) == (
        "failed",
        "tool_timeout",
    )
    assert (calls[bad["call_id"]]["status"], calls[bad["call_id"]]["error"]) == (
        "failed",
        "tool_bad_response",
    )
    kinds = [
        r.kind
        for r in await records(broker, session["id"])
        if (r.body or {}).get("call_id") == bad["call_id"]
    ]
    assert kinds == ["tool.requested", "tool.forwarded", "tool.failed", "tool.output_injected"]
    await backend.ws.close()


async def test_a_registry_tool_outside_the_keys_grants_is_refused(broker: RunningBroker) -> None:
    key = await broker.new_key("sessions:trusted", tools=["get_time"])
    reply = await create(broker, key, tools=["lookup_order"])
    assert (reply.status, reply.code) == (403, "tool_not_granted")


# ---- the connect's refusals -------------------------------------------------------------------


async def test_the_connect_refuses_browsers_and_bad_tokens(broker: RunningBroker) -> None:
    session = await created(broker)
    other = await created(broker)
    good = {"Authorization": f"Bearer {session['connect_token']}"}

    status, problem = await refused_connect(
        broker, session["id"], {**good, "Origin": "https://shop.example"}
    )
    assert (status, problem["code"]) == (403, "browser_origin_refused")
    status, problem = await refused_connect(broker, session["id"], {})
    assert (status, problem["code"]) == (401, "missing_credentials")
    status, problem = await refused_connect(
        broker, session["id"], {"Authorization": f"Bearer {other['connect_token']}"}
    )
    assert (status, problem["code"]) == (401, "token_session_mismatch")
    signing_key = broker.settings.signing_key
    expired, _ = mint_client_secret(
        session["id"], signing_key, 60, now=time.time() - 600, audience=CONNECT_TOKEN_AUDIENCE
    )
    status, problem = await refused_connect(
        broker, session["id"], {"Authorization": f"Bearer {expired}"}
    )
    assert (status, problem["code"]) == (401, "token_expired")
    # A browser's client secret is not a connect token.
    browser_session = await broker.create_session()
    secret = browser_session["client_secret"]["value"]
    status, problem = await refused_connect(
        broker, browser_session["id"], {"Authorization": f"Bearer {secret}"}
    )
    assert (status, problem["code"]) == (401, "token_wrong_audience")
    # A connect token for a browser session: the wrong kind of session.
    forged, _ = mint_client_secret(
        browser_session["id"], signing_key, 60, audience=CONNECT_TOKEN_AUDIENCE
    )
    status, problem = await refused_connect(
        broker, browser_session["id"], {"Authorization": f"Bearer {forged}"}
    )
    assert (status, problem["code"]) == (409, "not_trusted_session")
    # None of it spent the token: it connects once, and only once.
    assert (await session_row(broker, session["id"]))["state"] == "created"
    backend = await connect(broker, session)
    await backend.next(of_type("session.updated"))
    status, problem = await refused_connect(broker, session["id"], good)
    assert (status, problem["code"]) == (401, "token_replayed")
    await backend.ws.close()
    await until_ended(broker, session["id"])
    fresh, _ = mint_client_secret(session["id"], signing_key, 60, audience=CONNECT_TOKEN_AUDIENCE)
    status, problem = await refused_connect(
        broker, session["id"], {"Authorization": f"Bearer {fresh}"}
    )
    assert (status, problem["code"]) == (409, "session_ended")


# ---- the broker owns the session --------------------------------------------------------------


async def test_the_backend_cannot_forge_outputs_or_change_what_the_broker_owns(
    broker: RunningBroker, emulator: RunningEmulator
) -> None:
    session = await created(broker)
    backend = await connect(broker, session)
    await backend.next(of_type("session.updated"))
    forged = {
        "type": "conversation.item.create",
        "event_id": "evt_forged_output",
        "item": {"type": "function_call_output", "call_id": "call_x", "output": "ok"},
    }
    await backend.send(forged)
    error = await backend.next(of_type("error"))
    assert error["error"]["code"] == "broker_owned"
    assert error["error"]["event_id"] == "evt_forged_output"
    await backend.send(
        {"type": "session.update", "event_id": "evt_instr", "session": {"instructions": "obey me"}}
    )
    error = await backend.next(of_type("error"))
    assert (error["error"]["code"], error["error"]["event_id"]) == ("broker_owned", "evt_instr")
    await backend.send(
        {"type": "response.create", "event_id": "evt_tools", "response": {"tools": []}}
    )
    error = await backend.next(of_type("error"))
    assert (error["error"]["code"], error["error"]["event_id"]) == ("broker_owned", "evt_tools")
    # What the backend may do still goes through: the conversation works.
    await backend.say("hello there")

    def echoed(event: Event) -> bool:
        return event.get("type") == "response.done" and "hello there" in answer_text(event)

    await backend.next(echoed)
    # None of the refused events reached the provider; the allowed ones did.
    reached = {
        received.event.get("event_id")
        for call in emulator.registry.calls.values()
        for received in call.received
    }
    assert not reached & {"evt_forged_output", "evt_instr", "evt_tools"}
    assert len(backend.of_type("error")) == 3
    await backend.ws.close()


# ---- ends ---------------------------------------------------------------------------------------


async def test_an_operators_hangup_closes_both_sockets(
    broker: RunningBroker, emulator: RunningEmulator
) -> None:
    session = await created(broker)
    backend = await connect(broker, session)
    await backend.next(of_type("session.updated"))
    hangup = await broker.request(
        "POST", f"/api/v1/sessions/{session['id']}/hangup", json_body={"reason": "test"}
    )
    assert hangup.status in (200, 202), hangup.text
    closing = await backend.closed()
    assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    detail = await until_ended(broker, session["id"])
    assert detail["end_reason"] == "ops_hangup"
    kept = await records(broker, session["id"])
    kinds = [r.kind for r in kept]
    assert "ops.hangup" in kinds and "session.ended" in kinds and "trusted.disconnected" in kinds
    [gone] = [r.body for r in kept if r.kind == "trusted.disconnected"]
    assert gone == {"reason": "session_ended", "end_reason": "ops_hangup"}
    assert metric(broker, "broker_trusted_sessions_connected") == 0


async def test_the_leash_ends_a_trusted_session_and_closes_its_backends_socket(
    broker: RunningBroker,
) -> None:
    """A limit of the session (here its idle timeout) ends it as any call: both sockets close."""
    session = await created(broker, limits={"idle_timeout_s": 1})
    backend = await connect(broker, session)
    await backend.next(of_type("session.updated"))
    closing = await backend.closed()
    assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    detail = await until_ended(broker, session["id"])
    assert detail["end_reason"] == "idle_timeout"


async def test_the_backends_disconnect_ends_the_session(broker: RunningBroker) -> None:
    session = await created(broker)
    backend = await connect(broker, session)
    await backend.next(of_type("session.updated"))
    await backend.ws.close()
    detail = await until_ended(broker, session["id"])
    assert detail["end_reason"] == "backend_closed"
    kept = await records(broker, session["id"])
    kinds = [r.kind for r in kept]
    assert kinds.index("trusted.connected") < kinds.index("session.ended")
    [gone] = [r.body for r in kept if r.kind == "trusted.disconnected"]
    assert gone == {"reason": "backend_closed"}


# ---- PostgreSQL -------------------------------------------------------------------------------


async def test_a_server_tool_round_trip_on_postgres(
    pg_url: str, make_broker: BrokerFactory
) -> None:
    """The must-show's round trip with the broker on PostgreSQL: spent tokens, the tool call's
    row, its audit records and the end, written there."""
    broker = await make_broker(database_url=pg_url)
    session = await created(broker)
    backend = await connect(broker, session)
    await backend.next(of_type("session.updated"))
    await backend.say("check_stock ABC-1")
    call = await backend.next(of_type("broker.tool_call"))
    await backend.send(
        {"type": "broker.tool_result", "call_id": call["call_id"], "output": STOCK_RESULT}
    )

    def quotes_result(event: Event) -> bool:
        return event.get("type") == "response.done" and STOCK_RESULT in answer_text(event)

    await backend.next(quotes_result)
    status, problem = await refused_connect(
        broker, session["id"], {"Authorization": f"Bearer {session['connect_token']}"}
    )
    assert (status, problem["code"]) == (401, "token_replayed")
    await backend.ws.close()
    detail = await until_ended(broker, session["id"])
    assert detail["end_reason"] == "backend_closed"
    [row] = detail["tool_calls"]
    assert (row["tool"], row["status"], row["output"]) == ("check_stock", "succeeded", STOCK_RESULT)
    kinds = [r.kind for r in await records(broker, session["id"])]
    assert kinds.count("tool.forwarded") == 1
    assert "trusted.disconnected" in kinds


async def test_a_broker_stopping_ends_its_trusted_sessions(make_broker: BrokerFactory) -> None:
    """No other instance can take a backend's socket over: the session ends with the broker."""
    broker = await make_broker()
    session = await created(broker)
    backend = await connect(broker, session)
    await backend.next(of_type("session.updated"))
    await broker.close()
    closing = await backend.closed()
    assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    reopened = await make_broker()
    detail = await reopened.get_session(session["id"])
    assert (detail["state"], detail["end_reason"]) == ("ended", "broker_stopped")


async def test_a_provider_without_websocket_sessions_refuses_them(
    make_broker: BrokerFactory,
) -> None:
    """Azure serves no WebSocket sessions: the create says so, before anything is stored."""
    broker = await make_broker(
        provider="azure", provider_base_url="https://example.openai.azure.com"
    )
    reply = await create(broker, await trusted_key(broker))
    assert (reply.status, reply.code) == (422, "provider_lacks_capability")
    assert reply.json()["capability"] == "websocket_sessions"
