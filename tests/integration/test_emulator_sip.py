"""Phone calls (SIP) at the emulator: ring, the signed webhook, accept/reject/refer, and the
caller's side (speech, DTMF, hangup), through real HTTP, the official SDK and the provider
adapters (docs/protocol.md §1.3, §1.4, §0 "SIP")."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from openai import AsyncOpenAI, NotFoundError
from openai.types.webhooks import RealtimeCallIncomingWebhookEvent

from broker.webhooks.signature import WebhookVerificationError, verify
from emulator import EmulatorSettings
from emulator.sip import SipCall
from sideband import (
    ApiKeyCredential,
    AzureOpenAIProvider,
    CallNotFoundError,
    OpenAICompatibleProvider,
)
from sideband.errors import ProviderCapabilityError, ProviderTimeoutError
from tests.support.broker_server import PROVIDER_KEY
from tests.support.servers import (
    LOOKUP_ORDER,
    RunningEmulator,
    SidebandProbe,
    request_json,
    set_faults,
    start_emulator,
)
from tests.support.webhook_receiver import WebhookReceiver

KEY = PROVIDER_KEY  # the shared `emulator` fixture (tests/conftest.py) uses it
SECRET = "whsec_" + base64.b64encode(b"emulator-sip-test-key-0123456789").decode()
SERVER_VAD = {"type": "server_vad", "silence_duration_ms": 200}
TRANSCRIBED = {"model": "gpt-4o-mini-transcribe"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def client(emulator: RunningEmulator) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(api_key=KEY, base_url=emulator.base_url, max_retries=0) as sdk:
        yield sdk


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    hooks = WebhookReceiver(path="/sip/incoming")
    await hooks.start()
    yield hooks
    await hooks.close()


async def ring(
    http: aiohttp.ClientSession, emulator: RunningEmulator, **body: Any
) -> dict[str, Any]:
    """``POST /_emulator/sip/ring`` (asserts 200)."""
    payload = {"to": "+15551234567", "from": "+14445550000", **body}
    status, reply = await request_json(http, emulator, "POST", "/_emulator/sip/ring", payload)
    assert status == 200, reply
    return dict(reply)


def session_config(turn_detection: Any = SERVER_VAD, **extra: Any) -> dict[str, Any]:
    return {
        "type": "realtime",
        "model": "gpt-realtime",
        "instructions": "You answer the phone.",
        "tools": [LOOKUP_ORDER],
        "audio": {"input": {"turn_detection": turn_detection, "transcription": TRANSCRIBED}},
        **extra,
    }


def lowered(headers: dict[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def sip_call(emulator: RunningEmulator, call_id: str) -> SipCall:
    call = emulator.registry.get(call_id)
    assert isinstance(call, SipCall)
    return call


async def test_ring_posts_a_signed_incoming_webhook_that_verifies_and_redelivers(
    http: aiohttp.ClientSession,
    emulator: RunningEmulator,
    client: AsyncOpenAI,
    receiver: WebhookReceiver,
) -> None:
    """The delivery is Standard-Webhooks-signed with the whsec_ key, its body is §1.4's, the
    broker's verifier and the SDK's unwrap both accept it; a redelivery repeats the
    webhook-id and body, and one signed long ago is stale."""
    extra = [{"name": "X-Customer", "value": "acme"}]
    rang = await ring(
        http, emulator, headers=extra, webhook_url=receiver.url, webhook_secret=SECRET
    )
    assert rang["delivery_status"] == 200
    assert rang["call_id"].startswith("rtc_u2_")
    [delivery] = await receiver.wait_deliveries(1)
    sent = lowered(delivery.headers)
    assert sent["webhook-id"] == rang["webhook_id"]
    assert sent["user-agent"].startswith("OpenAI/1.0")
    assert sent["content-type"] == "application/json"
    assert sent["webhook-signature"].startswith("v1,")
    assert abs(int(sent["webhook-timestamp"]) - time.time()) < 60

    event = verify(SECRET, delivery.headers, delivery.body)
    assert set(event) == {"id", "object", "type", "created_at", "data"}
    assert event["id"].startswith("evt_")
    assert (event["object"], event["type"]) == ("event", "realtime.call.incoming")
    assert event["data"]["call_id"] == rang["call_id"]
    headers = {h["name"]: h["value"] for h in event["data"]["sip_headers"]}
    assert headers["To"] == "<sip:+15551234567@sip.api.openai.com>"
    assert "<sip:+14445550000@" in headers["From"]
    assert headers["Call-ID"]
    assert headers["X-Customer"] == "acme"
    assert event["data"]["sip_headers"] == rang["sip_headers"]

    unwrapped = client.webhooks.unwrap(delivery.body.decode(), delivery.headers, secret=SECRET)
    assert isinstance(unwrapped, RealtimeCallIncomingWebhookEvent)
    assert unwrapped.data.call_id == rang["call_id"]
    with pytest.raises(WebhookVerificationError):
        verify("whsec_" + base64.b64encode(b"another-key-0123456789abcdef").decode(),
               delivery.headers, delivery.body)  # fmt: skip

    path = f"/_emulator/sip/calls/{rang['call_id']}/redeliver"
    status, again = await request_json(http, emulator, "POST", path, {})
    assert status == 200
    assert again == {
        "call_id": rang["call_id"],
        "webhook_id": rang["webhook_id"],
        "delivery_status": 200,
    }
    stale_at = int(time.time()) - 3600
    status, _ = await request_json(http, emulator, "POST", path, {"timestamp": stale_at})
    assert status == 200
    first, second, stale = await receiver.wait_deliveries(3)
    ids = {lowered(d.headers)["webhook-id"] for d in (first, second, stale)}
    assert ids == {rang["webhook_id"]}
    assert second.body == stale.body == first.body
    assert verify(SECRET, second.headers, second.body) == event
    assert lowered(stale.headers)["webhook-timestamp"] == str(stale_at)
    with pytest.raises(WebhookVerificationError):
        verify(SECRET, stale.headers, stale.body)
    snapshot = sip_call(emulator, rang["call_id"]).snapshot()
    assert snapshot["state"] == "ringing"
    assert [a["status"] for a in snapshot["deliveries"]] == [200, 200, 200]


async def test_configured_webhook_url_and_secret_and_unreachable_receiver(
    http: aiohttp.ClientSession, receiver: WebhookReceiver
) -> None:
    """The settings name the URL and secret; a receiver that is down is reported, the call
    rings anyway; without any URL nothing is posted."""
    emulator = await start_emulator(
        EmulatorSettings(api_key=KEY, sip_webhook_url=receiver.url, sip_webhook_secret=SECRET)
    )
    try:
        rang = await ring(http, emulator)
        [delivery] = await receiver.wait_deliveries(1)
        assert (
            verify(SECRET, delivery.headers, delivery.body)["data"]["call_id"] == (rang["call_id"])
        )
        down = await ring(http, emulator, webhook_url="http://127.0.0.1:9/nobody")
        assert down["delivery_status"] == "unreachable"
        assert sip_call(emulator, down["call_id"]).state == "ringing"
    finally:
        await emulator.close()
    with pytest.raises(ValueError, match="whsec_"):
        EmulatorSettings(api_key=KEY, sip_webhook_secret="not-a-whsec-secret")
    assert SECRET not in repr(emulator.settings)


async def test_accept_with_the_sdk_then_a_spoken_turn_calls_a_tool_dtmf_and_caller_hangup(
    http: aiohttp.ClientSession, emulator: RunningEmulator, client: AsyncOpenAI
) -> None:
    """Ringing: no sideband. Accepted: the sideband attaches; the caller's spoken turn is
    detected, committed, transcribed and answered with the tool call it asks for; keypad
    presses arrive without event ids; the caller's hangup cuts the sideband (1006)."""
    rang = await ring(http, emulator)
    call_id = rang["call_id"]
    assert rang["delivery_status"] == "not_configured"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await SidebandProbe.connect(http, emulator, call_id)
    assert refused.value.status == 404
    status, body = await request_json(
        http, emulator, "POST", f"/_emulator/calls/{call_id}/say", {"text": "hello"}
    )
    assert (status, body["error"]["code"]) == (409, "call_not_live")

    async with asyncio.timeout(5):
        accepted = await client.realtime.calls.with_raw_response.accept(call_id, **session_config())
    assert accepted.status_code == 200
    assert accepted.content == b""
    call = sip_call(emulator, call_id)
    assert call.state == "live"
    assert call.session["tools"] == [LOOKUP_ORDER]
    with pytest.raises(NotFoundError) as again:
        await client.realtime.calls.accept(call_id, type="realtime", model="gpt-realtime")
    assert again.value.code == "call_id_not_found"

    probe = await SidebandProbe.connect(http, emulator, call_id)
    status, body = await request_json(
        http,
        emulator,
        "POST",
        f"/_emulator/calls/{call_id}/say",
        {"text": "please lookup_order 42"},
    )
    assert (status, body) == (200, {"call_id": call_id, "queued": 0})
    started = await probe.wait_for("input_audio_buffer.speech_started")
    stopped = await probe.wait_for("input_audio_buffer.speech_stopped")
    assert stopped["item_id"] == started["item_id"]
    await probe.wait_for("input_audio_buffer.committed")
    done = await probe.wait_for("response.done")
    [function_call] = done["response"]["output"]
    assert (function_call["name"], function_call["arguments"]) == (
        "lookup_order",
        '{"order_id":"42"}',
    )
    transcript = await probe.wait_for(
        "conversation.item.input_audio_transcription.completed",
        lambda e: e["item_id"] == started["item_id"],
    )
    assert transcript["transcript"] == "please lookup_order 42"

    status, body = await request_json(
        http, emulator, "POST", f"/_emulator/calls/{call_id}/dtmf", {"digits": "4#"}
    )
    assert (status, body) == (200, {"call_id": call_id, "sent": 2})
    first = await probe.wait_for("input_audio_buffer.dtmf_event_received")
    second = await probe.next_event()
    for event, digit in ((first, "4"), (second, "#")):
        assert set(event) == {"type", "event", "received_at"}
        assert event["type"] == "input_audio_buffer.dtmf_event_received"
        assert event["event"] == digit
        assert isinstance(event["received_at"], int)

    status, body = await request_json(
        http, emulator, "POST", f"/_emulator/calls/{call_id}/caller_hangup", {}
    )
    assert (status, body) == (
        200,
        {"call_id": call_id, "ended": True, "end_reason": "caller_hangup"},
    )
    closed = await probe.wait_closed()
    assert closed.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
    assert probe.ws.close_code == 1006  # no close frame: the transport was cut
    with pytest.raises(NotFoundError):
        await client.realtime.calls.hangup(call_id)


