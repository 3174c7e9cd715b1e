"""The Python client (clients/python, ``broker_client``) against a live broker.

Real HTTP on loopback: the client talks to the real app, the webhook verifier checks the
broker's real ``session.ended`` delivery, and the tool-call verifier a real request the
broker sent to the tool backend. The blocking client runs in a worker thread: the broker
serves on this test's event loop.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest
from broker_client import (
    AsyncBrokerClient,
    AuthenticationError,
    BadRequestError,
    BrokerClient,
    BrokerUnreachableError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    UpstreamError,
    ValidationError,
    WebhookVerificationError,
    verify,
    verify_event,
    verify_tool_call,
)

from broker.webhooks.signature import signed_headers
from tests.conftest import BrokerFactory
from tests.support.broker_server import ADMIN_KEY, RunningBroker
from tests.support.flow import (
    LOOKUP_42_OUTPUT,
    ask,
    connect_browser,
    lookup_42_and_leave,
    says,
    wait_session_ended,
)
from tests.support.servers import RunningEmulator
from tests.support.tool_backend import TOOL_SECRET, ToolBackend
from tests.support.webhook_receiver import WebhookReceiver, quick_webhooks

WEBHOOK_SECRET = "client-test-webhook-secret-" + "c" * 20


async def test_a_session_is_created_read_listed_and_hung_up_through_the_client(
    broker: RunningBroker, tool_backend: ToolBackend
) -> None:
    async with AsyncBrokerClient(broker.base_url, ADMIN_KEY) as client:
        created = await client.create_session(
            tools=["lookup_order"], instructions="You help with orders.", metadata={"order": 42}
        )
        assert created.id.startswith("sess_") and created.state == "created"
        assert created.tools == ["lookup_order"] and created.sideband is True
        assert created.client_secret.value and created.client_secret.expires_at > time.time()
        assert created.client_secret.value not in repr(created)
        # What a backend hands its page: the answer as it came.
        browser = await connect_browser(broker, created.raw)
        try:
            ask(browser, "lookup_order 42")
            await browser.wait_for("response.done", says(LOOKUP_42_OUTPUT))
            live = await client.get_session(created.id)
            assert (live.state, live.sideband.enabled) == ("live", True)
            assert live.sideband.state == "connected" and live.call_id
            assert live.metadata == {"order": 42} and live.live_at is not None
            [call] = live.tool_calls
            assert (call.tool, call.status, call.arguments) == (
                "lookup_order",
                "succeeded",
                '{"order_id":"42"}',
            )

            page = await client.list_sessions(state=["live", "degraded"], tool="lookup_order")
            assert [s.id for s in page.sessions] == [created.id] and page.next_cursor is None
            assert page.sessions[0].tool_calls["total"] == 1

            assert await client.hang_up(created.id, reason="closing time") is True
            ended = await wait_session_ended(broker, created.id)
            assert ended["end_reason"] == "ops_hangup"
            with pytest.raises(ConflictError) as again:
                await client.hang_up(created.id)
            assert (again.value.status, again.value.code) == (409, "session_not_live")
        finally:
            await browser.close()

        detail = await client.get_session(created.id)
        assert detail.state == "ended" and detail.ended_at is not None
        assert detail.usage["responses"] >= 1


async def test_a_live_calls_instructions_and_tools_change_through_the_client(
    broker: RunningBroker, emulator: RunningEmulator
) -> None:
    """``reconfigure`` returns once the provider's session holds the change (the session's
    own key, no admin scope); each refusal comes back as its status's exception with the
    broker's code, and a call left out nothing is sent."""
    key = await broker.new_key("sessions:create", tools=["lookup_order", "get_time"])
    async with AsyncBrokerClient(broker.base_url, key) as client:
        created = await client.create_session(tools=["lookup_order"], instructions="Be brief.")
        with pytest.raises(ValueError, match="instructions, tools or both"):
            await client.reconfigure(created.id)
        with pytest.raises(TypeError):
            await client.reconfigure(created.id, tools="get_time")
        with pytest.raises(ConflictError) as not_live:
            await client.reconfigure(created.id, tools=["get_time"])
        assert (not_live.value.status, not_live.value.code) == (409, "session_not_live")
        with pytest.raises(PermissionDeniedError) as not_granted:
            await client.reconfigure(created.id, tools=["delete_account"])
        assert (not_granted.value.status, not_granted.value.code) == (403, "tool_not_granted")
        with pytest.raises(ValidationError) as unknown:
            await client.reconfigure(created.id, tools=["no_such_tool"])
        assert (unknown.value.status, unknown.value.code) == (422, "unknown_tool")

        browser = await connect_browser(broker, created.raw)
        try:
            live = await client.get_session(created.id)
            call = emulator.registry.get(live.call_id or "")
            assert call is not None
            tools = await client.reconfigure(created.id, tools=["get_time"])
            assert (tools.id, tools.tools, tools.instructions_changed) == (
                created.id,
                ["get_time"],
                False,
            )
            # Confirmed by the provider before the answer.
            assert [tool["name"] for tool in call.session["tools"]] == ["get_time"]
            assert call.session["instructions"] == "Be brief."

            def blocking() -> tuple[list[str], bool]:
                with BrokerClient(broker.base_url, key) as sync:
                    done = sync.reconfigure(created.id, instructions="Answer in one word.")
                    return done.tools, done.instructions_changed

            assert await asyncio.to_thread(blocking) == (["get_time"], True)
            assert call.session["instructions"] == "Answer in one word."
            assert (await client.get_session(created.id)).tools == ["get_time"]

            # The provider never confirms: 504, and the call keeps its config.
            emulator.faults.update(
                {"sideband_drop_event_types": ["session.updated"], "sideband_drop_event_count": 1}
            )
            with pytest.raises(UpstreamError) as unconfirmed:
                await client.reconfigure(created.id, tools=["lookup_order"])
            assert (unconfirmed.value.status, unconfirmed.value.code) == (504, "provider_timeout")
            assert (await client.get_session(created.id)).tools == ["get_time"]
        finally:
            await browser.close()


