"""The caller's end of an emulated phone call: the model's speech sink and a spoken turn."""

from __future__ import annotations

import asyncio

import numpy as np

from emulator._phone_line import FRAME_MS, TRAILING_SILENCE_MS, PhoneLine, spoken_turn
from emulator.audio import SAMPLE_RATE, EnergyVad, SpeechStarted, SpeechStopped, VadConfig
from emulator.audio.speech import Clip


def clip(ms: int) -> Clip:
    return Clip(np.full(SAMPLE_RATE * ms // 1000, 1000, dtype=np.int16), "tone")


async def test_a_clip_starts_then_stops_after_its_duration() -> None:
    line = PhoneLine()
    calls: list[str] = []
    stopped = asyncio.Event()

    def on_stop(interrupted: bool) -> None:
        calls.append(f"stop:{interrupted}")
        stopped.set()

    assert line.speak(clip(40), on_start=lambda: calls.append("start"), on_stop=on_stop)
    async with asyncio.timeout(2):
        await stopped.wait()
    assert calls == ["start", "stop:False"]
    assert line.played_ms == [40]


async def test_a_new_clip_or_a_clear_cuts_the_one_playing() -> None:
    line = PhoneLine()
    calls: list[str] = []
    line.speak(
        clip(5000), on_start=lambda: calls.append("a"), on_stop=lambda i: calls.append(f"a:{i}")
    )
    await asyncio.sleep(0)  # the first clip starts on the next loop turn
    line.speak(
        clip(5000), on_start=lambda: calls.append("b"), on_stop=lambda i: calls.append(f"b:{i}")
    )
    assert line.stop_speaking()
    assert not line.stop_speaking()
    await asyncio.sleep(0)
    # The second clip was cut before its first frame: it never started.
    assert calls == ["a", "a:True", "b:True"]


async def test_a_closed_line_plays_nothing() -> None:
    line = PhoneLine()
    calls: list[str] = []
    line.speak(
        clip(5000), on_start=lambda: calls.append("start"), on_stop=lambda i: calls.append("stop")
    )
    line.close()
    await asyncio.sleep(0)
    assert not line.has_audio
    assert not line.speak(clip(10), on_start=lambda: None, on_stop=lambda i: None)
    assert calls == []


def test_a_spoken_turn_is_one_utterance_the_vad_ends() -> None:
    config = VadConfig(silence_duration_ms=500)
    chunks = spoken_turn("lookup order forty two", config.silence_duration_ms)
    assert {chunk.size for chunk in chunks[:-1]} == {SAMPLE_RATE * FRAME_MS // 1000}
    assert not chunks[-1][-SAMPLE_RATE * TRAILING_SILENCE_MS // 1000 :].any()
    vad = EnergyVad(config)
    events = [event for chunk in chunks for event in vad.feed(chunk, SAMPLE_RATE)]
    assert [type(event) for event in events] == [SpeechStarted, SpeechStopped]
