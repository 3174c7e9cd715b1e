"""A retrieved user audio item carries its base64 audio, as the real service's does
(docs/protocol.md §0): the committed duration, in the session's input format, as silence
(emulator/README.md [inferred] 23). Its added/done events carry none."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiortc import MediaStreamTrack
from av import AudioFrame

from tests.support.audio import ScriptedMicTrack, silence, speech_like_signal
from tests.support.browser import FakeBrowser
from tests.support.servers import RunningEmulator, SidebandProbe, open_call

NO_AUTO_RESPONSE = {"type": "server_vad", "create_response": False}


class MutedMic(MediaStreamTrack):
    """A microphone that never sends a frame: the input buffer holds only appended audio."""

    kind = "audio"

    async def recv(self) -> AudioFrame:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def retrieve(sideband: SidebandProbe, item_id: str) -> dict[str, Any]:
    await sideband.send({"type": "conversation.item.retrieve", "item_id": item_id})
    found = await sideband.wait_for(
        "conversation.item.retrieved", lambda e: e["item"]["id"] == item_id
    )
    item: dict[str, Any] = found["item"]
    return item


@asynccontextmanager
async def call_with_sideband(
    http: aiohttp.ClientSession,
    emulator: RunningEmulator,
    browser: FakeBrowser,
    session: dict[str, Any],
) -> AsyncIterator[SidebandProbe]:
    """``browser``'s call with ``session`` and a sideband on it; both closed on leaving."""
    try:
        call_id = await open_call(http, emulator, browser, session)
        sideband = await SidebandProbe.connect(http, emulator, call_id)
        try:
            yield sideband
        finally:
            await sideband.close()
    finally:
        await browser.close()


@pytest.mark.parametrize(
    ("audio_format", "appended", "silent_byte"),
    [
        # 0.5 s of 24 kHz PCM16 is 24,000 bytes; 0.25 s of 8 kHz G.711 is 2,000.
        ({"type": "audio/pcm", "rate": 24000}, b"\x10\x00" * 12_000, 0x00),
        ({"type": "audio/pcmu"}, b"\x7e" * 2_000, 0xFF),
        ({"type": "audio/pcma"}, b"\x54" * 2_000, 0xD5),
    ],
)
async def test_a_committed_append_is_retrieved_with_audio_of_its_length(
    emulator: RunningEmulator,
    http: aiohttp.ClientSession,
    audio_format: dict[str, Any],
    appended: bytes,
    silent_byte: int,
) -> None:
    browser = FakeBrowser(mic=MutedMic())
    session = {
        "type": "realtime",
        "audio": {"input": {"format": audio_format, "turn_detection": None}},
    }
    async with call_with_sideband(http, emulator, browser, session) as sideband:
        await sideband.send(
            {"type": "input_audio_buffer.append", "audio": base64.b64encode(appended).decode()}
        )
        await sideband.send({"type": "input_audio_buffer.commit"})
        committed = await sideband.wait_for("input_audio_buffer.committed")
        item_id = committed["item_id"]
        for type_ in ("conversation.item.added", "conversation.item.done"):
            echoed = await sideband.wait_for(type_, lambda e: e["item"]["id"] == item_id)
            assert echoed["item"]["content"] == [{"type": "input_audio", "transcript": None}]

        item = await retrieve(sideband, item_id)
        [part] = item["content"]
        assert part["type"] == "input_audio" and part["transcript"] is None
        audio = base64.b64decode(part["audio"], validate=True)
        assert audio == bytes([silent_byte]) * len(appended)

        # A client's own audio item is retrieved with the audio it was given.
        own = base64.b64encode(appended[:200]).decode()
        await sideband.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "id": "item_own_audio",
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_audio", "audio": own}],
                },
            }
        )
        await sideband.wait_for("conversation.item.done")
        [own_part] = (await retrieve(sideband, "item_own_audio"))["content"]
        assert own_part["audio"] == own


async def test_a_spoken_turn_is_retrieved_with_audio_of_at_least_its_speech(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    """Server VAD commits the microphone's utterance; the retrieve carries the buffer's
    length in 24 kHz PCM16 (the lead-in, the speech and the closing silence window)."""
    speech_s = 0.8
    mic = ScriptedMicTrack([silence(0.3), speech_like_signal(speech_s), silence(0.6)])
    browser = FakeBrowser(mic=mic)
    session = {"type": "realtime", "audio": {"input": {"turn_detection": NO_AUTO_RESPONSE}}}
    async with call_with_sideband(http, emulator, browser, session) as sideband:
        committed = await browser.wait_for("input_audio_buffer.committed", timeout=10)
        item = await retrieve(sideband, committed["item_id"])
        audio = base64.b64decode(item["content"][0]["audio"], validate=True)
        assert len(audio) % 2 == 0
        assert len(audio) >= speech_s * 24_000 * 2
        assert audio == bytes(len(audio))


async def test_an_answer_too_large_for_the_data_channel_still_reaches_the_sidebands(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    """A browser takes data channel messages of at most 256 KiB (its ``a=max-message-size``),
    and the retrieve of a few seconds of audio is larger. The page goes without that one
    event (emulator/README.md [inferred] 25); the sideband still gets it, and the page the
    events after it. (Once the whole fan-out failed, and the sideband got ``server_error``.)"""
    browser = FakeBrowser(mic=MutedMic())
    session = {"type": "realtime", "audio": {"input": {"turn_detection": None}}}
    async with call_with_sideband(http, emulator, browser, session) as sideband:
        appended = bytes(240_000)  # 5 s of 24 kHz PCM16: 320,000 base64 characters
        await sideband.send(
            {"type": "input_audio_buffer.append", "audio": base64.b64encode(appended).decode()}
        )
        await sideband.send({"type": "input_audio_buffer.commit"})
        item_id = (await sideband.wait_for("input_audio_buffer.committed"))["item_id"]
        item = await retrieve(sideband, item_id)
        assert base64.b64decode(item["content"][0]["audio"]) == appended
        await sideband.send(
            {"type": "conversation.item.delete", "item_id": item_id, "event_id": "event_after"}
        )
        await browser.wait_for("conversation.item.deleted", lambda e: e["item_id"] == item_id)
    assert "conversation.item.retrieved" not in [e["type"] for e in browser.events]
    assert "error" not in [e["type"] for e in browser.events]