async def test_the_list_pages_through_next_cursor(broker: RunningBroker) -> None:
    async with AsyncBrokerClient(broker.base_url, ADMIN_KEY) as client:
        made = [(await client.create_session(model="gpt-realtime")).id for _ in range(3)]
        first = await client.list_sessions(limit=2)
        assert [s.id for s in first.sessions] == made[:0:-1] and first.next_cursor
        second = await client.list_sessions(limit=2, cursor=first.next_cursor)
        assert [s.id for s in second.sessions] == made[:1] and second.next_cursor is None
        every = [s.id async for s in client.iter_sessions(state="created", page_size=1)]
        assert every == made[::-1]
        assert [s.id async for s in client.iter_sessions(model="no-such-model")] == []


async def test_the_blocking_client_does_the_same(broker: RunningBroker) -> None:
    def backend() -> tuple[str, str, list[str], str]:
        with BrokerClient(broker.base_url + "/", ADMIN_KEY) as client:
            created = client.create_session(tools=["lookup_order"], input_transcription=None)
            detail = client.get_session(created.id)
            listed = [s.id for s in client.iter_sessions(state="created")]
            with pytest.raises(ConflictError) as not_live:
                client.hang_up(created.id)
            return created.id, detail.state, listed, not_live.value.code

    session_id, state, listed, code = await asyncio.to_thread(backend)
    assert (state, listed, code) == ("created", [session_id], "session_not_live")
    assert (await broker.get_session(session_id))["input_transcription"] is None


async def test_error_answers_raise_typed_exceptions_with_the_broker_code(
    broker: RunningBroker,
) -> None:
    async with AsyncBrokerClient(broker.base_url, ADMIN_KEY) as client:
        with pytest.raises(NotFoundError) as missing:
            await client.get_session("sess_" + "0" * 24)
        assert (missing.value.status, missing.value.code) == (404, "session_not_found")
        assert missing.value.problem["status"] == 404

        with pytest.raises(ValidationError) as unknown:
            await client.create_session(tools=["no_such_tool"])
        assert (unknown.value.status, unknown.value.code) == (422, "unknown_tool")

        with pytest.raises(ValidationError) as invalid:
            await client.create_session(limits={"max_duration_s": "forever"})
        assert invalid.value.code == "invalid_request"
        assert [e["loc"] for e in invalid.value.errors] == ["limits.max_duration_s"]

        with pytest.raises(BadRequestError) as query:
            await client.list_sessions(limit=0)
        assert (query.value.code, query.value.param) == ("invalid_query", "limit")

    async with AsyncBrokerClient(broker.base_url, "bk_not-a-key") as stranger:
        with pytest.raises(AuthenticationError) as refused:
            await stranger.get_session("sess_x")
        assert (refused.value.status, refused.value.code) == (401, "invalid_api_key")
        assert "bk_not-a-key" not in str(refused.value)

    creator = await broker.new_key("sessions:create")
    async with AsyncBrokerClient(broker.base_url, creator) as limited:
        with pytest.raises(PermissionDeniedError) as scope:
            await limited.list_sessions()
        assert (scope.value.status, scope.value.code) == (403, "insufficient_scope")


async def test_no_broker_is_broker_unreachable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with AsyncBrokerClient(f"http://127.0.0.1:{port}", ADMIN_KEY, timeout=2) as client:
        with pytest.raises(BrokerUnreachableError) as unreachable:
            await client.get_session("sess_x")
    assert (unreachable.value.status, unreachable.value.code) == (0, "broker_unreachable")
    assert ADMIN_KEY not in str(unreachable.value)


