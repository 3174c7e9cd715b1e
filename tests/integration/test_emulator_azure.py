"""The emulator's Azure OpenAI flavour (docs/protocol.md §0 "Azure OpenAI", §6).

Azure serves the GA protocol under ``/openai/v1``: the resource key comes as ``api-key`` (or
``Authorization: Bearer``, the stand-in for an Entra token); ``/realtime/calls`` takes only a
client secret, as a raw ``application/sdp`` offer; ``?webrtcfilter=on`` keeps all but a few
event types off the browser's data channel. Each test runs a real emulator, aiortc page and
sideband on loopback.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI
from openai.types.realtime import ClientSecretCreateResponse

from emulator import EmulatorSettings
from tests.conftest import assert_conformant
from tests.support.broker_server import PROVIDER_KEY
from tests.support.browser import FakeBrowser
from tests.support.servers import (
    LOOKUP_ORDER,
    RunningEmulator,
    SidebandProbe,
    post_offer,
    request_json,
    start_emulator,
)

KEY = PROVIDER_KEY
DEPLOYMENT = "my-gpt-realtime-deployment"  # Azure's `model` is a deployment name
# Azure's documented list, written again rather than imported from emulator/_flavors.py: the
# test pins the emulator to the docs, so an edit to the emulator's copy must fail here.
WEBRTC_FILTER = {
    "input_audio_buffer.speech_started",
    "input_audio_buffer.speech_stopped",
    "output_audio_buffer.started",
    "output_audio_buffer.stopped",
    "conversation.item.input_audio_transcription.completed",
    "conversation.item.added",
    "conversation.item.created",
    "response.output_text.delta",
    "response.output_text.done",
    "response.output_audio_transcript.delta",
    "response.output_audio_transcript.done",
}
FUNCTION_CALL_EVENTS = {
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.output_item.added",
    "response.output_item.done",
    "response.done",
}
AZURE_CALL_LOCATION = re.compile(r"/v1/realtime/calls/rtc_[0-9a-f]{32}")
API_KEY = {"api-key": KEY}
ENTRA_STAND_IN = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
async def azure() -> AsyncIterator[RunningEmulator]:
    """The emulator in its Azure flavour; every server event it sent is validated."""
    running = await start_emulator(
        EmulatorSettings(api_key=KEY, flavor="azure", ephemeral_sideband_delay=0.05)
    )
    yield running
    await running.close()
    assert_conformant(running)


async def client_secret(
    http: aiohttp.ClientSession,
    azure: RunningEmulator,
    session: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> str:
    """Step one: ``POST /openai/v1/realtime/client_secrets``; return the ``ek_`` value."""
    body = {"session": {"type": "realtime", "model": DEPLOYMENT, **(session or {})}}
    status, reply = await request_json(
        http,
        azure,
        "POST",
        "/openai/v1/realtime/client_secrets",
        body,
        headers=API_KEY if headers is None else headers,
    )
    assert status == 200, reply
    assert reply["session"]["model"] == DEPLOYMENT
    value: str = reply["value"]
    return value


async def offer_call(
    http: aiohttp.ClientSession,
    azure: RunningEmulator,
    browser: FakeBrowser,
    secret: str,
    *,
    webrtcfilter: bool = False,
) -> str:
    """Step two: the raw SDP offer with ``Bearer ek_…``; connect the page; return the call id."""
    params = {"webrtcfilter": "on"} if webrtcfilter else None
    status, answer, location = await post_offer(
        http, azure, await browser.create_offer(), bearer=secret, raw=True, params=params
    )
    assert status == 201, answer
    assert location is not None and AZURE_CALL_LOCATION.fullmatch(location), location
    assert answer.startswith("v=0")
    await browser.accept_answer(answer)
    await browser.wait_open()
    return location.rsplit("/", 1)[-1]


def is_marker(event: dict[str, Any]) -> bool:
    content = event["item"].get("content") or [{}]
    return bool(content[0].get("text") == "marker")


async def sideband(
    http: aiohttp.ClientSession, azure: RunningEmulator, call_id: str, headers: dict[str, str]
) -> SidebandProbe:
    async with asyncio.timeout(5):
        ws = await http.ws_connect(f"{azure.ws_url}?call_id={call_id}", headers=headers)
    return SidebandProbe(ws)


async def test_the_resource_key_cannot_create_calls(
    azure: RunningEmulator, http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    """/openai/v1/realtime/calls refuses the resource key, as api-key or as a Bearer token, in
    either body form, with 401 "This operation requires ephemeral tokens"; no call is made."""
    offer = await browser.create_offer()
    url = f"{azure.base_url}/realtime/calls"
    for headers in (API_KEY, ENTRA_STAND_IN, {"api-key": "not-the-key"}):
        for raw in (True, False):
            data: Any
            if raw:
                data, content = offer, {"Content-Type": "application/sdp"}
            else:
                data, content = aiohttp.FormData({"sdp": offer}), {}
            async with asyncio.timeout(10):
                async with http.post(url, data=data, headers={**headers, **content}) as response:
                    status, body = response.status, await response.json()
            assert status == 401
            assert body["error"]["code"] == "ephemeral_token_required"
            assert body["error"]["message"].startswith("This operation requires ephemeral tokens")
            assert KEY not in json.dumps(body)
    assert len(azure.registry.calls) == 0


async def test_two_step_offer_sideband_and_hangup(
    azure: RunningEmulator, http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    """A client secret minted with api-key (or Bearer) starts a call from a raw SDP offer:
    201, Location without /openai, an rtc_<32 hex> id, the secret's session (the deployment
    name as model) on a real peer; the sideband attaches with either header; hangup with
    api-key ends the call."""
    await client_secret(http, azure, headers=ENTRA_STAND_IN)  # the Entra stand-in mints too
    secret = await client_secret(http, azure, {"instructions": "Answer as Azure."})
    call_id = await offer_call(http, azure, browser, secret)
    created = await browser.wait_for("session.created")
    assert created["session"]["model"] == DEPLOYMENT
    assert created["session"]["instructions"] == "Answer as Azure."

    first = await sideband(http, azure, call_id, API_KEY)
    second = await sideband(http, azure, call_id, ENTRA_STAND_IN)
    try:
        browser.send_user_text("hello from the page")
        for probe in (first, second):
            added = await probe.wait_for("conversation.item.added")
            assert added["item"]["content"][0]["text"] == "hello from the page"
        status, body = await request_json(
            http, azure, "POST", f"/openai/v1/realtime/calls/{call_id}/hangup", {}, API_KEY
        )
        assert (status, body) == (200, {})
        for probe in (first, second):
            assert (await probe.wait_closed()).data == 1000
    finally:
        await first.close()
        await second.close()
    call = azure.registry.get(call_id)
    assert call is not None and call.end_reason == "hangup"
    assert call.sideband_attaches == [call_id, call_id]


@pytest.mark.parametrize("webrtcfilter", [True, False], ids=["filter-on", "filter-off"])
async def test_webrtcfilter_keeps_function_call_events_off_the_page(
    azure: RunningEmulator, http: aiohttp.ClientSession, browser: FakeBrowser, webrtcfilter: bool
) -> None:
    """With ?webrtcfilter=on the page gets only the documented event types: none of a tool
    call's arguments, output items or response.done, while the sideband gets them all. With
    the filter off the page gets everything."""
    secret = await client_secret(http, azure, {"tools": [LOOKUP_ORDER]})
    call_id = await offer_call(http, azure, browser, secret, webrtcfilter=webrtcfilter)
    probe = await sideband(http, azure, call_id, API_KEY)
    try:
        browser.send_user_text("lookup_order 42")
        browser.send({"type": "response.create"})
        done = await probe.wait_for("response.done", timeout=10)
        [call] = done["response"]["output"]
        assert (call["name"], call["arguments"]) == ("lookup_order", '{"order_id":"42"}')
        # A marker item after the tool call: once the page sees it, the ordered data channel
        # has delivered everything the call sent the page before it.
        await probe.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "marker"}],
                },
            }
        )
        for connection in (browser, probe):
            await connection.wait_for("conversation.item.added", is_marker)
    finally:
        await probe.close()
    page = {event["type"] for event in browser.events}
    seen_by_sideband = {event["type"] for event in probe.events}
    assert FUNCTION_CALL_EVENTS <= seen_by_sideband
    assert "rate_limits.updated" in seen_by_sideband
    if webrtcfilter:
        assert page <= WEBRTC_FILTER, page - WEBRTC_FILTER
        assert "conversation.item.added" in page
        assert not page & FUNCTION_CALL_EVENTS
        assert "session.created" not in page
    else:
        assert FUNCTION_CALL_EVENTS | {"session.created", "rate_limits.updated"} <= page


async def test_a_client_secret_sideband_is_not_found(
    azure: RunningEmulator, http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    """The ek_ secret that created the call cannot attach a sideband (either header): 404
    call_id_not_found, as OpenAI answers; the call goes on."""
    secret = await client_secret(http, azure)
    call_id = await offer_call(http, azure, browser, secret)
    for headers in ({"Authorization": f"Bearer {secret}"}, {"api-key": secret}):
        status, body = await request_json(
            http, azure, "GET", f"/openai/v1/realtime?call_id={call_id}", None, headers
        )
        assert (status, body["error"]["code"]) == (404, "call_id_not_found")
    call = azure.registry.get(call_id)
    assert call is not None and not call.ended and call.sideband_attaches == []


async def test_openai_sdk_against_the_azure_flavour(
    azure: RunningEmulator, browser: FakeBrowser
) -> None:
    """The official SDK with base_url=<emulator>/openai/v1 (it sends Bearer): the resource key
    mints a client secret but its calls.create is refused with 401; the secret's own client
    creates the call."""
    session: Any = {"type": "realtime", "model": DEPLOYMENT, "instructions": "Be brief."}
    async with AsyncOpenAI(api_key=KEY, base_url=azure.base_url, max_retries=0) as sdk:
        async with asyncio.timeout(5):
            secret = await sdk.realtime.client_secrets.create(session=session)
        assert isinstance(secret, ClientSecretCreateResponse)
        assert secret.value.startswith("ek_")
        with pytest.raises(openai.AuthenticationError) as refused:
            async with asyncio.timeout(5):
                await sdk.realtime.calls.create(sdp=await browser.create_offer())
        assert refused.value.code == "ephemeral_token_required"
    async with AsyncOpenAI(
        api_key=secret.value, base_url=azure.base_url, max_retries=0
    ) as ephemeral:
        async with asyncio.timeout(5):
            raw = await ephemeral.realtime.calls.with_raw_response.create(
                sdp=await browser.create_offer()
            )
    assert raw.status_code == 201
    assert AZURE_CALL_LOCATION.fullmatch(raw.headers["location"])
    assert raw.headers["content-type"] == "text/plain; charset=utf-8"  # as Azure answers
    await browser.accept_answer(raw.text)
    await browser.wait_open()
    created = await browser.wait_for("session.created")
    assert created["session"]["instructions"] == "Be brief."


async def test_each_flavour_serves_only_its_own_paths(
    azure: RunningEmulator, emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    """Azure's routes live under /openai/v1 only, OpenAI's under /v1 only; OpenAI ignores an
    api-key header; the admin routes stay at /_emulator on both."""
    body = {"session": {"type": "realtime"}}
    path = "/realtime/client_secrets"
    status, _ = await request_json(http, azure, "POST", f"/v1{path}", body, API_KEY)
    assert status == 404
    status, _ = await request_json(http, emulator, "POST", f"/openai/v1{path}", body)
    assert status == 404
    status, reply = await request_json(http, emulator, "POST", f"/v1{path}", body, API_KEY)
    assert (status, reply["error"]["code"]) == (401, "invalid_api_key")
    status, reply = await request_json(http, emulator, "POST", f"/v1{path}", body)
    assert status == 200 and reply["value"].startswith("ek_")
    for running, headers in ((azure, API_KEY), (azure, ENTRA_STAND_IN), (emulator, None)):
        status, _ = await request_json(http, running, "GET", "/_emulator/faults", None, headers)
        assert status == 200
