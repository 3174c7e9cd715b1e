"""Input audio transcription: what the emulator "hears" in a voice turn, and how it says so.

Voice turns come from a real aiortc peer whose (gated) microphone speaks only once the
test has queued the turn's words, or from ``input_audio_buffer.append`` on a sideband;
the events are checked on the data channel and on a sideband, and against the SDK's types.
"""

from __future__ import annotations

import asyncio
import base64
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import numpy as np
import pytest
from numpy.typing import NDArray

from emulator import EmulatorSettings
from tests.conftest import assert_conformant
from tests.support.audio import ScriptedMicTrack, silence, speech_like_signal
from tests.support.broker_server import PROVIDER_KEY
from tests.support.browser import FakeBrowser
from tests.support.conformance import validate_server_event
from tests.support.hearing import (
    GPT_4O_TRANSCRIBE,
    WHISPER,
    hear,
    mishear,
    transcribing,
)
from tests.support.servers import (
    RunningEmulator,
    SidebandProbe,
    offer_form,
    open_call,
    request_json,
    start_emulator,
)

DELTA = "conversation.item.input_audio_transcription.delta"
COMPLETED = "conversation.item.input_audio_transcription.completed"
FAILED = "conversation.item.input_audio_transcription.failed"
TRANSCRIPTION_EVENTS = {DELTA, COMPLETED, FAILED}
NO_AUTO_RESPONSE = {"type": "server_vad", "create_response": False}


@pytest.fixture
async def emulator() -> AsyncIterator[RunningEmulator]:
    # No speech synthesis: these tests listen to the events, not to the model's voice.
    running = await start_emulator(EmulatorSettings(api_key=PROVIDER_KEY, speech="off"))
    yield running
    await running.close()
    assert_conformant(running)


def pcm24k(*segments: NDArray[np.int16]) -> str:
    """48 kHz segments → one base64 PCM16 24 kHz chunk (the session's input format)."""
    samples = np.concatenate(segments)[::2]
    return base64.b64encode(samples.astype("<i2").tobytes()).decode()


ONE_UTTERANCE = pcm24k(silence(0.3), speech_like_signal(0.6), silence(0.6))


def of_type(events: list[dict[str, Any]], *types: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] in types]


def about(item_id: str) -> Any:
    return lambda event: event.get("item_id") == item_id


@asynccontextmanager
async def voice_call(
    http: aiohttp.ClientSession, emulator: RunningEmulator, session: dict[str, Any]
) -> AsyncIterator[tuple[FakeBrowser, asyncio.Event, str, SidebandProbe]]:
    """A call whose microphone says one utterance once the given gate is set, with a
    sideband on it; both closed on leaving."""
    gate = asyncio.Event()
    mic = ScriptedMicTrack([silence(0.3), speech_like_signal(0.8), silence(0.6)], gate=gate)
    browser = FakeBrowser(mic=mic)
    try:
        call_id = await open_call(http, emulator, browser, session)
        sideband = await SidebandProbe.connect(http, emulator, call_id)
        try:
            yield browser, gate, call_id, sideband
        finally:
            await sideband.close()
    finally:
        await browser.close()


async def settle(probe: SidebandProbe) -> None:
    """Round-trip a no-op session.update: every client event before it has been processed."""
    before = len(of_type(probe.events, "session.updated"))
    await probe.send({"type": "session.update", "session": {"type": "realtime"}})
    await probe.wait_for(
        "session.updated", lambda _: len(of_type(probe.events, "session.updated")) > before
    )


async def retrieve(probe: SidebandProbe, item_id: str) -> dict[str, Any]:
    before = len(of_type(probe.events, "conversation.item.retrieved"))
    await probe.send({"type": "conversation.item.retrieve", "item_id": item_id})
    retrieved = await probe.wait_for(
        "conversation.item.retrieved",
        lambda _: len(of_type(probe.events, "conversation.item.retrieved")) > before,
    )
    assert retrieved["item"]["id"] == item_id
    item: dict[str, Any] = retrieved["item"]
    return item


async def append_turn(probe: SidebandProbe) -> str:
    """Speak one utterance into the buffer over the sideband; return its committed item id."""
    before = len(of_type(probe.events, "input_audio_buffer.committed"))
    await probe.send({"type": "input_audio_buffer.append", "audio": ONE_UTTERANCE})
    committed = await probe.wait_for(
        "input_audio_buffer.committed",
        lambda _: len(of_type(probe.events, "input_audio_buffer.committed")) > before,
    )
    return str(committed["item_id"])