async def test_without_turn_detection_a_spoken_turn_waits_for_the_clients_commit(
    http: aiohttp.ClientSession, emulator: RunningEmulator, client: AsyncOpenAI
) -> None:
    """Accepted with turn_detection null (as the broker does until its sideband watches): the
    caller's speech only fills the input buffer: no VAD events, no response; the client's
    commit makes it a turn whose words the model understands."""
    call_id = (await ring(http, emulator))["call_id"]
    await client.realtime.calls.accept(call_id, **session_config(turn_detection=None))
    probe = await SidebandProbe.connect(http, emulator, call_id)
    status, body = await request_json(
        http,
        emulator,
        "POST",
        f"/_emulator/calls/{call_id}/say",
        {"text": "lookup_order 7"},
    )
    assert (status, body["queued"]) == (200, 1)
    await probe.send({"type": "input_audio_buffer.commit"})
    committed = await probe.wait_for("input_audio_buffer.committed")
    await probe.wait_for("conversation.item.done")
    assert not any(
        e["type"].startswith(("response.", "input_audio_buffer.speech")) for e in probe.events
    )
    await probe.send({"type": "response.create"})
    done = await probe.wait_for("response.done")
    [function_call] = done["response"]["output"]
    assert function_call["arguments"] == '{"order_id":"7"}'
    transcript = await probe.wait_for("conversation.item.input_audio_transcription.completed")
    assert (transcript["item_id"], transcript["transcript"]) == (
        committed["item_id"],
        "lookup_order 7",
    )
    await client.realtime.calls.hangup(call_id)
    await probe.wait_closed()
    assert sip_call(emulator, call_id).end_reason == "hangup"


