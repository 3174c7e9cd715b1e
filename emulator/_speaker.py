"""Model speech on the call's outbound track, and the ``output_audio_buffer.*`` events.

Over WebRTC the model's audio is RTP, never ``response.output_audio.delta``; what the
connections see is ``output_audio_buffer.started`` when a response's audio begins to play,
``stopped`` when it has all played, and ``cleared`` when it was cut off
(``output_audio_buffer.clear``, or the user interrupting under server VAD).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Final

from ._events import server_event
from .audio import synthesize
from .peer import Peer
from .settings import SpeechEngine

logger = logging.getLogger(__name__)

START_WAIT_S: Final = 1.0  # bound on waiting for the first frame to leave


class Speaker:
    """Speaks responses on one peer; at most one clip plays at a time.

    Args:
        peer: the call's peer.
        broadcast: sends a server event to every connection of the call.
        engine: how speech is made (``"off"``: no audio, no ``output_audio_buffer`` events).
    """

    def __init__(
        self, peer: Peer, broadcast: Callable[[dict[str, Any]], None], engine: SpeechEngine
    ) -> None:
        self._peer = peer
        self._broadcast = broadcast
        self._engine = engine
        self._playing: str | None = None
        self._clearing = False
        self._generating: set[str] = set()  # responses whose response.done is not out yet
        self._held_stop: str | None = None
        self.audio_ms: dict[str, int] = {}  # item id -> duration of the audio it spoke

    async def speak(self, response_id: str, item_id: str, text: str, speed: float) -> None:
        """Synthesise ``text`` and start playing it; return once it plays (bounded wait).

        Returns at once when speech is off or the call negotiated no audio.
        """
        if self._engine == "off" or not self._peer.has_audio:
            return
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
            return
        self.audio_ms[item_id] = clip.duration_ms
        try:
            async with asyncio.timeout(START_WAIT_S):
                await started.wait()
        except TimeoutError:
            logger.debug("response %s: audio did not start within %ss", response_id, START_WAIT_S)

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
