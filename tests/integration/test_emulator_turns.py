"""Turn-taking inside a call: server VAD over appended audio, commits, and session edits
that change turn detection, driven from a sideband with ``input_audio_buffer.append``."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import aiohttp
import numpy as np
from numpy.typing import NDArray

from emulator import EmulatorSettings
from tests.conftest import assert_conformant
from tests.support.audio import silence, speech_like_signal
from tests.support.broker_server import PROVIDER_KEY
from tests.support.browser import FakeBrowser
from tests.support.servers import RunningEmulator, SidebandProbe, open_call, start_emulator

NO_AUTO_RESPONSE = {"type": "server_vad", "create_response": False}


def pcm24k(*segments: NDArray[np.int16]) -> str:
    """48 kHz segments → one base64 PCM16 24 kHz chunk (the session's input format)."""
    samples = np.concatenate(segments)[::2]
    return base64.b64encode(samples.astype("<i2").tobytes()).decode()


async def sideband_call(
    http: aiohttp.ClientSession,
    emulator: RunningEmulator,
    browser: FakeBrowser,
    turn_detection: dict[str, Any] | None,
) -> tuple[str, SidebandProbe]:
    session = {"type": "realtime", "audio": {"input": {"turn_detection": turn_detection}}}
    call_id = await open_call(http, emulator, browser, session)
    return call_id, await SidebandProbe.connect(http, emulator, call_id)


async def set_turn_detection(probe: SidebandProbe, turn_detection: Any) -> None:
    await probe.send(
        {
            "type": "session.update",
            "session": {"type": "realtime", "audio": {"input": {"turn_detection": turn_detection}}},
        }
    )


def of_type(events: list[dict[str, Any]], type_: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == type_]


async def settle(probe: SidebandProbe, marker: str = "session.updated") -> None:
    """Round-trip a no-op session.update: every event before it has been processed."""
    before = len(of_type(probe.events, marker))
    await probe.send({"type": "session.update", "session": {"type": "realtime"}})
    await probe.wait_for(marker, lambda _: len(of_type(probe.events, marker)) > before)


async def test_two_utterances_in_one_append_are_two_turns(
    emulator: RunningEmulator, http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    """A chunk holding two utterances yields two complete started/stopped/committed turns,
    and the recorder keeps the append's size, not its audio."""
    call_id, sideband = await sideband_call(http, emulator, browser, NO_AUTO_RESPONSE)
    try:
        chunk = pcm24k(
            silence(0.3),
            speech_like_signal(0.5),
            silence(0.6),
            speech_like_signal(0.5),
            silence(0.6),
        )
        await sideband.send({"type": "input_audio_buffer.append", "audio": chunk})
        await settle(sideband)
        started = of_type(sideband.events, "input_audio_buffer.speech_started")
        stopped = of_type(sideband.events, "input_audio_buffer.speech_stopped")
        committed = of_type(sideband.events, "input_audio_buffer.committed")
        assert len(started) == len(stopped) == len(committed) == 2
        for begin, end, commit in zip(started, stopped, committed, strict=True):
            assert begin["item_id"] == end["item_id"] == commit["item_id"]
            assert begin["audio_start_ms"] < end["audio_end_ms"]
        assert stopped[0]["audio_end_ms"] <= started[1]["audio_start_ms"]
        call = emulator.registry.get(call_id)
        assert call is not None
        [append] = [
            r.event for r in call.received if r.event["type"] == "input_audio_buffer.append"
        ]
        assert append["audio"] == f"<{len(chunk)} base64 characters>"
    finally:
        await sideband.close()


async def test_constant_noise_is_cut_once_and_cannot_retake_the_turn(
    emulator: RunningEmulator, http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    """An utterance is forced to stop after 15 s; noise that never pauses gets no new turn."""
    _, sideband = await sideband_call(http, emulator, browser, NO_AUTO_RESPONSE)
    try:
        second = speech_like_signal(1.0)
        noise = np.full(48_000, 6000, dtype=np.int16)  # one second of loud DC "hum"
        noise[::2] = -6000
        for _ in range(20):
            await sideband.send({"type": "input_audio_buffer.append", "audio": pcm24k(noise)})
        await settle(sideband)
        assert len(of_type(sideband.events, "input_audio_buffer.speech_started")) == 1
        [stopped] = of_type(sideband.events, "input_audio_buffer.speech_stopped")
        assert 14_000 <= stopped["audio_end_ms"] <= 16_000
        # After a pause, speech is heard again.
        await sideband.send(
            {
                "type": "input_audio_buffer.append",
                "audio": pcm24k(silence(0.5), second, silence(0.5)),
            }
        )
        await settle(sideband)
        assert len(of_type(sideband.events, "input_audio_buffer.speech_started")) == 2
    finally:
        await sideband.close()


async def test_turning_detection_on_mid_speech_starts_from_silence(
    emulator: RunningEmulator, http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    """Speech heard while detection was off never ends in an unmatched speech_stopped."""
    _, sideband = await sideband_call(http, emulator, browser, None)
    try:
        await sideband.send(
            {"type": "input_audio_buffer.append", "audio": pcm24k(speech_like_signal(0.5))}
        )
        await set_turn_detection(sideband, NO_AUTO_RESPONSE)
        await sideband.send({"type": "input_audio_buffer.append", "audio": pcm24k(silence(0.6))})
        await settle(sideband)
        types = {e["type"] for e in sideband.events}
        assert not types & {
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
            "response.created",
        }
    finally:
        await sideband.close()


async def test_turn_detection_without_a_type_is_refused(
    emulator: RunningEmulator, http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    """A partial turn_detection would silently switch detection off; it is an error instead."""
    call_id, sideband = await sideband_call(http, emulator, browser, NO_AUTO_RESPONSE)
    try:
        await set_turn_detection(sideband, {"silence_duration_ms": 800})
        error = await sideband.wait_for("error")
        assert error["error"]["code"] == "missing_required_parameter"
        assert error["error"]["param"] == "session.audio.input.turn_detection.type"
        call = emulator.registry.get(call_id)
        assert call is not None
        assert call.session["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    finally:
        await sideband.close()


async def test_a_null_audio_output_does_not_wedge_responses(
    emulator: RunningEmulator, http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    """``audio.output: null`` is allowed; responses still complete, one after another."""
    _, sideband = await sideband_call(http, emulator, browser, NO_AUTO_RESPONSE)
    try:
        await sideband.send(
            {"type": "session.update", "session": {"type": "realtime", "audio": {"output": None}}}
        )
        for count in (1, 2):
            await sideband.send({"type": "response.create"})
            await sideband.wait_for(
                "response.done",
                lambda _, n=count: len(of_type(sideband.events, "response.done")) == n,
            )
        done = of_type(sideband.events, "response.done")
        assert [d["response"]["status"] for d in done] == ["completed", "completed"]
        assert not of_type(sideband.events, "error")
    finally:
        await sideband.close()


async def test_audio_stops_only_after_response_done(
    http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    """Even when the audio plays out before the transcript has streamed, the buffer's
    ``stopped`` comes after ``response.done`` (as on the service)."""
    emulator = await start_emulator(
        EmulatorSettings(api_key=PROVIDER_KEY, token_interval=0.4, speech="tone")
    )
    try:
        await open_call(http, emulator, browser, {"type": "realtime"})
        browser.send_user_text("hi there friend")
        browser.send({"type": "response.create"})
        stopped = await browser.wait_for("output_audio_buffer.stopped", timeout=10)
        done = await browser.wait_for("response.done", timeout=1)
        assert browser.events.index(done) < browser.events.index(stopped)
        assert stopped["response_id"] == done["response"]["id"]
        await asyncio.sleep(0.2)
        assert len(of_type(browser.events, "output_audio_buffer.stopped")) == 1
    finally:
        await emulator.close()
    assert_conformant(emulator)