async def test_reject_with_the_sdk_records_the_status_and_ends_the_ringing_call(
    http: aiohttp.ClientSession, emulator: RunningEmulator, client: AsyncOpenAI
) -> None:
    busy = (await ring(http, emulator))["call_id"]
    raw = await client.realtime.calls.with_raw_response.reject(busy, status_code=486)
    assert raw.status_code == 200
    declined = (await ring(http, emulator))["call_id"]
    await client.realtime.calls.reject(declined)
    for call_id, code in ((busy, 486), (declined, 603)):
        snapshot = sip_call(emulator, call_id).snapshot()
        assert (snapshot["state"], snapshot["end_reason"]) == ("ended", "rejected")
        assert snapshot["reject_status_code"] == code
    with pytest.raises(NotFoundError):
        await client.realtime.calls.accept(busy, type="realtime")
    with pytest.raises(NotFoundError):
        await client.realtime.calls.reject(busy)

    live = (await ring(http, emulator))["call_id"]
    await client.realtime.calls.accept(live, type="realtime")
    with pytest.raises(NotFoundError):  # only a ringing call can be declined
        await client.realtime.calls.reject(live)
    path = f"{emulator.api_prefix}/realtime/calls/{(await ring(http, emulator))['call_id']}"
    for bad in ({"status_code": 200}, {"status_code": "486"}, {"reason": "busy"}):
        status, body = await request_json(http, emulator, "POST", f"{path}/reject", bad)
        assert status == 400, bad
    status, body = await request_json(http, emulator, "POST", f"{path}/accept", {"model": "x"})
    assert (status, body["error"]["param"]) == (400, "session.type")


