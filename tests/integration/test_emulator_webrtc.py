"""FakeBrowser (real aiortc) ↔ emulator ↔ sideband (real aiohttp WebSocket), end to end."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from emulator import EmulatorSettings
from tests.support.broker_server import PROVIDER_KEY
from tests.support.browser import FakeBrowser
from tests.support.conformance import validate_server_event
from tests.support.servers import (
    LOOKUP_ORDER,
    RunningEmulator,
    SidebandProbe,
    offer_form,
    open_call,
    start_emulator,
)

KEY = PROVIDER_KEY  # the shared `emulator` fixture (tests/conftest.py) uses it
SESSION = {"type": "realtime", "model": "gpt-realtime", "tools": [LOOKUP_ORDER]}
ORDER_OUTPUT = json.dumps({"order_id": "42", "status": "shipped"}, separators=(",", ":"))

FUNCTION_CALL_SEQUENCE = [
    "response.created",
    "response.output_item.added",
    "conversation.item.added",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "conversation.item.done",
    "response.output_item.done",
    "response.done",
    "rate_limits.updated",
]
MESSAGE_SEQUENCE = [
    "response.created",
    "response.output_item.added",
    "conversation.item.added",
    "response.content_part.added",
    "output_audio_buffer.started",
    "response.output_audio_transcript.delta",
    "response.output_audio_transcript.done",
    "response.content_part.done",
    "conversation.item.done",
    "response.output_item.done",
    "response.done",
    "rate_limits.updated",
]


def collapse(types: list[str]) -> list[str]:
    """Collapse runs of the same delta type so sequences compare independent of N."""
    out: list[str] = []
    for type_ in types:
        if not (out and out[-1] == type_ and type_.endswith(".delta")):
            out.append(type_)
    return out


def types_of(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def count(events: list[dict[str, Any]], type_: str = "rate_limits.updated") -> int:
    return sum(1 for e in events if e["type"] == type_)


def settled(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop ``output_audio_buffer.stopped``: it comes when the audio has played, any time later."""
    return [e for e in events if e["type"] != "output_audio_buffer.stopped"]


async def _emulator(**overrides: Any) -> RunningEmulator:
    return await start_emulator(EmulatorSettings(api_key=KEY, **overrides))


@pytest.fixture
async def emulator() -> AsyncIterator[RunningEmulator]:
    emu = await _emulator()
    yield emu
    await emu.close()


