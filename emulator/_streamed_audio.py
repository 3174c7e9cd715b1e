"""Model speech as ``response.output_audio.delta`` events: a WebSocket session's voice.

A session opened with ``GET /v1/realtime?model=…`` has no WebRTC peer, so the model's audio
travels in the event stream, as at the real service's WebSocket sessions: base64 chunks in
the session's ``audio.output.format`` (PCM16 24 kHz mono by default; G.711 μ-law/A-law at
8 kHz when asked), :data:`CHUNK_MS` of audio each, followed by ``response.output_audio.done``.
The response streams them (:mod:`emulator._response`); nothing "plays", so there are no
``output_audio_buffer.*`` events and nothing to clear.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from functools import cache
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from ._input_audio import g711_expand
from .audio import SAMPLE_RATE, synthesize
from .settings import SpeechEngine

CHUNK_MS: Final = 100
"""Audio per ``response.output_audio.delta`` (4 800 bytes of PCM16 at 24 kHz) [inferred]."""


class StreamedVoice:
    """Voices responses as base64 audio chunks the response streams as events.

    Args:
        engine: how speech is made (``"off"``: no audio, so no audio events either).
    """

    def __init__(self, engine: SpeechEngine) -> None:
        self._engine = engine
        self.audio_ms: dict[str, int] = {}

    async def speak(
        self,
        response_id: str,
        item_id: str,
        text: str,
        speed: float,
        audio_format: Mapping[str, Any] | None,
    ) -> list[str] | None:
        """Synthesise ``text``; return it encoded as base64 chunks (``None``: speech off)."""
        if self._engine == "off":
            return None
        clip = await synthesize(text, speed=speed, engine=self._engine)
        self.audio_ms[item_id] = clip.duration_ms
        return encode_chunks(clip.samples, audio_format)

    def response_done(self, response_id: str) -> None:
        """Nothing is held back: the audio went out inside the response."""

    def clear(self) -> bool:
        """Nothing plays on a WebSocket session (``output_audio_buffer.clear`` is WebRTC's)."""
        return False


def encode_chunks(samples: NDArray[np.int16], audio_format: Mapping[str, Any] | None) -> list[str]:
    """48 kHz mono samples → base64 chunks of :data:`CHUNK_MS` in ``audio_format``."""
    kind = audio_format.get("type") if isinstance(audio_format, Mapping) else "audio/pcm"
    if kind in ("audio/pcmu", "audio/pcma"):
        rate = 8000
        encoded = _g711_compress(_resample(samples, rate), mu_law=kind == "audio/pcmu")
        bytes_per_chunk = rate * CHUNK_MS // 1000
    else:
        rate = 24000
        encoded = _resample(samples, rate).astype("<i2").tobytes()
        bytes_per_chunk = rate * CHUNK_MS // 1000 * 2
    return [
        base64.b64encode(encoded[start : start + bytes_per_chunk]).decode("ascii")
        for start in range(0, len(encoded), bytes_per_chunk)
    ]


def _resample(samples: NDArray[np.int16], rate: int) -> NDArray[np.int16]:
    # Averaging each group of input samples: a crude low-pass, enough for synthetic speech.
    step = SAMPLE_RATE // rate
    usable = samples[: samples.size - samples.size % step].astype(np.int32)
    averaged: NDArray[np.int16] = usable.reshape(-1, step).mean(axis=1).astype(np.int16)
    return averaged


@cache
def _g711_table(mu_law: bool) -> tuple[NDArray[np.int32], NDArray[np.uint8]]:
    """Every G.711 code's linear value, sorted, with the codes in the same order."""
    codes = np.arange(256, dtype=np.uint8)
    values = g711_expand(codes.tobytes(), mu_law=mu_law).astype(np.int32)
    order = np.argsort(values, kind="stable")
    return values[order], codes[order]


def _g711_compress(samples: NDArray[np.int16], *, mu_law: bool) -> bytes:
    """Linear PCM → G.711 codes: each sample takes the code whose value is nearest."""
    values, codes = _g711_table(mu_law)
    wanted = samples.astype(np.int32)
    above = np.clip(np.searchsorted(values, wanted), 1, values.size - 1)
    below = above - 1
    nearer_below = (wanted - values[below]) <= (values[above] - wanted)
    return codes[np.where(nearer_below, below, above)].tobytes()
