"""An energy-based voice-activity detector with OpenAI's ``server_vad`` timing semantics.

Pure and deterministic: the only clock is the amount of audio fed, so the same samples
give the same events whatever the chunking, and tests need no real time.

How a turn is found:

* audio is analysed in windows of :data:`WINDOW_MS` (10 ms at any rate divisible by 100);
  a window is *loud* when its RMS level is at least the threshold level;
* the ``threshold`` of ``turn_detection`` (0..1) maps linearly to an energy level,
  ``-60 + 40 * threshold`` dBFS: 0 → -60 dBFS (a quiet room), 0.5 → -40 dBFS (the
  default), 1 → -20 dBFS (only loud, close speech);
* speech starts once loud windows have run back to back for :data:`DEBOUNCE_MS`, so a
  click does not open a turn; ``audio_start_ms`` is the onset of that run minus
  ``prefix_padding_ms`` (never before 0, nor before the previous turn's end);
* speech stops after ``silence_duration_ms`` without a loud window; ``audio_end_ms`` is the
  end of the last loud window plus ``silence_duration_ms`` (OpenAI: it "includes the
  min_silence_duration_ms");
* an utterance is forced to stop after :data:`MAX_UTTERANCE_MS`; a new one can then only
  start after ``silence_duration_ms`` of quiet, so constant noise cannot hold or re-take
  the turn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

WINDOW_MS: Final = 10
DEBOUNCE_MS: Final = 60
MAX_UTTERANCE_MS: Final = 15_000
SILENCE_DBFS: Final = -120.0  # the level reported for digital silence (log10(0) is -inf)

# semantic_vad decides on meaning, which an energy detector cannot see; it is approximated
# by a longer pause before the turn ends ([inferred]; its ``eagerness`` is ignored).
SEMANTIC_VAD_SILENCE_MS: Final = 500


@dataclass(frozen=True)
class SpeechStarted:
    """Speech began; ``audio_start_ms`` is on the session's audio clock."""

    audio_start_ms: int


@dataclass(frozen=True)
class SpeechStopped:
    """Speech ended; ``audio_end_ms`` includes the trailing ``silence_duration_ms``."""

    audio_end_ms: int


VadEvent = SpeechStarted | SpeechStopped


def _number(value: Any, default: float) -> float:
    # JSON booleans are ints in Python; a flag is never a valid threshold or duration.
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return default


@dataclass(frozen=True)
class VadConfig:
    """The ``server_vad`` parameters the detector uses.

    Attributes:
        threshold: 0..1, mapped to ``-60 + 40 * threshold`` dBFS (values outside are clamped).
        prefix_padding_ms: audio kept before the detected onset.
        silence_duration_ms: quiet needed to end the turn.
    """

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 200

    @property
    def threshold_dbfs(self) -> float:
        """The energy level a window needs to count as speech."""
        return -60.0 + 40.0 * min(1.0, max(0.0, self.threshold))

    @classmethod
    def from_turn_detection(cls, turn_detection: Mapping[str, Any] | None) -> VadConfig | None:
        """The config for a session's ``audio.input.turn_detection``, or ``None`` for no VAD.

        ``server_vad`` reads ``threshold``, ``prefix_padding_ms`` and
        ``silence_duration_ms`` (missing or ill-typed values take the defaults; negative
        durations become 0). ``semantic_vad`` gets the defaults with a
        :data:`SEMANTIC_VAD_SILENCE_MS` pause. Anything else (``None``, not a mapping,
        another ``type``) means turn detection is off.
        """
        if not isinstance(turn_detection, Mapping):
            return None
        match turn_detection.get("type"):
            case "server_vad":
                default = cls()
                return cls(
                    threshold=_number(turn_detection.get("threshold"), default.threshold),
                    prefix_padding_ms=max(
                        0,
                        int(
                            _number(
                                turn_detection.get("prefix_padding_ms"), default.prefix_padding_ms
                            )
                        ),
                    ),
                    silence_duration_ms=max(
                        0,
                        int(
                            _number(
                                turn_detection.get("silence_duration_ms"),
                                default.silence_duration_ms,
                            )
                        ),
                    ),
                )
            case "semantic_vad":
                return cls(silence_duration_ms=SEMANTIC_VAD_SILENCE_MS)
            case _:
                return None


def level_dbfs(samples: NDArray[np.int16]) -> float:
    """RMS level of int16 samples in dBFS (full-scale sine ≈ -3); :data:`SILENCE_DBFS` if silent."""
    if samples.size == 0:
        return SILENCE_DBFS
    rms = math.sqrt(float(np.mean(np.square(samples, dtype=np.float64))))
    if rms <= 0.0:
        return SILENCE_DBFS
    return max(SILENCE_DBFS, 20.0 * math.log10(rms / 32768.0))