async def test_offer_answer_and_session_created(
    emulator: RunningEmulator, http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    """/calls answers 201 + Location + sendrecv SDP labelled text/plain; charset=utf-8 (as
    recorded); the channel opens; session.created is first."""
    offer = await browser.create_offer()
    async with asyncio.timeout(5):
        response = await http.post(
            f"{emulator.base_url}/realtime/calls?model=ignored-when-session-has-one",
            data=offer_form(offer, SESSION),
            headers=emulator.auth(),
        )
        answer = await response.text()
    assert response.status == 201
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    location = response.headers["Location"]
    assert re.fullmatch(r"/v1/realtime/calls/rtc_u2_[0-9A-Za-z]{21}", location)
    assert answer.startswith("v=0")
    assert "a=sendrecv" in answer
    assert "webrtc-datachannel" in answer

    await browser.accept_answer(answer)
    await browser.wait_open(5)
    created = await browser.wait_for("session.created", timeout=5)
    validate_server_event(created)
    assert browser.events[0] is created
    assert created["event_id"].startswith("event_")

    call_id = location.rsplit("/", 1)[-1]
    call = emulator.registry.get(call_id)
    assert call is not None
    assert call.location == location
    assert created["session"] == call.session
    assert call.session["tools"] == [LOOKUP_ORDER]
    assert call.session["model"] == "gpt-realtime"
    assert call.session["id"].startswith("sess_")
    assert browser.connection_states[:2] == ["connecting", "connected"]
    assert browser.remote_ip is not None


async def test_function_call_round_trip_fans_out_to_sidebands(
    emulator: RunningEmulator, http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    """Every server event reaches the data channel and each sideband in the same order.

    Also: the full function-call sequence, the tool result answered from the sideband, and
    the recorder attributing each client event to its source.
    """
    call_id = await open_call(http, emulator, browser, SESSION)
    first = await SidebandProbe.connect(http, emulator, call_id)
    second = await SidebandProbe.connect(http, emulator, call_id)
    try:
        browser.send_user_text('lookup_order {"order_id": "42"}')
        browser.send({"type": "response.create"})
        done = await browser.wait_for("response.done", timeout=5)
        await browser.wait_for("rate_limits.updated", timeout=5)
        await first.wait_for("rate_limits.updated")
        await second.wait_for("rate_limits.updated")

        from_browser = browser.events[1:]  # after session.created, which only the browser gets
        assert first.events == from_browser
        assert second.events == from_browser
        for event in browser.events:
            validate_server_event(event)
        assert collapse(types_of(from_browser)) == [
            "conversation.item.added",
            "conversation.item.done",
            *FUNCTION_CALL_SEQUENCE,
        ]

        by_type = {e["type"]: e for e in from_browser}
        response_id = done["response"]["id"]
        assert response_id.startswith("resp_")
        assert done["response"]["status"] == "completed"
        [function_call] = done["response"]["output"]
        assert function_call["type"] == "function_call"
        assert function_call["status"] == "completed"
        assert function_call["name"] == "lookup_order"
        assert function_call["arguments"] == '{"order_id":"42"}'
        assert function_call["call_id"].startswith("call_")
        assert function_call["id"].startswith("item_")
        deltas = [e for e in from_browser if e["type"] == "response.function_call_arguments.delta"]
        assert "".join(d["delta"] for d in deltas) == function_call["arguments"]
        assert all("name" not in d and d["call_id"] == function_call["call_id"] for d in deltas)
        args_done = by_type["response.function_call_arguments.done"]
        assert args_done["name"] == "lookup_order"
        assert args_done["arguments"] == function_call["arguments"]
        added = by_type["response.output_item.added"]["item"]
        assert (added["status"], added["arguments"]) == ("in_progress", "")
        user_item = from_browser[0]["item"]
        assert from_browser[0]["previous_item_id"] is None
        assert from_browser[4]["previous_item_id"] == user_item["id"]  # the model's item
        # Its .done names no predecessor, as recorded from the real service.
        model_done = [e for e in from_browser if e["type"] == "conversation.item.done"][1]
        assert model_done["item"]["type"] == "function_call"
        assert model_done["previous_item_id"] is None
        usage = done["response"]["usage"]
        assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] > 0
        # After response.done, and (as recorded) only the token budget.
        [limit] = by_type["rate_limits.updated"]["rate_limits"]
        assert limit["name"] == "tokens"
        assert limit["remaining"] == limit["limit"] - usage["total_tokens"]

        await first.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "function_call_output",
                    "call_id": function_call["call_id"],
                    "output": ORDER_OUTPUT,
                },
            }
        )
        await first.send({"type": "response.create"})
        final = await browser.wait_for(
            "response.done", lambda e: e["response"]["id"] != response_id, timeout=5
        )
        for probe in (browser, first, second):
            # The second response's rate_limits.updated ends it on every connection.
            await probe.wait_for("rate_limits.updated", lambda _, p=probe: count(p.events) == 2)
        assert settled(first.events) == settled(browser.events[1:]) == settled(second.events)
        for event in browser.events:
            validate_server_event(event)

        second_part = settled(browser.events[len(from_browser) + 1 :])
        assert collapse(types_of(second_part)) == [
            "conversation.item.added",
            "conversation.item.done",
            *MESSAGE_SEQUENCE,
        ]
        assert second_part[0]["item"]["output"] == ORDER_OUTPUT
        expected_text = f"lookup_order returned: {ORDER_OUTPUT}"
        [message] = final["response"]["output"]
        assert message["content"] == [{"type": "output_audio", "transcript": expected_text}]
        transcript_done = next(
            e for e in second_part if e["type"] == "response.output_audio_transcript.done"
        )
        assert transcript_done["transcript"] == expected_text

        call = emulator.registry.get(call_id)
        assert call is not None
        recorded = [(r.source, r.event["type"]) for r in call.received]
        assert recorded == [
            ("datachannel", "conversation.item.create"),
            ("datachannel", "response.create"),
            ("sideband", "conversation.item.create"),
            ("sideband", "response.create"),
        ]
        output_event = call.received[2]
        assert output_event.source == "sideband"
        assert output_event.event["item"]["output"] == ORDER_OUTPUT
        assert call.received[0].connection_id == call.received[1].connection_id
        assert call.received[2].connection_id != call.received[0].connection_id
        assert call.sideband_attaches == [call_id, call_id]
        assert [i["type"] for i in call.conversation] == [
            "message",
            "function_call",
            "function_call_output",
            "message",
        ]

        async with asyncio.timeout(5):
            inspect = await http.get(
                f"{emulator.root_url}/_emulator/calls/{call_id}", headers=emulator.auth()
            )
            snapshot = await inspect.json()
        assert inspect.status == 200
        assert snapshot["call_id"] == call_id
        assert snapshot["location"] == call.location
        assert snapshot["ended"] is False
        assert snapshot["sideband_attaches"] == [call_id, call_id]
        assert [r["source"] for r in snapshot["received"]] == [r for r, _ in recorded]
        assert snapshot["received"][2]["event"]["item"]["output"] == ORDER_OUTPUT
        assert snapshot["conversation"] == call.conversation
    finally:
        await first.close()
        await second.close()