async def test_the_verifier_accepts_the_brokers_webhook_and_refuses_a_tampered_or_old_one(
    make_broker: BrokerFactory, receiver: WebhookReceiver
) -> None:
    broker = await make_broker(**quick_webhooks(receiver.url, WEBHOOK_SECRET))
    async with AsyncBrokerClient(broker.base_url, ADMIN_KEY) as client:
        created = await client.create_session(tools=["lookup_order"])
        browser = await connect_browser(broker, created.raw)
        try:
            assert await client.hang_up(created.id)
        finally:
            await browser.close()
    [delivery] = await receiver.wait_deliveries(1)
    headers, body = delivery.headers, delivery.body

    payload = verify(WEBHOOK_SECRET, headers, body)
    assert payload == json.loads(body)
    event = verify_event(WEBHOOK_SECRET, headers, body)
    assert (event.id, event.type) == (headers["Webhook-Id"], "session.ended")
    assert event.data["session_id"] == created.id and event.data["end_reason"] == "ops_hangup"
    lowered = {name.lower(): value for name, value in headers.items()}
    assert verify(WEBHOOK_SECRET, lowered, body.decode()) == payload

    timestamp = int(headers["Webhook-Timestamp"])
    refused = {
        "tampered body": (WEBHOOK_SECRET, headers, body.replace(b"ops_hangup", b"ops_hangUp")),
        "other secret": ("x" + WEBHOOK_SECRET[1:], headers, body),
        "other id": (WEBHOOK_SECRET, headers | {"Webhook-Id": "wh_other"}, body),
        "no signature": (
            WEBHOOK_SECRET,
            {k: v for k, v in headers.items() if k != "Webhook-Signature"},
            body,
        ),
    }
    for name, (secret, hdrs, raw) in refused.items():
        with pytest.raises(WebhookVerificationError):
            verify(secret, hdrs, raw)
            pytest.fail(f"{name} verified")
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify(WEBHOOK_SECRET, headers, body, now=timestamp + 301)
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify(WEBHOOK_SECRET, headers, body, tolerance_s=60, now=timestamp - 61)
    assert verify(WEBHOOK_SECRET, headers, body, now=timestamp + 299) == payload


def test_a_whsec_secret_is_the_base64_key_as_the_broker_signs() -> None:
    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"id":"wh_1","type":"session.ended","created_at":"x","data":{}}'
    headers = signed_headers(secret, "wh_1", body)
    assert verify_event(secret, headers, body).id == "wh_1"
    # The same text used as raw bytes is another key.
    with pytest.raises(WebhookVerificationError):
        verify(secret, signed_headers(secret.removeprefix("whsec_"), "wh_1", body), body)
    with pytest.raises(ValueError, match="base64"):
        verify("whsec_not base64!", headers, body)


async def test_the_tool_call_verifier_accepts_a_real_tool_request(
    broker: RunningBroker, tool_backend: ToolBackend
) -> None:
    async with AsyncBrokerClient(broker.base_url, ADMIN_KEY) as client:
        created = await client.create_session(tools=["lookup_order"])
    await lookup_42_and_leave(broker, created.raw)
    [request] = tool_backend.calls_to("lookup_order")
    headers, body = request.headers, request.body
    verify_tool_call(TOOL_SECRET, headers, body)

    # Each scheme the broker sent verifies alone: a backend may check either (the older
    # X-Broker-Signature is sent for a release after Standard Webhooks arrived).
    standard = {k: v for k, v in headers.items() if not k.lower().startswith("x-broker-")}
    legacy = {k: v for k, v in headers.items() if not k.lower().startswith("webhook-")}
    alone = [
        (hdrs, stamp)
        for hdrs, stamp in ((standard, "Webhook-Timestamp"), (legacy, "X-Broker-Timestamp"))
        if stamp in hdrs
    ]
    assert alone, f"no signature scheme in {sorted(headers)}"
    for hdrs, stamp in alone:
        verify_tool_call(TOOL_SECRET, hdrs, body)
        with pytest.raises(WebhookVerificationError):
            verify_tool_call(TOOL_SECRET, hdrs, body.replace(b"42", b"43"))
        with pytest.raises(WebhookVerificationError):
            verify_tool_call(TOOL_SECRET[::-1], hdrs, body)
        with pytest.raises(WebhookVerificationError, match="tolerance"):
            verify_tool_call(TOOL_SECRET, hdrs, body, now=int(hdrs[stamp]) + 301)
    if "Webhook-Signature" in headers:
        # Present, the Standard Webhooks signature decides: a forged one next to a valid
        # X-Broker-Signature is refused.
        forged = headers | {"Webhook-Signature": "v1," + "A" * 44}
        with pytest.raises(WebhookVerificationError, match="no matching"):
            verify_tool_call(TOOL_SECRET, forged, body)
    with pytest.raises(WebhookVerificationError, match="missing"):
        verify_tool_call(TOOL_SECRET, {"X-Call-ID": headers["X-Call-ID"]}, body)
