"""Conformance: every event on the wire validates against the official SDK's own types.

The SDK's parser does not validate (docs/protocol.md §5.5), so these tests use the strict,
discriminated ``TypeAdapter`` over ``RealtimeServerEvent``/``RealtimeClientEvent``. The
shared ``emulator`` fixture also validates every server event of every test at teardown;
this module drives one call through every event the issue lists and proves each one
was produced and validated, and that the broker's own client events validate too.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from emulator import Call, EmulatorSettings
from tests.support.audio import silence, speech_like_signal
from tests.support.broker_server import PROVIDER_KEY, RunningBroker
from tests.support.browser import FakeBrowser
from tests.support.conformance import (
    server_event_failures,
    sideband_client_event_failures,
    validate_client_event,
)
from tests.support.flow import LOOKUP_42_OUTPUT, ask, connect_browser, says
from tests.support.servers import (
    LOOKUP_ORDER,
    RunningEmulator,
    SidebandProbe,
    open_call,
    start_emulator,
)

# The GA server events the broker's flow meets (the list), all of which must appear.
REQUIRED_SERVER_EVENTS = {
    "session.created",
    "session.updated",
    "conversation.item.added",
    "conversation.item.done",
    "conversation.item.retrieved",
    "conversation.item.truncated",
    "conversation.item.deleted",
    "input_audio_buffer.speech_started",
    "input_audio_buffer.speech_stopped",
    "input_audio_buffer.committed",
    "input_audio_buffer.cleared",
    "response.created",
    "response.output_item.added",
    "response.output_item.done",
    "response.content_part.added",
    "response.content_part.done",
    "response.output_text.delta",
    "response.output_text.done",
    "response.output_audio_transcript.delta",
    "response.output_audio_transcript.done",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.done",
    "output_audio_buffer.started",
    "output_audio_buffer.stopped",
    "output_audio_buffer.cleared",
    "rate_limits.updated",
    "error",
}
CLIENT_EVENTS_SENT = {
    "session.update",
    "conversation.item.create",
    "conversation.item.delete",
    "conversation.item.retrieve",
    "conversation.item.truncate",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "response.create",
    "response.cancel",
    "output_audio_buffer.clear",
}


@pytest.fixture
async def slow_emulator() -> AsyncIterator[RunningEmulator]:
    """Deltas 30 ms apart, so a cancel meets a response mid-stream."""
    running = await start_emulator(
        EmulatorSettings(api_key=PROVIDER_KEY, token_interval=0.03, speech="tone")
    )
    yield running
    await running.close()


def pcm24k_base64(samples_48k: Any) -> str:
    """48 kHz int16 → 24 kHz little-endian PCM16, base64 (the session's input format)."""
    return base64.b64encode(samples_48k[::2].astype("<i2").tobytes()).decode()


def user_text(text: str) -> dict[str, Any]:
    return {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": text}],
        },
    }