async def test_refer_with_the_sdk_records_the_target_and_ends_the_call(
    http: aiohttp.ClientSession, emulator: RunningEmulator, client: AsyncOpenAI
) -> None:
    """A referred call ends like a transfer (the SIP leg goes to the trunk): its sideband
    closes normally; the target is inspectable. A ringing call can be referred too."""
    call_id = (await ring(http, emulator))["call_id"]
    await client.realtime.calls.accept(call_id, **session_config())
    probe = await SidebandProbe.connect(http, emulator, call_id)
    path = f"{emulator.api_prefix}/realtime/calls/{call_id}/refer"
    for bad in ({}, {"target_uri": "https://example.com"}, {"target_uri": 5}):
        status, _ = await request_json(http, emulator, "POST", path, bad)
        assert status == 400, bad
    raw = await client.realtime.calls.with_raw_response.refer(
        call_id, target_uri="tel:+15550001111"
    )
    assert raw.status_code == 200
    closed = await probe.wait_closed()
    assert (closed.type, probe.ws.close_code) == (aiohttp.WSMsgType.CLOSE, 1000)
    snapshot = sip_call(emulator, call_id).snapshot()
    assert (snapshot["end_reason"], snapshot["referred_to"]) == ("referred", "tel:+15550001111")
    with pytest.raises(NotFoundError):
        await client.realtime.calls.refer(call_id, target_uri="tel:+15550001111")

    ringing = (await ring(http, emulator))["call_id"]
    await client.realtime.calls.refer(ringing, target_uri="sip:desk@example.com")
    assert sip_call(emulator, ringing).referred_to == "sip:desk@example.com"