async def test_text_modality_streams_output_text(
    emulator: RunningEmulator, http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    """With output_modalities ["text"] the message streams response.output_text.* events."""
    await open_call(http, emulator, browser, {**SESSION, "output_modalities": ["text"]})
    browser.send_user_text("hello emulator")
    browser.send({"type": "response.create"})
    done = await browser.wait_for("response.done", timeout=5)
    types = collapse(types_of(browser.events))
    assert "response.output_text.delta" in types
    assert "response.output_audio_transcript.delta" not in types
    for event in browser.events:
        validate_server_event(event)
    [message] = done["response"]["output"]
    assert message["content"] == [{"type": "output_text", "text": "You said: hello emulator"}]
    assert done["response"]["output_modalities"] == ["text"]


async def test_session_update_is_merged_and_broadcast(
    emulator: RunningEmulator, http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    """session.update merges into the effective session and session.updated reaches everyone."""
    call_id = await open_call(http, emulator, browser, SESSION)
    sideband = await SidebandProbe.connect(http, emulator, call_id)
    try:
        await sideband.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "instructions": "Be brief.",
                    "audio": {"output": {"voice": "cedar"}},
                },
            }
        )
        updated = await sideband.wait_for("session.updated")
        from_browser = await browser.wait_for("session.updated", timeout=5)
        assert updated == from_browser
        validate_server_event(updated)
        call = emulator.registry.get(call_id)
        assert call is not None
        assert updated["session"] == call.session
        assert call.session["instructions"] == "Be brief."
        assert call.session["tools"] == [LOOKUP_ORDER]
        assert call.session["audio"]["output"]["voice"] == "cedar"
        assert call.session["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    finally:
        await sideband.close()


async def test_cancel_ends_function_call_incomplete(
    http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    """response.cancel mid-call: arguments.done still fires, the item ends incomplete,
    response.done is cancelled, nothing follows it, and a new response can start."""
    emulator = await _emulator(token_interval=0.05)
    try:
        await open_call(http, emulator, browser, SESSION)
        browser.send_user_text("lookup_order " + json.dumps({"order_id": "42" * 20}))
        browser.send({"type": "response.create"})
        first_delta = await browser.wait_for("response.function_call_arguments.delta", timeout=5)
        browser.send({"type": "response.cancel", "response_id": first_delta["response_id"]})
        done = await browser.wait_for("response.done", timeout=5)
        await asyncio.sleep(0.2)  # long enough for several more deltas had it not stopped
        assert browser.events[-2] is done
        assert browser.events[-1]["type"] == "rate_limits.updated"
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"] == {
            "type": "cancelled",
            "reason": "client_cancelled",
        }
        [item] = done["response"]["output"]
        assert item["status"] == "incomplete"
        args_done = await browser.wait_for("response.function_call_arguments.done", timeout=1)
        assert args_done["arguments"] == item["arguments"]
        assert len(item["arguments"]) < len(json.dumps({"order_id": "42" * 20}))
        for event in browser.events:
            validate_server_event(event)

        browser.send({"type": "response.create"})
        again = await browser.wait_for(
            "response.created", lambda e: e["response"]["id"] != done["response"]["id"], timeout=5
        )
        assert again["response"]["status"] == "in_progress"
        browser.send({"type": "response.cancel"})
        await browser.wait_for(
            "response.done", lambda e: e["response"]["id"] == again["response"]["id"], timeout=5
        )
    finally:
        await emulator.close()


async def test_hangup_closes_sideband_and_peer(
    emulator: RunningEmulator, http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    """Hangup answers 200, closes each sideband with 1000, the peer, and records the reason."""
    call_id = await open_call(http, emulator, browser, SESSION)
    sideband = await SidebandProbe.connect(http, emulator, call_id)
    async with asyncio.timeout(5):
        response = await http.post(
            f"{emulator.base_url}/realtime/calls/{call_id}/hangup",
            headers={**emulator.auth(), "Content-Type": "application/json"},
        )
    assert response.status == 200
    closing = await sideband.wait_closed()
    assert closing.type is aiohttp.WSMsgType.CLOSE
    assert closing.data == 1000
    await sideband.close()
    call = emulator.registry.get(call_id)
    assert call is not None
    assert (call.ended, call.end_reason) == (True, "hangup")
    await browser.wait_connection_state("closed", timeout=5)
    async with asyncio.timeout(5):
        again = await http.post(
            f"{emulator.base_url}/realtime/calls/{call_id}/hangup", headers=emulator.auth()
        )
    assert again.status == 200  # hanging up an ended call is a no-op


async def test_browser_closing_ends_call(
    emulator: RunningEmulator, http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    """When the browser's peer closes, the call ends with reason peer_closed and sidebands close."""
    call_id = await open_call(http, emulator, browser, SESSION)
    sideband = await SidebandProbe.connect(http, emulator, call_id)
    await browser.close()
    closing = await sideband.wait_closed()
    assert closing.data == 1000
    await sideband.close()
    call = emulator.registry.get(call_id)
    assert call is not None
    assert (call.ended, call.end_reason) == (True, "peer_closed")


async def test_app_cleanup_ends_every_call(
    http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    """Stopping the app closes sidebands (1001 going away), ends calls (reason shutdown),
    and closes the peer, without waiting for the server's shutdown timeout."""
    emulator = await _emulator(token_interval=0.05)
    try:
        call_id = await open_call(http, emulator, browser, SESSION)
        sideband = await SidebandProbe.connect(http, emulator, call_id)
        browser.send_user_text("a response still streaming while the app stops")
        browser.send({"type": "response.create"})
        await sideband.wait_for("response.created")
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with asyncio.timeout(5):
            await emulator.close()
        assert loop.time() - started < 2
        closing = await sideband.wait_closed()
        assert closing.data == 1001
        await sideband.close()
        call = emulator.registry.get(call_id)
        assert call is not None
        assert (call.ended, call.end_reason) == (True, "shutdown")
        await browser.wait_connection_state("closed", timeout=5)
        await emulator.close()  # idempotent
    finally:
        await emulator.close()


async def test_sideband_gets_nothing_on_attach_unless_replay(
    http: aiohttp.ClientSession,
) -> None:
    """By default a sideband receives nothing on attach; with the replay option, session.created."""
    for replay in (False, True):
        emulator = await _emulator(replay_session_created_to_sideband=replay)
        browser = FakeBrowser()
        try:
            call_id = await open_call(http, emulator, browser, SESSION)
            sideband = await SidebandProbe.connect(http, emulator, call_id)
            browser.send({"type": "conversation.item.delete", "item_id": "nope"})
            await browser.wait_for("error", timeout=5)  # a marker: the browser's event got handled
            browser.send_user_text("marker")
            await sideband.wait_for("conversation.item.done")
            first = sideband.events[0]["type"]
            assert first == ("session.created" if replay else "conversation.item.added")
            if replay:
                validate_server_event(sideband.events[0])
            await sideband.close()
        finally:
            await browser.close()
            await emulator.close()


async def test_a_sideband_upgraded_as_the_call_ends_is_closed(
    emulator: RunningEmulator, http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    """A handshake that passed the checks just before the call ended is closed with the
    call's close code instead of lingering on an ended call."""
    call_id = await open_call(http, emulator, browser, SESSION)
    call = emulator.registry.get(call_id)
    assert call is not None
    await call.end("provider_ended", close_code=1001)
    link = call.attach_sideband(call_id)  # what the handler does right after the upgrade
    request = link.outbox.get_nowait()
    assert getattr(request, "code", None) == 1001
    assert call.sidebands == [] and call.sideband_attaches == []