async def test_every_listed_event_is_emitted_and_validates(
    slow_emulator: RunningEmulator, http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    """One call through every client event; all server events validate strictly."""
    emulator = slow_emulator
    call_id = await open_call(
        http, emulator, browser, {"type": "realtime", "tools": [LOOKUP_ORDER]}
    )
    sideband = await SidebandProbe.connect(http, emulator, call_id)
    try:
        sent: list[dict[str, Any]] = []

        async def from_sideband(event: dict[str, Any]) -> None:
            sent.append(event)
            await sideband.send(event)

        def from_browser(event: dict[str, Any]) -> None:
            sent.append(event)
            browser.send(event)

        # session.update from both sides (turn detection off, so only our appends count).
        await from_sideband(
            {"type": "session.update", "session": {"type": "realtime", "instructions": "Be brief."}}
        )
        from_browser(
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}},
            }
        )
        await browser.wait_for(
            "session.updated", lambda e: e["session"]["audio"]["input"]["turn_detection"] is None
        )

        # Two function calls in one response: one offered tool, one the session never had.
        from_browser(user_text("lookup_order 42 tool:delete_account"))
        from_browser({"type": "response.create"})
        calls_done = await browser.wait_for("response.done", timeout=10)
        names = [item["name"] for item in calls_done["response"]["output"]]
        assert names == ["lookup_order", "delete_account"]
        for item in calls_done["response"]["output"]:
            await from_sideband(
                {
                    "type": "conversation.item.create",
                    "item": {
                        "type": "function_call_output",
                        "call_id": item["call_id"],
                        "output": "{}",
                    },
                }
            )
        await from_sideband({"type": "response.create"})
        spoken = await browser.wait_for(
            "response.done",
            lambda e: e["response"]["id"] != calls_done["response"]["id"],
            timeout=10,
        )
        message = spoken["response"]["output"][0]

        # Read and edit the conversation.
        from_browser({"type": "conversation.item.retrieve", "item_id": message["id"]})
        await browser.wait_for("conversation.item.retrieved", timeout=5)
        await browser.wait_for("output_audio_buffer.started", timeout=5)
        from_browser({"type": "output_audio_buffer.clear"})
        await browser.wait_for("output_audio_buffer.cleared", timeout=5)
        from_browser(
            {
                "type": "conversation.item.truncate",
                "item_id": message["id"],
                "content_index": 0,
                "audio_end_ms": 100,
            }
        )
        await browser.wait_for("conversation.item.truncated", timeout=5)
        from_browser({"type": "conversation.item.delete", "item_id": message["id"]})
        await browser.wait_for("conversation.item.deleted", timeout=5)

        # Input audio by hand: append speech, commit it, append more, clear it.
        speech = pcm24k_base64(speech_like_signal(0.5))
        from_browser({"type": "input_audio_buffer.append", "audio": speech})
        from_browser({"type": "input_audio_buffer.commit"})
        await browser.wait_for("input_audio_buffer.committed", timeout=5)
        from_browser({"type": "input_audio_buffer.append", "audio": speech})
        from_browser({"type": "input_audio_buffer.clear"})
        await browser.wait_for("input_audio_buffer.cleared", timeout=5)

        # Server VAD over appended audio: speech then silence.
        from_browser(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "audio": {
                        "input": {
                            "turn_detection": {"type": "server_vad", "create_response": False}
                        }
                    },
                },
            }
        )
        quiet = pcm24k_base64(silence(0.5))
        for chunk in (quiet, speech, quiet):
            from_browser({"type": "input_audio_buffer.append", "audio": chunk})
        await browser.wait_for("input_audio_buffer.speech_stopped", timeout=5)

        # A text reply that plays to its end, and a cancelled one.
        from_browser({"type": "response.create", "response": {"output_modalities": ["text"]}})
        await browser.wait_for("response.output_text.done", timeout=10)
        await browser.wait_for(
            "response.done", lambda e: e["response"]["output_modalities"] == ["text"], timeout=10
        )
        from_browser(user_text("hi"))
        from_browser({"type": "response.create"})
        await browser.wait_for("output_audio_buffer.stopped", timeout=10)
        from_browser(user_text("please say something rather long so that it can be cancelled"))
        from_browser({"type": "response.create"})
        await browser.wait_for(
            "response.output_audio_transcript.delta",
            lambda e: e["delta"].strip() == "rather",
            timeout=10,
        )
        from_browser({"type": "response.cancel"})
        await browser.wait_for(
            "response.done", lambda e: e["response"]["status"] == "cancelled", timeout=10
        )

        # An error: an unknown client event.
        from_browser({"type": "response.explode"})
        await browser.wait_for("error", timeout=5)
    finally:
        await sideband.close()

    call = emulator.registry.get(call_id)
    assert call is not None
    produced = {str(e["type"]) for e in call.sent}
    assert REQUIRED_SERVER_EVENTS <= produced, REQUIRED_SERVER_EVENTS - produced
    assert server_event_failures(emulator.registry) == []
    # The client events this test sent are themselves valid GA events (bar the bad one).
    for event in sent:
        if event["type"] != "response.explode":
            validate_client_event(event)
    assert CLIENT_EVENTS_SENT <= {e["type"] for e in sent}
    [error] = [e for e in call.sent if e["type"] == "error"]
    assert error["error"]["code"] == "unknown_event"


async def test_the_brokers_sideband_events_validate(
    broker: RunningBroker, emulator: RunningEmulator
) -> None:
    """Every client event the broker sent on its sideband is a valid GA client event."""
    session = await broker.create_session(tools=["lookup_order"])
    browser = await connect_browser(broker, session)
    try:
        ask(browser, 'lookup_order {"order_id": "42"}')
        await browser.wait_for("response.done", says(LOOKUP_42_OUTPUT))
    finally:
        await browser.close()
    calls: list[Call] = list(emulator.registry.calls.values())
    from_broker = [r.event for c in calls for r in c.received if r.source == "sideband"]
    # The config assertion, the output, the probe of the session before asking for a
    # response (it must validate too: a session.update carrying only its type), the request.
    assert [e["type"] for e in from_broker] == [
        "session.update",
        "conversation.item.create",
        "session.update",
        "response.create",
    ]
    assert from_broker[2]["session"] == {"type": "realtime"}
    assert sideband_client_event_failures(emulator.registry) == []
    assert server_event_failures(emulator.registry) == []


async def test_a_bad_event_fails_conformance() -> None:
    """The checks can fail: a GA-invalid event (beta content type ``text``) is reported."""
    running = await start_emulator(EmulatorSettings(api_key=PROVIDER_KEY))
    try:
        call = await asyncio.wait_for(_bare_call(running), 10)
        call.sent.append(
            {
                "type": "response.output_item.done",
                "event_id": "event_1",
                "response_id": "resp_1",
                "output_index": 0,
                "item": {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "text", "text": "x"}],
                },
            }
        )
        assert len(server_event_failures(running.registry)) == 1
    finally:
        await running.close()


async def _bare_call(running: RunningEmulator) -> Call:
    browser = FakeBrowser()
    try:
        async with aiohttp.ClientSession() as http:
            call_id = await open_call(http, running, browser)
    finally:
        await browser.close()
    call = running.registry.get(call_id)
    assert call is not None
    return call
