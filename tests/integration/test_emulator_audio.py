"""Audio over a real WebRTC call: server VAD on the browser's microphone, and model speech.

The browser is an aiortc peer whose microphone plays a scripted signal with the energy
envelope of speech; the emulator's outbound track is measured frame by frame.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from statistics import median

import aiohttp
import pytest

from emulator import EmulatorSettings
from emulator.audio import espeak_available
from tests.conftest import assert_conformant, skip_or_fail
from tests.support.audio import ScriptedMicTrack, silence, speech_like_signal
from tests.support.broker_server import PROVIDER_KEY
from tests.support.browser import FakeBrowser
from tests.support.servers import RunningEmulator, open_call, start_emulator

LEAD_IN_S = 0.6
SPEECH_S = 1.2
SILENT_DBFS = -60.0


@pytest.fixture
async def emulator() -> AsyncIterator[RunningEmulator]:
    if not espeak_available():
        skip_or_fail("espeak-ng is not installed (apt-get install espeak-ng)")
    running = await start_emulator(EmulatorSettings(api_key=PROVIDER_KEY, speech="espeak-ng"))
    yield running
    await running.close()
    assert_conformant(running)


async def speaking_browser(lead_in_s: float, speech_s: float) -> FakeBrowser:
    mic = ScriptedMicTrack([silence(lead_in_s), speech_like_signal(speech_s), silence(0.5)])
    return FakeBrowser(mic=mic)


async def test_speech_on_the_microphone_gets_a_spoken_answer(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    """Server VAD hears the utterance; the automatic reply is audible exactly while the
    output audio buffer is started, and silent after it stopped."""
    browser = await speaking_browser(LEAD_IN_S, SPEECH_S)
    try:
        await open_call(http, emulator, browser, {"type": "realtime"})
        started = await browser.wait_for("input_audio_buffer.speech_started", timeout=10)
        stopped = await browser.wait_for("input_audio_buffer.speech_stopped", timeout=10)
        committed = await browser.wait_for("input_audio_buffer.committed", timeout=5)
        assert started["item_id"] == stopped["item_id"] == committed["item_id"]
        # The VAD clock counts received audio: the speech began LEAD_IN_S in, and the
        # prefix padding (300 ms) and the silence window (200 ms) are applied around it.
        # Loose bounds: the call's first frames may be lost while ICE settles.
        assert 0 <= started["audio_start_ms"] <= LEAD_IN_S * 1000
        speech_ms = stopped["audio_end_ms"] - started["audio_start_ms"]
        assert SPEECH_S * 1000 + 200 <= speech_ms <= SPEECH_S * 1000 + 200 + 300 + 100

        user_item = await browser.wait_for(
            "conversation.item.done", lambda e: e["item"]["id"] == committed["item_id"]
        )
        assert user_item["item"]["content"] == [{"type": "input_audio", "transcript": None}]
        done = await browser.wait_for("response.done", timeout=10)
        [message] = done["response"]["output"]
        assert message["content"][0]["transcript"] == "I heard you."
        response_id = done["response"]["id"]

        playing = await browser.wait_for("output_audio_buffer.started", timeout=5)
        ended = await browser.wait_for("output_audio_buffer.stopped", timeout=10)
        assert playing["response_id"] == ended["response_id"] == response_id
        t_start, t_stop = browser.arrival_of(playing), browser.arrival_of(ended)
        assert t_stop - t_start > 0.3  # "I heard you." takes most of a second to say
        await asyncio.sleep(0.5)

        during = browser.inbound_levels_between(t_start + 0.1, t_stop - 0.1)
        after = browser.inbound_levels_between(t_stop + 0.2, t_stop + 0.5)
        assert len(during) >= 5 and len(after) >= 5
        assert max(during) > -30.0
        assert median(during) > SILENT_DBFS
        assert max(after) < SILENT_DBFS
    finally:
        await browser.close()


async def test_talking_over_the_model_clears_its_audio(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    """Barge-in: speech while the model talks cuts its audio off (``cleared``, no
    ``stopped``), and the outbound track goes quiet."""
    browser = await speaking_browser(2.0, 0.8)
    try:
        await open_call(http, emulator, browser, {"type": "realtime"})
        browser.send_user_text("tell me " + "something long " * 20)
        browser.send({"type": "response.create"})
        playing = await browser.wait_for("output_audio_buffer.started", timeout=5)
        await browser.wait_for("input_audio_buffer.speech_started", timeout=10)
        cleared = await browser.wait_for("output_audio_buffer.cleared", timeout=5)
        assert cleared["response_id"] == playing["response_id"]
        t_cleared = browser.arrival_of(cleared)
        await asyncio.sleep(0.5)
        assert not any(
            e["type"] == "output_audio_buffer.stopped"
            and e["response_id"] == playing["response_id"]
            for e in browser.events
        )
        assert max(browser.inbound_levels_between(t_cleared + 0.2, t_cleared + 0.5)) < SILENT_DBFS
    finally:
        await browser.close()


async def test_without_turn_detection_the_client_commits(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    """``turn_detection: null`` turns the VAD off: speech makes no events until the client
    commits the buffer, and no response starts by itself."""
    mic = ScriptedMicTrack([silence(0.3), speech_like_signal(0.6), silence(0.5)])
    browser = FakeBrowser(mic=mic)
    try:
        session = {"type": "realtime", "audio": {"input": {"turn_detection": None}}}
        await open_call(http, emulator, browser, session)
        async with asyncio.timeout(10):
            await mic.finished.wait()
        await asyncio.sleep(0.3)  # the last frames cross the loopback
        types = {e["type"] for e in browser.events}
        assert not types & {"input_audio_buffer.speech_started", "response.created"}
        browser.send({"type": "input_audio_buffer.commit"})
        committed = await browser.wait_for("input_audio_buffer.committed", timeout=5)
        item = await browser.wait_for(
            "conversation.item.done", lambda e: e["item"]["id"] == committed["item_id"]
        )
        assert item["item"]["role"] == "user"
        await asyncio.sleep(0.2)
        assert "response.created" not in {e["type"] for e in browser.events}
    finally:
        await browser.close()
