"""A WebSocket session's voice: 48 kHz clips encoded into the session's output format."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from emulator._input_audio import g711_expand
from emulator._streamed_audio import CHUNK_MS, StreamedVoice, encode_chunks


def tone(seconds: float) -> np.ndarray:
    t = np.arange(int(48_000 * seconds)) / 48_000
    return (np.sin(2 * np.pi * 300 * t) * 8000).astype(np.int16)


def test_pcm_chunks_are_100_ms_of_24_khz_pcm16_and_keep_the_signal() -> None:
    chunks = encode_chunks(tone(0.35), {"type": "audio/pcm", "rate": 24000})
    raw = [base64.b64decode(c) for c in chunks]
    assert [len(r) for r in raw] == [4800, 4800, 4800, 2400]  # 100 ms each, then the rest
    decoded = np.frombuffer(b"".join(raw), dtype="<i2")
    assert decoded.size == 0.35 * 24_000
    # Averaging pairs keeps a 300 Hz tone's level (within a per cent).
    assert abs(np.abs(decoded).max() - 8000) < 80


@pytest.mark.parametrize("kind", ["audio/pcmu", "audio/pcma"])
def test_g711_chunks_are_8_khz_bytes_that_expand_back_close_to_the_signal(kind: str) -> None:
    samples = tone(0.2)
    chunks = encode_chunks(samples, {"type": kind})
    raw = b"".join(base64.b64decode(c) for c in chunks)
    assert len(raw) == 0.2 * 8000 and len(base64.b64decode(chunks[0])) == 8000 * CHUNK_MS // 1000
    expanded = g711_expand(raw, mu_law=kind == "audio/pcmu").astype(np.int32)
    reference = samples[: samples.size - samples.size % 6].reshape(-1, 6).mean(axis=1)
    # G.711 keeps about 12 bits of resolution: the error stays within a few per cent.
    assert np.max(np.abs(expanded - reference)) < 8000 * 0.05


async def test_speech_off_gives_no_audio_and_nothing_plays() -> None:
    voice = StreamedVoice("off")
    assert await voice.speak("resp_1", "item_1", "hello", 1.0, None) is None
    assert voice.clear() is False
    assert voice.audio_ms == {}
    spoken = StreamedVoice("tone")
    chunks = await spoken.speak("resp_1", "item_1", "hello there", 1.0, None)
    assert chunks and spoken.audio_ms["item_1"] > 0
