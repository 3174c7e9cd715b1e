"""The official openai SDK works against the emulator unchanged (docs/protocol.md §5)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from openai import AsyncOpenAI
from openai.resources.realtime.realtime import AsyncRealtimeConnection
from websockets.exceptions import InvalidStatus

from tests.support.broker_server import PROVIDER_KEY
from tests.support.browser import FakeBrowser
from tests.support.conformance import validate_server_event
from tests.support.servers import LOOKUP_ORDER, RunningEmulator

KEY = PROVIDER_KEY  # the shared `emulator` fixture (tests/conftest.py) uses it


@pytest.fixture
async def client(emulator: RunningEmulator) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(api_key=KEY, base_url=emulator.base_url, max_retries=0) as sdk:
        yield sdk


async def recv_until(conn: AsyncRealtimeConnection, type_: str) -> list[dict[str, Any]]:
    """Read raw events (strictly validated) until one of ``type_``; return them all."""
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(5):
        while True:
            event = json.loads(await conn.recv_bytes())
            validate_server_event(event)
            events.append(event)
            if event["type"] == type_:
                return events


async def test_sdk_create_connect_tool_round_trip_and_hangup(
    emulator: RunningEmulator, client: AsyncOpenAI, browser: FakeBrowser
) -> None:
    """calls.create (multipart) → 201 + Location; connect(call_id) sees the call's events and
    can answer a tool call; hangup ends it, the SDK socket closes cleanly, re-connect is 404."""
    offer = await browser.create_offer()
    async with asyncio.timeout(5):
        raw = await client.realtime.calls.with_raw_response.create(
            sdp=offer,
            session={"type": "realtime", "model": "gpt-realtime", "tools": [LOOKUP_ORDER]},
        )
    assert raw.status_code == 201
    location = raw.headers["location"]
    assert re.fullmatch(r"/v1/realtime/calls/rtc_u2_[0-9A-Za-z]{21}", location)
    call_id = location.rstrip("/").rsplit("/", 1)[-1]
    await browser.accept_answer(raw.text)
    await browser.wait_open(5)
    validate_server_event(await browser.wait_for("session.created", timeout=5))

    async with asyncio.timeout(5):
        conn = await client.realtime.connect(call_id=call_id).enter()
    try:
        await conn.conversation.item.create(
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "please lookup_order 42"}],
            }
        )
        await conn.response.create()
        events = await recv_until(conn, "response.done")
        done = events[-1]
        assert done["response"]["status"] == "completed"
        [function_call] = done["response"]["output"]
        assert function_call["name"] == "lookup_order"
        assert function_call["arguments"] == '{"order_id":"42"}'

        await conn.conversation.item.create(
            item={
                "type": "function_call_output",
                "call_id": function_call["call_id"],
                "output": '{"status":"shipped"}',
            }
        )
        await conn.response.create()
        # The SDK's own parser (recv) works too; it does not validate, so check type and text.
        async with asyncio.timeout(5):
            while True:
                parsed = await conn.recv()
                if parsed.type == "response.done":
                    break
        assert parsed.response.output is not None
        message = parsed.response.output[0]
        assert message.type == "message"
        assert message.content[0].transcript == 'lookup_order returned: {"status":"shipped"}'
        async with asyncio.timeout(5):
            # rate_limits.updated follows every response.done.
            while (await conn.recv()).type != "rate_limits.updated":
                pass

        await browser.wait_for(
            "response.done", lambda e: e["response"]["id"] == parsed.response.id, timeout=5
        )
        for event in browser.events:
            validate_server_event(event)

        async with asyncio.timeout(5):
            await client.realtime.calls.hangup(call_id)
        after: list[str] = []
        async with asyncio.timeout(5):
            async for event in conn:  # ends quietly on the clean 1000 close
                after.append(event.type)
        assert after == []
    finally:
        async with asyncio.timeout(5):
            await conn.close()

    call = emulator.registry.get(call_id)
    assert call is not None
    assert (call.ended, call.end_reason) == (True, "hangup")
    assert call.sideband_attaches == [call_id]
    assert [r.source for r in call.received] == ["sideband"] * 4

    with pytest.raises(InvalidStatus) as info:
        async with asyncio.timeout(5):
            await client.realtime.connect(call_id=call_id).enter()
    assert info.value.response.status_code == 404
    assert json.loads(info.value.response.body or b"{}")["error"]["code"] == "call_id_not_found"


async def test_sdk_raw_sdp_form_uses_default_session(
    emulator: RunningEmulator, client: AsyncOpenAI, browser: FakeBrowser
) -> None:
    """calls.create without a session posts application/sdp; the call gets the GA defaults."""
    offer = await browser.create_offer()
    async with asyncio.timeout(5):
        raw = await client.realtime.calls.with_raw_response.create(sdp=offer)
    assert raw.status_code == 201
    await browser.accept_answer(raw.text)
    await browser.wait_open(5)
    created = await browser.wait_for("session.created", timeout=5)
    validate_server_event(created)
    assert created["session"]["model"] == "gpt-realtime"
    assert created["session"]["tools"] == []
    assert created["session"]["audio"]["output"]["voice"] == "alloy"