async def test_provider_adapter_accept_reject_refer_and_the_accept_faults(
    http: aiohttp.ClientSession, emulator: RunningEmulator
) -> None:
    """OpenAICompatibleProvider's call control; accept_delay_ms + accept_not_found answer the
    404 late (the call keeps ringing); Azure's adapter refuses before any request."""
    provider = OpenAICompatibleProvider(emulator.base_url, KEY, http, timeout=5)
    call_id = (await ring(http, emulator))["call_id"]
    faults = await set_faults(http, emulator, accept_delay_ms=300, accept_not_found=True)
    assert (faults["accept_delay_ms"], faults["accept_not_found"]) == (300, True)
    started = time.monotonic()
    with pytest.raises(CallNotFoundError) as late:
        await provider.accept_call(call_id, session_config())
    assert time.monotonic() - started >= 0.3
    assert (late.value.status, late.value.code) == (404, "call_id_not_found")
    assert sip_call(emulator, call_id).state == "ringing"
    await set_faults(http, emulator, accept_not_found=False)
    await provider.accept_call(call_id, session_config())
    assert sip_call(emulator, call_id).state == "live"
    await set_faults(http, emulator, accept_delay_ms=0)
    await provider.refer_call(call_id, "tel:+15550002222")
    assert sip_call(emulator, call_id).referred_to == "tel:+15550002222"

    declined = (await ring(http, emulator))["call_id"]
    await provider.reject_call(declined)
    busy = (await ring(http, emulator))["call_id"]
    await provider.reject_call(busy, 486)
    assert sip_call(emulator, declined).reject_status_code == 603
    assert sip_call(emulator, busy).reject_status_code == 486
    for attempt in (
        provider.accept_call(declined, session_config()),
        provider.reject_call("rtc_nobody"),
        provider.refer_call("../calls", "tel:+1"),
    ):
        with pytest.raises(CallNotFoundError):
            await attempt

    # A client that gives up on a slow accept does not stop it: the call goes live anyway.
    await set_faults(http, emulator, accept_delay_ms=300)
    impatient = OpenAICompatibleProvider(emulator.base_url, KEY, http, timeout=0.05)
    slow = (await ring(http, emulator))["call_id"]
    with pytest.raises(ProviderTimeoutError):
        await impatient.accept_call(slow, session_config())
    async with asyncio.timeout(5):
        await sip_call(emulator, slow).answered.wait()
    assert sip_call(emulator, slow).state == "live"
    await set_faults(http, emulator, accept_delay_ms=0)

    azure = AzureOpenAIProvider(emulator.base_url, ApiKeyCredential(KEY), http)
    ringing = (await ring(http, emulator))["call_id"]
    for refused in (
        azure.accept_call(ringing, session_config()),
        azure.reject_call(ringing),
        azure.refer_call(ringing, "tel:+1"),
    ):
        with pytest.raises(ProviderCapabilityError) as error:
            await refused
        assert error.value.capability == "sip_calls"
    assert sip_call(emulator, ringing).state == "ringing"


async def test_an_unanswered_call_stops_ringing(http: aiohttp.ClientSession) -> None:
    emulator = await start_emulator(EmulatorSettings(api_key=KEY, sip_ring_timeout=0.2))
    try:
        call_id = (await ring(http, emulator))["call_id"]
        call = sip_call(emulator, call_id)
        async with asyncio.timeout(5):
            await call.wait_ended()
        assert call.end_reason == "ring_timeout"
        path = f"{emulator.api_prefix}/realtime/calls/{call_id}/accept"
        status, body = await request_json(http, emulator, "POST", path, {"type": "realtime"})
        assert (status, body["error"]["code"]) == (404, "call_id_not_found")
    finally:
        await emulator.close()