class EnergyVad:
    """Turn detection over a stream of mono int16 audio.

    Args:
        config: the thresholds; change them later with :meth:`reconfigure`.

    The detector keeps at most one partial window between calls to :meth:`feed`; all times
    are exact (kept as fractions of a millisecond) and reported rounded to whole ms.
    """

    def __init__(self, config: VadConfig) -> None:
        self._config = config
        self._fed = Fraction(0)  # ms of audio fed, partial window included
        self._analysed = Fraction(0)  # ms up to the end of the last analysed window
        self._pending: NDArray[np.int16] = np.zeros(0, dtype=np.int16)
        self._pending_rate = 0
        self._run_start: Fraction | None = None  # onset of the current run of loud windows
        self._speech_start: Fraction | None = None  # onset of the current utterance
        self._last_loud_end = Fraction(0)
        self._floor = Fraction(0)  # no audio_start_ms before the previous turn's end
        self._disarmed = False  # after a forced stop, until silence_duration_ms of quiet

    @property
    def config(self) -> VadConfig:
        return self._config

    @property
    def elapsed_ms(self) -> int:
        """Milliseconds of audio fed since creation (the session's audio clock)."""
        return math.floor(self._fed)

    @property
    def in_speech(self) -> bool:
        return self._speech_start is not None

    def reconfigure(self, config: VadConfig) -> None:
        """Use ``config`` from the next window on; the clock and any utterance carry on."""
        self._config = config

    def reset(self) -> None:
        """Forget an utterance in progress, without an event; the clock keeps running."""
        self._run_start = None
        self._speech_start = None
        self._disarmed = False
        self._floor = self._analysed

    def feed(self, samples: NDArray[np.int16], sample_rate: int) -> list[VadEvent]:
        """Analyse more audio and return the events it completes, in order.

        Args:
            samples: mono int16 samples, any length (including 0).
            sample_rate: their rate in Hz; it may change between calls.

        Raises:
            ValueError: ``samples`` is not one-dimensional or ``sample_rate`` is not positive.
        """
        if samples.ndim != 1:
            raise ValueError("EnergyVad.feed expects mono (1-D) samples")
        if sample_rate <= 0:
            raise ValueError(f"invalid sample rate {sample_rate}")
        events: list[VadEvent] = []
        if sample_rate != self._pending_rate and self._pending.size:
            # A partial window at the old rate is analysed as a short window rather than
            # mixed with samples of another rate.
            events += self._window(self._pending, self._pending_rate)
            self._pending = np.zeros(0, dtype=np.int16)
        self._pending_rate = sample_rate
        self._fed += Fraction(samples.size * 1000, sample_rate)
        buffer = np.concatenate((self._pending, samples.astype(np.int16, copy=False)))
        size = max(1, sample_rate * WINDOW_MS // 1000)
        full = buffer.size // size
        for index in range(full):
            events += self._window(buffer[index * size : (index + 1) * size], sample_rate)
        self._pending = buffer[full * size :].copy()
        return events

    def _window(self, window: NDArray[np.int16], sample_rate: int) -> list[VadEvent]:
        start = self._analysed
        end = start + Fraction(window.size * 1000, sample_rate)
        self._analysed = end
        loud = level_dbfs(window) >= self._config.threshold_dbfs
        silence = self._config.silence_duration_ms
        if loud:
            self._last_loud_end = end
        if self._speech_start is not None:
            if not loud and end - self._last_loud_end >= silence:
                return [self._stop(self._last_loud_end + silence)]
            if end - self._speech_start >= MAX_UTTERANCE_MS:
                self._disarmed = True
                return [self._stop(end)]
            return []
        if self._disarmed:
            if not loud and end - self._last_loud_end >= silence:
                self._disarmed = False
            return []
        if not loud:
            self._run_start = None
            return []
        if self._run_start is None:
            self._run_start = start
        if end - self._run_start < DEBOUNCE_MS:
            return []
        self._speech_start, self._run_start = self._run_start, None
        audio_start = max(self._floor, self._speech_start - self._config.prefix_padding_ms)
        return [SpeechStarted(audio_start_ms=round(audio_start))]

    def _stop(self, audio_end: Fraction) -> SpeechStopped:
        self._speech_start = None
        self._floor = audio_end
        return SpeechStopped(audio_end_ms=round(audio_end))
