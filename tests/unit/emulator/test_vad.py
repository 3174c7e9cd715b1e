"""The energy VAD: server_vad timing semantics, on synthetic audio, with no real time."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from emulator.audio import EnergyVad, SpeechStarted, SpeechStopped, VadConfig, VadEvent
from emulator.audio.vad import DEBOUNCE_MS, MAX_UTTERANCE_MS, SEMANTIC_VAD_SILENCE_MS, WINDOW_MS
from tests.support.audio import silence, speech_like_signal

RATE = 48000


def feed_all(
    vad: EnergyVad, samples: NDArray[np.int16], rate: int = RATE, chunk_ms: int = 20
) -> list[VadEvent]:
    """Feed in WebRTC-sized chunks and collect every event."""
    events: list[VadEvent] = []
    size = rate * chunk_ms // 1000
    for start in range(0, samples.size, size):
        events += vad.feed(samples[start : start + size], rate)
    return events


def burst(
    rate: int = RATE, before: float = 0.5, speech: float = 1.0, after: float = 1.0
) -> NDArray[np.int16]:
    return np.concatenate(
        [silence(before, rate), speech_like_signal(speech, rate), silence(after, rate)]
    )


def test_silence_gives_no_events() -> None:
    vad = EnergyVad(VadConfig())
    assert feed_all(vad, silence(3.0)) == []
    assert not vad.in_speech
    assert vad.elapsed_ms == 3000


def test_one_burst_gives_one_start_and_one_stop() -> None:
    """audio_start_ms = onset - prefix; audio_end_ms = end of speech + silence_duration."""
    config = VadConfig(prefix_padding_ms=300, silence_duration_ms=200)
    vad = EnergyVad(config)
    events = feed_all(vad, burst())
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]
    start, stop = events
    assert isinstance(start, SpeechStarted) and isinstance(stop, SpeechStopped)
    assert abs(start.audio_start_ms - (500 - 300)) <= WINDOW_MS
    assert abs(stop.audio_end_ms - (1500 + 200)) <= WINDOW_MS
    assert not vad.in_speech


def test_start_is_reported_after_the_debounce_and_stop_after_the_silence() -> None:
    """The events come out of the feed that completes them, not earlier."""
    vad = EnergyVad(VadConfig(silence_duration_ms=300))
    assert vad.feed(silence(0.5), RATE) == []
    speech = speech_like_signal(1.0)
    debounce = RATE * (DEBOUNCE_MS - WINDOW_MS) // 1000
    assert vad.feed(speech[:debounce], RATE) == []
    assert not vad.in_speech
    assert vad.feed(speech[debounce:], RATE) == [SpeechStarted(audio_start_ms=200)]
    assert vad.in_speech
    assert vad.feed(silence(0.29), RATE) == []
    assert vad.feed(silence(0.01), RATE) == [SpeechStopped(audio_end_ms=1800)]


def test_prefix_padding_is_clamped_at_zero() -> None:
    vad = EnergyVad(VadConfig(prefix_padding_ms=300))
    events = feed_all(vad, burst(before=0.1))
    assert events[0] == SpeechStarted(audio_start_ms=0)


def test_a_click_does_not_start_speech() -> None:
    """30 ms of loud audio is shorter than the debounce."""
    vad = EnergyVad(VadConfig())
    assert feed_all(vad, burst(speech=0.03)) == []


def test_threshold_maps_to_an_energy_level() -> None:
    """A -45 dBFS voice is below 0.5 (-40 dBFS) but above 0.2 (-52 dBFS)."""
    assert VadConfig(threshold=0.5).threshold_dbfs == -40.0
    assert VadConfig(threshold=0.0).threshold_dbfs == -60.0
    assert VadConfig(threshold=7.0).threshold_dbfs == -20.0
    quiet = np.concatenate([silence(0.5), speech_like_signal(1.0, level_dbfs=-45), silence(1)])
    assert feed_all(EnergyVad(VadConfig(threshold=0.5)), quiet) == []
    caught = feed_all(EnergyVad(VadConfig(threshold=0.2)), quiet)
    assert [type(e) for e in caught] == [SpeechStarted, SpeechStopped]


def test_chunking_and_sample_rate_do_not_change_the_result() -> None:
    """Odd-sized chunks at 48 kHz and 20 ms chunks at 24 kHz give the 20 ms/48 kHz result."""
    reference = feed_all(EnergyVad(VadConfig()), burst())

    samples = burst()
    rng = np.random.default_rng(7)
    vad = EnergyVad(VadConfig())
    odd: list[VadEvent] = []
    position = 0
    for _ in range(samples.size):  # bounded: each step consumes at least one sample
        if position >= samples.size:
            break
        size = int(rng.integers(1, 2000))
        odd += vad.feed(samples[position : position + size], RATE)
        position += size
    assert odd == reference

    at_24k = EnergyVad(VadConfig())
    assert feed_all(at_24k, burst(rate=24000), rate=24000) == reference
    assert at_24k.elapsed_ms == 2500


def test_rates_not_divisible_by_100_keep_an_exact_clock() -> None:
    vad = EnergyVad(VadConfig())
    vad.feed(silence(1.0, 22050), 22050)
    vad.feed(silence(0.5, 24000), 24000)
    assert vad.elapsed_ms == 1500
    assert vad.feed(np.zeros(0, dtype=np.int16), 8000) == []


def test_reconfigure_keeps_the_clock() -> None:
    vad = EnergyVad(VadConfig(threshold=0.5))
    quiet = np.concatenate([speech_like_signal(1.0, level_dbfs=-45), silence(1.0)])
    assert feed_all(vad, quiet) == []
    assert vad.elapsed_ms == 2000
    vad.reconfigure(VadConfig(threshold=0.2, prefix_padding_ms=100, silence_duration_ms=500))
    assert vad.elapsed_ms == 2000
    assert vad.config.silence_duration_ms == 500
    events = feed_all(vad, quiet)
    assert events == [SpeechStarted(audio_start_ms=1900), SpeechStopped(audio_end_ms=3500)]
    assert vad.elapsed_ms == 4000


def test_reset_forgets_the_utterance_but_not_the_clock() -> None:
    vad = EnergyVad(VadConfig(prefix_padding_ms=300))
    events = feed_all(vad, np.concatenate([silence(0.5), speech_like_signal(0.5)]))
    assert events == [SpeechStarted(audio_start_ms=200)]
    vad.reset()
    assert not vad.in_speech
    assert vad.elapsed_ms == 1000
    # The rest of the utterance starts a new turn, whose padding stays after the reset.
    events = feed_all(vad, np.concatenate([speech_like_signal(0.5), silence(0.5)]))
    assert events == [SpeechStarted(audio_start_ms=1000), SpeechStopped(audio_end_ms=1700)]


def test_a_new_turn_never_starts_before_the_previous_one_ended() -> None:
    vad = EnergyVad(VadConfig(prefix_padding_ms=300, silence_duration_ms=200))
    audio = np.concatenate([burst(speech=0.5, after=0.25), speech_like_signal(0.5), silence(1)])
    events = feed_all(vad, audio)
    assert events == [
        SpeechStarted(audio_start_ms=200),
        SpeechStopped(audio_end_ms=1200),
        SpeechStarted(audio_start_ms=1200),  # onset 1250 - 300 would overlap the last turn
        SpeechStopped(audio_end_ms=1950),
    ]


def test_max_utterance_forces_a_stop_and_noise_cannot_retake_the_turn() -> None:
    vad = EnergyVad(VadConfig(prefix_padding_ms=0, silence_duration_ms=200))
    noise = speech_like_signal(MAX_UTTERANCE_MS / 1000 + 5)
    events = feed_all(vad, noise)
    assert events == [SpeechStarted(audio_start_ms=0), SpeechStopped(audio_end_ms=MAX_UTTERANCE_MS)]
    assert not vad.in_speech
    # After enough quiet a real turn can start again.
    events = feed_all(vad, np.concatenate([silence(0.3), speech_like_signal(0.5), silence(0.5)]))
    start = (MAX_UTTERANCE_MS + 5000) + 300
    assert events == [SpeechStarted(audio_start_ms=start), SpeechStopped(audio_end_ms=start + 700)]


def test_feed_rejects_bad_input() -> None:
    vad = EnergyVad(VadConfig())
    with pytest.raises(ValueError, match="mono"):
        vad.feed(np.zeros((2, 10), dtype=np.int16), RATE)
    with pytest.raises(ValueError, match="rate"):
        vad.feed(np.zeros(10, dtype=np.int16), 0)


@pytest.mark.parametrize(
    ("turn_detection", "expected"),
    [
        (None, None),
        ("server_vad", None),
        ({}, None),
        ({"type": "none"}, None),
        ({"type": "server_vad"}, VadConfig()),
        (
            {
                "type": "server_vad",
                "threshold": 0.8,
                "prefix_padding_ms": 100,
                "silence_duration_ms": 700,
                "create_response": True,
            },
            VadConfig(threshold=0.8, prefix_padding_ms=100, silence_duration_ms=700),
        ),
        (
            {"type": "server_vad", "threshold": True, "prefix_padding_ms": "x"},
            VadConfig(),
        ),
        ({"type": "server_vad", "silence_duration_ms": -5}, VadConfig(silence_duration_ms=0)),
        (
            {"type": "semantic_vad", "eagerness": "high"},
            VadConfig(silence_duration_ms=SEMANTIC_VAD_SILENCE_MS),
        ),
    ],
)
def test_config_from_turn_detection(turn_detection: Any, expected: VadConfig | None) -> None:
    assert VadConfig.from_turn_detection(turn_detection) == expected