@pytest.mark.parametrize(
    ("config", "usage_type"), [(WHISPER, "duration"), (GPT_4O_TRANSCRIBE, "tokens")]
)
async def test_a_voice_turn_is_transcribed_after_its_item(
    emulator: RunningEmulator,
    http: aiohttp.ClientSession,
    config: dict[str, Any],
    usage_type: str,
) -> None:
    """The queued words arrive on every connection as deltas then ``completed``, after the
    user item (which still says ``transcript: null``); usage follows the model kind."""
    text = "Where is order 42, please?"
    session = transcribing(config)
    async with voice_call(http, emulator, session) as (browser, gate, call_id, sideband):
        assert await hear(http, emulator, call_id, text) == 1
        gate.set()
        committed = await browser.wait_for("input_audio_buffer.committed", timeout=10)
        item_id = committed["item_id"]
        completed = await browser.wait_for(COMPLETED, about(item_id), timeout=10)
        on_sideband = await sideband.wait_for(COMPLETED, about(item_id))
        assert on_sideband["event_id"] == completed["event_id"]

        user_done = await browser.wait_for(
            "conversation.item.done", lambda e: e["item"]["id"] == item_id
        )
        assert user_done["item"]["content"] == [{"type": "input_audio", "transcript": None}]
        deltas = of_type(browser.events, DELTA)
        assert deltas and all(d["item_id"] == item_id and d["content_index"] == 0 for d in deltas)
        assert browser.events.index(user_done) < browser.events.index(deltas[0])
        assert browser.events.index(deltas[-1]) < browser.events.index(completed)
        assert "".join(d["delta"] for d in deltas) == text
        if config is WHISPER:
            assert len(deltas) == 1  # whisper-1 sends the whole text at once
        else:
            assert [d["delta"] for d in deltas][:3] == ["Where", " is", " order"]
        assert of_type(sideband.events, DELTA) == deltas
        assert completed["transcript"] == text
        assert completed["content_index"] == 0
        for event in [*deltas, completed]:
            validate_server_event(event)

        # The response to the turn counts the same committed audio (emulator/_usage.py).
        done = await browser.wait_for("response.done", timeout=10)
        audio_tokens = done["response"]["usage"]["input_token_details"]["audio_tokens"]
        usage = completed["usage"]
        assert usage["type"] == usage_type
        if usage_type == "duration":
            assert isinstance(usage["seconds"], int)
            assert usage["seconds"] >= 1
            assert abs(usage["seconds"] - audio_tokens / 10) <= 0.6
        else:
            assert usage == {
                "type": "tokens",
                "total_tokens": audio_tokens + math.ceil(len(text) / 4),
                "input_tokens": audio_tokens,
                "input_token_details": {"text_tokens": 0, "audio_tokens": audio_tokens},
                "output_tokens": math.ceil(len(text) / 4),
            }

        # The item keeps the words: a retrieve shows them.
        item = await retrieve(sideband, item_id)
        assert item["content"][0]["transcript"] == text


