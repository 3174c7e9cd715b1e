"""Audio for tests: levels, synthetic speech, and a scripted microphone track.

The synthetic signal is made here, independently of ``emulator.audio.speech``, so a VAD
test does not pass just because the VAD and the synthesiser share a bug.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from emulator.audio import PacedAudioTrack
from emulator.audio.track import FRAME_SAMPLES

RATE = 48000
SILENT_DBFS = -120.0


def rms_dbfs(samples: NDArray[np.int16]) -> float:
    """RMS level in dBFS; ``-120.0`` for digital silence or no samples."""
    if samples.size == 0:
        return SILENT_DBFS
    rms = math.sqrt(float(np.mean(np.square(samples, dtype=np.float64))))
    return max(SILENT_DBFS, 20 * math.log10(rms / 32768)) if rms > 0 else SILENT_DBFS


def silence(duration_s: float, rate: int = RATE) -> NDArray[np.int16]:
    return np.zeros(round(duration_s * rate), dtype=np.int16)


def speech_like_signal(
    duration_s: float, rate: int = RATE, level_dbfs: float = -16.0
) -> NDArray[np.int16]:
    """A voiced, syllable-modulated signal at ``level_dbfs`` RMS (default -16 dBFS).

    A 150 Hz harmonic series with slight vibrato under a 4 Hz syllable envelope that never
    drops below half amplitude, so every 10 ms window of it is well above -40 dBFS at the
    default level and onset/offset times are sharp.
    """
    t = np.arange(round(duration_s * rate)) / rate
    phase = 2 * np.pi * (150 * t + 3 * np.sin(2 * np.pi * 5 * t))  # ±15 Hz vibrato
    voiced = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(np.pi * 4 * t) ** 2
    signal = np.asarray(voiced * envelope, dtype=np.float64)
    rms = math.sqrt(float(np.mean(signal**2))) if signal.size else 1.0
    scaled = signal / rms * 32768 * 10 ** (level_dbfs / 20)
    return np.clip(np.round(scaled), -32768, 32767).astype(np.int16)


class ScriptedMicTrack(PacedAudioTrack):
    """A microphone that plays ``segments`` (48 kHz mono int16) once, then silence forever.

    With ``gate``, it is silent until the event is set and only then starts the script (a
    test can tell the emulator what the turn says before it is spoken). Frames are paced
    like the emulator's own track (the same base class).
    ``segment_started[i]`` is the ``time.monotonic()`` at which segment ``i``'s first
    frame was handed out (``None`` until then); ``finished`` is set when the last
    segment's final frame has been handed out.
    """

    def __init__(
        self, segments: Sequence[NDArray[np.int16]], *, gate: asyncio.Event | None = None
    ) -> None:
        super().__init__()
        self._gate = gate
        self._script = np.concatenate([*segments, np.zeros(0, dtype=np.int16)])
        self._offsets = np.cumsum([0, *(s.size for s in segments)])[:-1].tolist()
        self.segment_started: list[float | None] = [None] * len(segments)
        self.finished = asyncio.Event()
        self._position = 0

    def _next_samples(self) -> NDArray[np.int16]:
        if self._gate is not None and not self._gate.is_set():
            return np.zeros(FRAME_SAMPLES, dtype=np.int16)
        now = time.monotonic()
        begin, end = self._position, self._position + FRAME_SAMPLES
        for index, offset in enumerate(self._offsets):
            if begin <= offset < end and self.segment_started[index] is None:
                self.segment_started[index] = now + (offset - begin) / RATE
        samples = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        chunk = self._script[begin:end]
        samples[: chunk.size] = chunk
        self._position = end
        if end >= self._script.size:
            self.finished.set()
        return samples