async def test_admin_routes_refuse_bad_bodies_and_other_calls(
    http: aiohttp.ClientSession, emulator: RunningEmulator
) -> None:
    for bad in (
        {"from": "+1444"},
        {"to": "<sip:x>", "from": "+1444"},
        {"to": "+1555", "from": "+1444", "headers": [{"name": "X"}]},
        {"to": "+1555", "from": "+1444", "webhook_url": "ftp://x"},
        {"to": "+1555", "from": "+1444", "webhook_url": "http://127.0.0.1:9/"},  # no secret
        {"to": "+1555", "from": "+1444", "webhook_secret": "whsec_***"},
        {"to": "+1555", "from": "+1444", "ring": True},
    ):
        status, _ = await request_json(http, emulator, "POST", "/_emulator/sip/ring", bad)
        assert status == 400, bad
    status, _ = await request_json(
        http, emulator, "POST", "/_emulator/sip/ring", {"to": "+1", "from": "+2"}, headers={}
    )
    assert status == 401
    call_id = (await ring(http, emulator))["call_id"]
    path = f"/_emulator/calls/{call_id}"
    status, body = await request_json(http, emulator, "POST", f"{path}/dtmf", {"digits": "1"})
    assert (status, body["error"]["code"]) == (409, "call_not_live")
    async with http.post(
        f"{emulator.base_url}/realtime/calls/{call_id}/accept",
        json={"type": "realtime"},
        headers=emulator.auth(),
    ) as accepted:
        assert (accepted.status, await accepted.read()) == (200, b"")
    bad_bodies: list[tuple[str, dict[str, Any]]] = [
        ("dtmf", {"digits": "12x"}),
        ("dtmf", {"digits": ""}),
        ("dtmf", {"digits": 12}),
        ("dtmf", {}),
        ("say", {"text": " "}),
        ("say", {}),
        ("say", {"text": "hi", "loud": True}),
    ]
    for route, bad in bad_bodies:
        status, _ = await request_json(http, emulator, "POST", f"{path}/{route}", bad)
        assert status == 400, (route, bad)
    for route in ("say", "dtmf", "caller_hangup"):
        status, _ = await request_json(
            http, emulator, "POST", f"/_emulator/calls/rtc_nobody/{route}", {}
        )
        assert status == 404
    status, _ = await request_json(
        http, emulator, "POST", "/_emulator/sip/calls/rtc_nobody/redeliver", {}
    )
    assert status == 404
    snapshot = sip_call(emulator, call_id).snapshot()
    assert snapshot["media"] == "sip"
    assert json.dumps(snapshot)  # inspectable as JSON


async def test_the_models_speech_plays_to_the_phone_not_into_events(
    http: aiohttp.ClientSession,
) -> None:
    """A phone call's audio is RTP at the real service: the sideband sees
    output_audio_buffer.started/stopped around a spoken response, never audio deltas."""
    emulator = await start_emulator(EmulatorSettings(api_key=KEY, speech="tone"))
    try:
        call_id = (await ring(http, emulator))["call_id"]
        async with AsyncOpenAI(api_key=KEY, base_url=emulator.base_url, max_retries=0) as sdk:
            await sdk.realtime.calls.accept(call_id, **session_config(turn_detection=None))
        probe = await SidebandProbe.connect(http, emulator, call_id)
        await probe.send({"type": "response.create"})
        done = await probe.wait_for("response.done")
        started = await probe.wait_for("output_audio_buffer.started")
        stopped = await probe.wait_for("output_audio_buffer.stopped")
        assert started["response_id"] == stopped["response_id"] == done["response"]["id"]
        assert not any(e["type"] == "response.output_audio.delta" for e in probe.events)
        [played] = sip_call(emulator, call_id).snapshot()["model_audio_ms"]
        assert played > 0
        await probe.close()
    finally:
        await emulator.close()