async def test_with_nothing_queued_the_default_text_is_heard(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    session = transcribing(GPT_4O_TRANSCRIBE)
    async with voice_call(http, emulator, session) as (browser, gate, call_id, sideband):
        gate.set()
        committed = await browser.wait_for("input_audio_buffer.committed", timeout=10)
        completed = await sideband.wait_for(COMPLETED, about(committed["item_id"]), timeout=10)
        assert completed["transcript"] == emulator.settings.heard_default


@pytest.mark.parametrize("code", [None, "DeploymentNotFound"])
async def test_a_turn_can_fail_to_transcribe(
    emulator: RunningEmulator, http: aiohttp.ClientSession, code: str | None
) -> None:
    """``failed`` in the recorded shape, no deltas or ``completed``; the words stay null."""
    session = transcribing(WHISPER)
    async with voice_call(http, emulator, session) as (browser, gate, call_id, sideband):
        assert await mishear(http, emulator, call_id, code) == 1
        gate.set()
        committed = await browser.wait_for("input_audio_buffer.committed", timeout=10)
        item_id = committed["item_id"]
        failed = await browser.wait_for(FAILED, about(item_id), timeout=10)
        validate_server_event(failed)
        assert failed["content_index"] == 0
        assert failed["error"] == {
            "type": "server_error",
            "code": code,
            "message": f"Input transcription failed for item '{item_id}'.",
            "param": None,
        }
        await sideband.wait_for(FAILED, about(item_id))
        await browser.wait_for("response.done", timeout=10)
        item = await retrieve(sideband, item_id)
        assert item["content"][0]["transcript"] is None
        assert not of_type(browser.events, DELTA, COMPLETED)


async def test_off_by_default_and_switched_by_session_update(
    emulator: RunningEmulator, http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    """Every audio turn takes its words from the queue; only turns committed while the
    session transcribes report them. ``session.update`` turns it on and off mid-call."""
    session = {"type": "realtime", "audio": {"input": {"turn_detection": NO_AUTO_RESPONSE}}}
    call_id = await open_call(http, emulator, browser, session)
    created = await browser.wait_for("session.created")
    assert created["session"]["audio"]["input"]["transcription"] is None
    sideband = await SidebandProbe.connect(http, emulator, call_id)
    try:
        assert await hear(http, emulator, call_id, "one", "two", "three", "four") == 4
        untranscribed = [await append_turn(sideband)]

        update = transcribing({"model": "gpt-4o-mini-transcribe", "language": "en"})
        await sideband.send({"type": "session.update", "session": update})
        updated = await sideband.wait_for("session.updated")
        assert updated["session"]["audio"]["input"]["transcription"] == {
            "model": "gpt-4o-mini-transcribe",
            "language": "en",
            "prompt": None,
        }
        second = await append_turn(sideband)
        completed = await sideband.wait_for(COMPLETED, about(second), timeout=10)
        assert completed["transcript"] == "two"

        await sideband.send({"type": "session.update", "session": transcribing(None)})
        await settle(sideband)
        untranscribed.append(await append_turn(sideband))
        await sideband.send({"type": "session.update", "session": transcribing(WHISPER)})
        fourth = await append_turn(sideband)
        completed = await sideband.wait_for(COMPLETED, about(fourth), timeout=10)
        assert completed["transcript"] == "four"
        assert completed["usage"]["type"] == "duration"

        reported = {e["item_id"] for e in of_type(sideband.events, *TRANSCRIPTION_EVENTS)}
        assert reported == {second, fourth}
        for item_id in untranscribed:
            item = await retrieve(sideband, item_id)
            assert item["content"][0]["transcript"] is None
    finally:
        await sideband.close()


async def test_typed_text_is_not_transcribed_and_leaves_the_queue_alone(
    emulator: RunningEmulator, http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    session = transcribing(GPT_4O_TRANSCRIBE)
    session["audio"]["input"]["turn_detection"] = NO_AUTO_RESPONSE
    call_id = await open_call(http, emulator, browser, session)
    sideband = await SidebandProbe.connect(http, emulator, call_id)
    try:
        await hear(http, emulator, call_id, "spoken words")
        browser.send_user_text("typed words")
        browser.send({"type": "response.create"})
        text_item = await sideband.wait_for(
            "conversation.item.done", lambda e: e["item"]["role"] == "user"
        )
        await sideband.wait_for("response.done", timeout=10)
        spoken = await append_turn(sideband)
        completed = await sideband.wait_for(COMPLETED, about(spoken), timeout=10)
        assert completed["transcript"] == "spoken words"
        reported = {e["item_id"] for e in of_type(sideband.events, *TRANSCRIPTION_EVENTS)}
        assert text_item["item"]["id"] not in reported
    finally:
        await sideband.close()


async def test_logprobs_when_the_session_includes_them(
    emulator: RunningEmulator, http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    session = transcribing(GPT_4O_TRANSCRIBE, include=["item.input_audio_transcription.logprobs"])
    session["audio"]["input"]["turn_detection"] = NO_AUTO_RESPONSE
    call_id = await open_call(http, emulator, browser, session)
    sideband = await SidebandProbe.connect(http, emulator, call_id)
    try:
        await hear(http, emulator, call_id, "Hi there")
        item_id = await append_turn(sideband)
        completed = await sideband.wait_for(COMPLETED, about(item_id), timeout=10)
        deltas = of_type(sideband.events, DELTA)
        assert [d["logprobs"] for d in deltas] == [
            [{"token": "Hi", "logprob": 0.0, "bytes": list(b"Hi")}],
            [{"token": " there", "logprob": 0.0, "bytes": list(b" there")}],
        ]
        assert [p["token"] for p in completed["logprobs"]] == ["Hi", " there"]
    finally:
        await sideband.close()


@pytest.mark.parametrize(
    ("transcription", "code", "param"),
    [
        ("whisper-1", "invalid_type", "session.audio.input.transcription"),
        ({}, "missing_required_parameter", "session.audio.input.transcription.model"),
        ({"model": ""}, "missing_required_parameter", "session.audio.input.transcription.model"),
        ({"model": 1}, "invalid_type", "session.audio.input.transcription.model"),
        (
            {"model": "whisper-1", "lang": "en"},
            "unknown_parameter",
            "session.audio.input.transcription.lang",
        ),
        (
            {"model": "whisper-1", "keywords": [1]},
            "invalid_type",
            "session.audio.input.transcription.keywords",
        ),
        (
            {"model": "gpt-realtime-whisper", "delay": "soon"},
            "invalid_value",
            "session.audio.input.transcription.delay",
        ),
    ],
)
async def test_a_bad_transcription_config_is_refused(
    emulator: RunningEmulator,
    http: aiohttp.ClientSession,
    browser: FakeBrowser,
    transcription: Any,
    code: str,
    param: str,
) -> None:
    """Refused in a ``session.update`` (an ``error`` event, nothing changes) and at call
    creation (400, the same code and param)."""
    call_id = await open_call(http, emulator, browser, transcribing(WHISPER))
    sideband = await SidebandProbe.connect(http, emulator, call_id)
    try:
        await sideband.send({"type": "session.update", "session": transcribing(transcription)})
        error = await sideband.wait_for("error")
        assert (error["error"]["code"], error["error"]["param"]) == (code, param)
        call = emulator.registry.get(call_id)
        assert call is not None
        assert call.session["audio"]["input"]["transcription"]["model"] == "whisper-1"
    finally:
        await sideband.close()
    other = FakeBrowser()
    try:
        offer = await other.create_offer()
        async with http.post(
            f"{emulator.base_url}/realtime/calls",
            data=offer_form(offer, transcribing(transcription)),
            headers=emulator.auth(),
        ) as response:
            body = await response.json()
        assert response.status == 400
        assert (body["error"]["code"], body["error"]["param"]) == (code, param)
    finally:
        await other.close()


async def test_the_heard_route_queues_in_order(
    emulator: RunningEmulator, http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    call_id = await open_call(http, emulator, browser, {"type": "realtime"})
    path = f"/_emulator/calls/{call_id}/heard"
    status, body = await request_json(http, emulator, "POST", path, {"text": "a"})
    assert (status, body) == (200, {"call_id": call_id, "queued": 1})
    status, body = await request_json(http, emulator, "POST", path, {"text": ["b", "c"]})
    assert (status, body) == (200, {"call_id": call_id, "queued": 3})
    status, body = await request_json(http, emulator, "POST", path, {"fail": True})
    assert (status, body) == (200, {"call_id": call_id, "queued": 4})


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({}, "missing_required_parameter", "text"),
        ([], "invalid_json", None),
        ({"text": "a", "fail": True}, "invalid_value", "text"),
        ({"text": "a", "speaker": "x"}, "unknown_parameter", "speaker"),
        ({"text": ""}, "invalid_value", "text"),
        ({"text": "   "}, "invalid_value", "text"),
        ({"text": "x" * 4097}, "invalid_value", "text"),
        ({"text": 42}, "invalid_type", "text"),
        ({"text": []}, "invalid_value", "text"),
        ({"text": ["ok", None]}, "invalid_type", "text[1]"),
        ({"text": ["ok", ""]}, "invalid_value", "text[1]"),
        ({"fail": False}, "invalid_type", "fail"),
        ({"fail": {"code": ""}}, "invalid_value", "fail.code"),
        ({"fail": {"reason": "x"}}, "unknown_parameter", "fail.reason"),
    ],
)
async def test_the_heard_route_refuses_bad_bodies(
    emulator: RunningEmulator,
    http: aiohttp.ClientSession,
    browser: FakeBrowser,
    body: Any,
    code: str,
    param: str | None,
) -> None:
    call_id = await open_call(http, emulator, browser, {"type": "realtime"})
    path = f"/_emulator/calls/{call_id}/heard"
    status, reply = await request_json(http, emulator, "POST", path, body)
    assert status == 400
    assert (reply["error"]["code"], reply["error"]["param"]) == (code, param)
    # Nothing was queued: the next good request is the first entry.
    status, reply = await request_json(http, emulator, "POST", path, {"text": "a"})
    assert (status, reply["queued"]) == (200, 1)


async def test_the_heard_route_needs_the_key_and_a_known_call(
    emulator: RunningEmulator, http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    call_id = await open_call(http, emulator, browser, {"type": "realtime"})
    status, reply = await request_json(
        http, emulator, "POST", "/_emulator/calls/rtc_u1_nosuchcall/heard", {"text": "a"}
    )
    assert (status, reply["error"]["code"]) == (404, "call_id_not_found")
    status, reply = await request_json(
        http,
        emulator,
        "POST",
        f"/_emulator/calls/{call_id}/heard",
        {"text": "a"},
        headers={"Authorization": "Bearer sk-wrong"},
    )
    assert (status, reply["error"]["code"]) == (401, "invalid_api_key")
    assert "sk-wrong" not in str(reply)
