"""Model speech on the call's outbound track, and the ``output_audio_buffer.*`` events.

Over WebRTC the model's audio is RTP, never ``response.output_audio.delta``; what the
connections see is ``output_audio_buffer.started`` when a response's audio begins to play,
``stopped`` when it has all played, and ``cleared`` when it was cut off
(``output_audio_buffer.clear``, or the user interrupting under server VAD).

A call's responses speak through a :class:`Voice`: the :class:`Speaker` here plays on a
:class:`MediaSink` (the WebRTC peer); a WebSocket session's voice
(:class:`emulator._streamed_audio.StreamedVoice`) hands the audio back to the response,
which streams it as events.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

from ._events import server_event
from .audio import Clip, synthesize
from .settings import SpeechEngine

logger = logging.getLogger(__name__)

START_WAIT_S: Final = 1.0  # bound on waiting for the first frame to leave


class MediaSink(Protocol):
    """Where a :class:`Speaker` plays clips in real time (:class:`~emulator.peer.Peer`)."""

    @property
    def has_audio(self) -> bool:
        """Whether audio can be played at all (the offer had an audio section)."""
        ...

    def speak(
        self, clip: Clip, *, on_start: Callable[[], None], on_stop: Callable[[bool], None]
    ) -> bool:
        """Play ``clip``, replacing any clip playing now; False if it cannot play."""
        ...

    def stop_speaking(self) -> bool:
        """Cut the current clip short; return whether there was one."""
        ...


class Voice(Protocol):
    """How a call's responses are voiced.

    Attributes:
        audio_ms: item id -> duration of the audio it spoke (``conversation.item.truncate``
            checks ``audio_end_ms`` against it).
    """

    audio_ms: dict[str, int]

    async def speak(
        self,
        response_id: str,
        item_id: str,
        text: str,
        speed: float,
        audio_format: Mapping[str, Any] | None,
    ) -> list[str] | None:
        """Voice ``text``; return its audio chunks when the response must stream them.

        Returns base64 chunks the response streams as ``response.output_audio.delta``, or
        ``None`` when the audio travels another way (RTP) or there is none.
        """
        ...

    def response_done(self, response_id: str) -> None:
        """Note that the response's ``response.done`` went out."""
        ...

    def clear(self) -> bool:
        """Cut off audio playing now (``output_audio_buffer.clear``); False if none played."""
        ...


class Speaker:
    """Speaks responses on one media sink; at most one clip plays at a time.

    Args:
        peer: the call's media sink (its WebRTC peer).
        broadcast: sends a server event to every connection of the call.
        engine: how speech is made (``"off"``: no audio, no ``output_audio_buffer`` events).
    """

    def __init__(
        self, peer: MediaSink, broadcast: Callable[[dict[str, Any]], None], engine: SpeechEngine
    ) -> None:
        self._peer = peer
        self._broadcast = broadcast
        self._engine = engine
        self._playing: str | None = None
        self._clearing = False
        self._generating: set[str] = set()  # responses whose response.done is not out yet
        self._held_stop: str | None = None
        self.audio_ms: dict[str, int] = {}  # item id -> duration of the audio it spoke

    async def speak(
        self,
        response_id: str,
        item_id: str,
        text: str,
        speed: float,
        audio_format: Mapping[str, Any] | None = None,
    ) -> None:
        """Synthesise ``text`` and start playing it; return once it plays (bounded wait).

        Returns at once when speech is off or the call negotiated no audio. The audio goes
        as RTP, never as events, so this always returns ``None`` (``audio_format`` is the
        peer's business: the codec was negotiated).
        """
        if self._engine == "off" or not self._peer.has_audio:
            return None
        self._generating.add(response_id)
        clip = await synthesize(text, speed=speed, engine=self._engine)
        started = asyncio.Event()

        def on_start() -> None:
            self._playing = response_id
            self._broadcast(server_event("output_audio_buffer.started", response_id=response_id))
            started.set()

        def on_stop(interrupted: bool) -> None:
            was_playing = self._playing == response_id
            if was_playing:
                self._playing = None
            started.set()
            if not was_playing:  # a clip cut off before its first frame never "started"
                return
            if interrupted and self._clearing:
                self._broadcast(
                    server_event("output_audio_buffer.cleared", response_id=response_id)
                )
            elif response_id in self._generating:
                # Audio that played out faster than the response finished: like the service,
                # report the buffer stopped only after response.done.
                self._held_stop = response_id
            else:
                self._broadcast(
                    server_event("output_audio_buffer.stopped", response_id=response_id)
                )

        if not self._peer.speak(clip, on_start=on_start, on_stop=on_stop):
            return None
        self.audio_ms[item_id] = clip.duration_ms
        try:
            async with asyncio.timeout(START_WAIT_S):
                await started.wait()
        except TimeoutError:
            logger.debug("response %s: audio did not start within %ss", response_id, START_WAIT_S)
        return None

    def response_done(self, response_id: str) -> None:
        """Note that ``response.done`` went out; release a held ``stopped``."""
        self._generating.discard(response_id)
        if self._held_stop == response_id:
            self._held_stop = None
            self._broadcast(server_event("output_audio_buffer.stopped", response_id=response_id))

    def clear(self) -> bool:
        """Cut off the audio now (``output_audio_buffer.cleared``); False if none played."""
        was_playing = self._playing is not None
        self._clearing = True
        try:
            self._peer.stop_speaking()  # also drops a clip that has not started yet
        finally:
            self._clearing = False
        return was_playing
