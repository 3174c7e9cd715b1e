"""The caller's end of a phone call (SIP): where the model's speech goes, and a spoken turn.

A SIP call has no WebRTC peer: the provider bridges its audio to the phone network as RTP,
so, as over WebRTC, the model's speech is never an event (docs/protocol.md §2.2): the
connections see ``output_audio_buffer.started``/``stopped``/``cleared``. :class:`PhoneLine`
is the :class:`~emulator._speaker.MediaSink` a SIP call's :class:`~emulator._speaker.Speaker`
plays on: each clip "plays" for its real duration to nobody, and is recorded. What the
caller says comes in through :func:`spoken_turn`: speech-like audio, then the pause that ends
a turn, fed to the call's input path like RTP from the phone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from .audio import SAMPLE_RATE, Clip, tone_clip

FRAME_MS: Final = 20
"""The size of each chunk of caller audio fed to the input path, as RTP packets carry."""
TRAILING_SILENCE_MS: Final = 300
"""Quiet after the turn beyond the session's ``silence_duration_ms``, so the VAD ends it."""


@dataclass
class _Playing:
    on_start: Callable[[], None]
    on_stop: Callable[[bool], None]
    started: bool = False
    start_handle: asyncio.Handle | None = None
    stop_handle: asyncio.TimerHandle | None = None


class PhoneLine:
    """A media sink that plays each clip, in real time, to the phone network (nowhere).

    Attributes:
        played_ms: the duration of every clip it was given, in order (for inspection).
    """

    def __init__(self) -> None:
        self.played_ms: list[int] = []
        self._playing: _Playing | None = None
        self._closed = False

    @property
    def has_audio(self) -> bool:
        """A phone call always carries audio (until it ends)."""
        return not self._closed

    def speak(
        self, clip: Clip, *, on_start: Callable[[], None], on_stop: Callable[[bool], None]
    ) -> bool:
        """Start ``clip`` on the next loop turn; it stops after its duration."""
        if self._closed:
            return False
        self.stop_speaking()
        loop = asyncio.get_running_loop()
        playing = _Playing(on_start, on_stop)
        playing.start_handle = loop.call_soon(self._start, playing)
        playing.stop_handle = loop.call_later(clip.duration_ms / 1000, self._finish, playing)
        self._playing = playing
        self.played_ms.append(clip.duration_ms)
        return True

    def _start(self, playing: _Playing) -> None:
        if self._playing is playing:
            playing.started = True
            playing.on_start()

    def _finish(self, playing: _Playing) -> None:
        if self._playing is playing:
            self._playing = None
            playing.on_stop(False)

    def stop_speaking(self) -> bool:
        """Cut the current clip short (its ``on_stop(True)``); return whether there was one."""
        playing, self._playing = self._playing, None
        if playing is None:
            return False
        for handle in (playing.start_handle, playing.stop_handle):
            if handle is not None:
                handle.cancel()
        playing.on_stop(True)
        return True

    def close(self) -> None:
        """The call ended: stop what plays (silently) and play nothing more."""
        self._closed = True
        playing, self._playing = self._playing, None
        if playing is not None:
            for handle in (playing.start_handle, playing.stop_handle):
                if handle is not None:
                    handle.cancel()


def spoken_turn(text: str, silence_duration_ms: int) -> list[NDArray[np.int16]]:
    """Speech-like audio for ``text`` and the pause after it, as 20 ms chunks at 48 kHz.

    The pause is ``silence_duration_ms`` plus :data:`TRAILING_SILENCE_MS`, so server VAD
    ends the turn; without turn detection the audio only fills the input buffer.
    """
    speech = tone_clip(text).samples
    pause = np.zeros(
        SAMPLE_RATE * (silence_duration_ms + TRAILING_SILENCE_MS) // 1000, dtype=np.int16
    )
    audio = np.concatenate([speech, pause])
    step = SAMPLE_RATE * FRAME_MS // 1000
    return [audio[start : start + step] for start in range(0, audio.size, step)]
