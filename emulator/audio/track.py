"""The emulator's outbound audio track, and the decoding of inbound frames to numpy.

:class:`ModelAudioTrack` is what the browser hears: silence, or the clip a response is
speaking. aiortc's sender pulls it with :meth:`ModelAudioTrack.recv`, so playback
progress (and the start/stop callbacks) follows real time, frame by frame.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from numpy.typing import NDArray

from .speech import SAMPLE_RATE, Clip

logger = logging.getLogger(__name__)

FRAME_MS: Final = 20  # aiortc's AUDIO_PTIME
FRAME_SAMPLES: Final = SAMPLE_RATE * FRAME_MS // 1000
TIME_BASE: Final = fractions.Fraction(1, SAMPLE_RATE)


def frame_to_mono(frame: av.AudioFrame) -> NDArray[np.int16]:
    """One audio frame as mono int16 samples (channels averaged), at ``frame.sample_rate``.

    Handles packed and planar layouts and integer or float sample formats.
    """
    array: NDArray[Any] = frame.to_ndarray()
    channels = max(1, len(frame.layout.channels))
    # Packed audio interleaves channels in one plane; planar has one row per channel.
    rows = array.reshape(channels, -1) if frame.format.is_planar else array.reshape(-1, channels).T
    if array.dtype == np.int16 and channels == 1:
        mono16: NDArray[np.int16] = np.ascontiguousarray(rows[0])
        return mono16
    mono: NDArray[np.float64] = rows.astype(np.float64).mean(axis=0)
    kind, size = array.dtype.kind, array.dtype.itemsize
    if kind == "i":
        mono /= float(1 << (8 * size - 16))
    elif kind == "u":  # u8 is centred on 128
        mono = (mono - 128.0) * 256.0
    else:  # float formats span -1.0..1.0
        mono *= 32768.0
    return np.clip(np.round(mono), -32768, 32767).astype(np.int16)


@dataclass
class _Playback:
    clip: Clip
    on_start: Callable[[], None]
    on_stop: Callable[[bool], None]
    started: bool = False
    position: int = 0


class PacedAudioTrack(MediaStreamTrack):
    """An audio track of 20 ms s16 mono 48 kHz frames, paced in real time.

    Pacing is aiortc's ``AudioStreamTrack``'s (each frame is due at start + pts); a
    subclass supplies each frame's samples with :meth:`_next_samples`.
    """

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._start: float | None = None
        self._timestamp = 0

    async def recv(self) -> av.AudioFrame:
        """The next 20 ms frame, due ``pts`` after the first one.

        Raises:
            MediaStreamError: the track has been stopped.
        """
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._timestamp += FRAME_SAMPLES
            await asyncio.sleep(self._start + self._timestamp / SAMPLE_RATE - time.monotonic())
        samples = self._next_samples()
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.pts = self._timestamp
        frame.sample_rate = SAMPLE_RATE
        frame.time_base = TIME_BASE
        return frame

    def _next_samples(self) -> NDArray[np.int16]:
        """The ``FRAME_SAMPLES`` samples of the frame being produced now."""
        raise NotImplementedError


class ModelAudioTrack(PacedAudioTrack):
    """Model speech for the browser: 20 ms s16 mono 48 kHz frames, silence when idle.

    Callback contract, for each :meth:`play`: ``on_stop`` is called exactly once (unless
    the track is stopped first), ``on_start`` at most once and always before it.

    * ``on_start()`` runs inside :meth:`recv` when the clip's first frame is produced;
    * ``on_stop(False)`` runs inside the :meth:`recv` after the one that produced the
      clip's last frame (that frame has gone to the sender by then);
    * ``on_stop(True)`` runs inside :meth:`clear`, or :meth:`play` when a new clip
      replaces this one; if the clip had not started yet, ``on_start`` is never called.

    Callbacks run in the event loop and must not block; exceptions they raise are logged
    and swallowed so the media pipeline keeps running. Nothing plays (and no callback runs)
    while nobody pulls frames, e.g. before the connection is up.
    """

    def __init__(self) -> None:
        super().__init__()
        self._playback: _Playback | None = None

    @property
    def playing(self) -> bool:
        """Whether a clip is queued or playing (from :meth:`play` until its ``on_stop``)."""
        return self._playback is not None

    def play(
        self, clip: Clip, *, on_start: Callable[[], None], on_stop: Callable[[bool], None]
    ) -> None:
        """Play ``clip`` from the next frame on, replacing (and stopping) any current clip.

        An empty clip gets ``on_start`` and then ``on_stop(False)`` on the next frame. On
        an ended track this does nothing and no callback will run.
        """
        if self.readyState != "live":
            return
        self.clear()
        self._playback = _Playback(clip, on_start, on_stop)

    def clear(self) -> bool:
        """Stop the current clip now (its ``on_stop(True)``); return whether there was one."""
        playback = self._playback
        if playback is None:
            return False
        self._playback = None
        self._notify(playback.on_stop, True)
        return True

    def stop(self) -> None:
        """End the track; a current clip is dropped without any callback (the call is over)."""
        self._playback = None
        super().stop()

    def _next_samples(self) -> NDArray[np.int16]:
        # Re-read self._playback after each callback: a callback may call play() or clear().
        playback = self._playback
        if playback is not None and playback.started:
            if playback.position >= playback.clip.samples.size:
                self._finish(playback)
        playback = self._playback
        if playback is not None and not playback.started:
            playback.started = True
            self._notify(playback.on_start)
            if playback.clip.samples.size == 0:
                self._finish(playback)
        playback = self._playback
        silence = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        if playback is None or not playback.started:
            return silence
        chunk = playback.clip.samples[playback.position : playback.position + FRAME_SAMPLES]
        playback.position += FRAME_SAMPLES
        silence[: chunk.size] = chunk
        return silence

    def _finish(self, playback: _Playback) -> None:
        if self._playback is playback:
            self._playback = None
            self._notify(playback.on_stop, False)

    def _notify(self, callback: Callable[..., None], *args: bool) -> None:
        try:
            callback(*args)
        except Exception:
            logger.exception("model audio: a playback callback raised")
