"""The input audio buffer of a call and the server VAD that watches it (docs/protocol.md §3.4).

Over WebRTC the microphone arrives as RTP, so the emulator keeps no samples: the buffer is
a duration (what a commit would turn into a user item) plus the detector's state. Audio
appended with ``input_audio_buffer.append`` counts the same way.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from .audio import EnergyVad, VadConfig, VadEvent
from .errors import ClientEventError

MIN_COMMIT_MS: Final = 100.0  # the real service refuses to commit less
MAX_APPEND_BYTES: Final = 15 * 1024 * 1024  # the documented per-append limit


class InputAudio:
    """Buffered input duration plus the energy VAD, configured from ``turn_detection``."""

    def __init__(self, turn_detection: Any) -> None:
        self._turn: Mapping[str, Any] | None = None
        self._config: VadConfig | None = None
        self._vad = EnergyVad(VadConfig())
        self.buffered_ms = 0.0
        self.configure(turn_detection)

    def configure(self, turn_detection: Any) -> None:
        """Apply a (possibly updated) ``audio.input.turn_detection``; ``None`` disables VAD."""
        was_on = self._config is not None
        self._turn = turn_detection if isinstance(turn_detection, Mapping) else None
        self._config = VadConfig.from_turn_detection(self._turn)
        self._vad.reconfigure(self._config or VadConfig())
        if was_on != (self._config is not None):
            # Switching either way starts from silence: an utterance the detector followed
            # while its events were ignored must not end in a speech_stopped nobody started.
            self._vad.reset()

    @property
    def server_vad(self) -> bool:
        return self._config is not None

    @property
    def create_response(self) -> bool:
        return bool(self._turn is not None and self._turn.get("create_response", True))

    @property
    def interrupt_response(self) -> bool:
        return bool(self._turn is not None and self._turn.get("interrupt_response", True))

    def feed(self, samples: NDArray[np.int16], sample_rate: int) -> list[VadEvent]:
        """Add audio to the buffer; return the VAD's transitions (none when VAD is off)."""
        if sample_rate <= 0 or samples.size == 0:
            return []
        self.buffered_ms += samples.size * 1000.0 / sample_rate
        # The detector always runs so its clock (audio_start_ms/audio_end_ms) stays the
        # session's audio clock even while turn detection is off.
        events = self._vad.feed(samples, sample_rate)
        return events if self.server_vad else []

    def take(self, *, reset_detector: bool) -> float:
        """Empty the buffer for a commit; return how many milliseconds it held.

        Args:
            reset_detector: drop an utterance in progress (a client's commit). A commit the
                VAD itself made leaves the detector alone: it has just ended that utterance
                and may already follow the next one in the same chunk of audio.
        """
        held = self.buffered_ms
        self.buffered_ms = 0.0
        if reset_detector:
            self._vad.reset()
        return held

    def clear(self) -> None:
        """Drop the buffered audio and any utterance in progress."""
        self.buffered_ms = 0.0
        self._vad.reset()


def decode_appended_audio(payload: Any, audio_format: Any) -> tuple[NDArray[np.int16], int]:
    """Decode ``input_audio_buffer.append``'s base64 ``audio`` in the session's input format.

    Returns:
        Mono int16 samples and their sample rate (24 kHz PCM, or 8 kHz G.711).

    Raises:
        ClientEventError: the audio is missing, not base64, too large or an odd PCM length.
    """
    if payload is None:
        raise ClientEventError(
            "missing_required_parameter", "Missing required parameter: 'audio'.", param="audio"
        )
    if not isinstance(payload, str):
        raise ClientEventError("invalid_type", "Invalid type for 'audio'.", param="audio")
    if len(payload) > MAX_APPEND_BYTES * 4 // 3 + 4:
        raise ClientEventError(
            "invalid_value", "Audio chunk exceeds the 15 MiB limit.", param="audio"
        )
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ClientEventError(
            "invalid_value", "Invalid value for 'audio': not base64.", param="audio"
        ) from exc
    kind = audio_format.get("type") if isinstance(audio_format, Mapping) else "audio/pcm"
    if kind == "audio/pcmu":
        return g711_expand(raw, mu_law=True), 8000
    if kind == "audio/pcma":
        return g711_expand(raw, mu_law=False), 8000
    if len(raw) % 2:
        raise ClientEventError(
            "invalid_value",
            "Invalid value for 'audio': 16-bit PCM needs an even number of bytes.",
            param="audio",
        )
    return np.frombuffer(raw, dtype="<i2").astype(np.int16), 24000


def g711_expand(raw: bytes, *, mu_law: bool) -> NDArray[np.int16]:
    """G.711 codes (μ-law or A-law) → linear 16-bit samples."""
    # ITU-T G.711 expansion; only the energy matters here, but decoding keeps the VAD honest.
    codes = np.frombuffer(raw, dtype=np.uint8).astype(np.int32)
    if mu_law:
        codes = ~codes & 0xFF
        sign = codes & 0x80
        exponent = (codes >> 4) & 0x07
        mantissa = codes & 0x0F
        magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    else:
        codes = codes ^ 0x55
        sign = ~codes & 0x80
        exponent = (codes >> 4) & 0x07
        mantissa = codes & 0x0F
        magnitude = np.where(
            exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << (exponent - 1)
        )
    values = np.where(sign != 0, -magnitude, magnitude)
    return np.clip(values, -32768, 32767).astype(np.int16)
