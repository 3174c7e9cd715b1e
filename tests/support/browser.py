"""A Python stand-in for a browser: an aiortc peer with a microphone and ``oai-events``.

Used by the emulator's tests and the broker's: it does what a page running OpenAI's
WebRTC quickstart does (mic track, data channel created before the offer, JSON events),
and it records the level of the audio it hears.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, MediaStreamTrack

from emulator.audio import frame_to_mono
from tests.support.audio import rms_dbfs

logger = logging.getLogger(__name__)

INBOUND_AUDIO_KEEP = 10 * 60 * 50  # ten minutes of 20 ms frames


class FakeBrowser:
    """A Python stand-in for a browser: aiortc peer with a mic track and the oai-events channel.

    Methods taking ``timeout`` keep the signature the broker's tests rely on, hence the
    ``noqa: ASYNC109`` markers.

    Args:
        mic: the microphone track to send (stopped by :meth:`close`); default: silence
            (``AudioStreamTrack``).

    Attributes:
        events: every server event received on the data channel, in order (parsed JSON).
        arrived_at: ``time.monotonic()`` at which each of ``events`` arrived (same index).
        connection_states: every ``connectionState`` the peer went through, in order.
        inbound_audio: ``(time.monotonic() at arrival, RMS dBFS)`` of each received audio
            frame, oldest first; the last ten minutes are kept.
        pc: the underlying ``RTCPeerConnection`` (for tests that need more).
    """

    def __init__(self, mic: MediaStreamTrack | None = None) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._mic = mic if mic is not None else AudioStreamTrack()
        self.pc.addTrack(self._mic)
        self.channel = self.pc.createDataChannel("oai-events")
        self.events: list[dict[str, Any]] = []
        self.arrived_at: list[float] = []
        self.connection_states: list[str] = []
        self.inbound_audio: deque[tuple[float, float]] = deque(maxlen=INBOUND_AUDIO_KEEP)
        self._opened = asyncio.Event()
        self._arrived = asyncio.Event()
        self._state_changed = asyncio.Event()
        self._drains: set[asyncio.Task[None]] = set()
        self._closed = False
        self.channel.on("open", self._opened.set)
        self.channel.on("message", self._on_message)
        self.pc.on("connectionstatechange", self._on_state)
        self.pc.on("track", self._on_track)

    async def create_offer(self) -> str:
        """Create the offer and set it locally (aiortc gathers ICE here); return the SDP."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def accept_answer(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    async def wait_open(self, timeout: float = 10) -> None:  # noqa: ASYNC109
        """Wait until the data channel is open; raises ``TimeoutError``."""
        async with asyncio.timeout(timeout):
            await self._opened.wait()

    def send(self, event: dict[str, Any]) -> None:
        """Send one client event as JSON over the data channel (must be open)."""
        self.channel.send(json.dumps(event))

    def send_user_text(self, text: str) -> None:
        """Send a ``conversation.item.create`` with a user ``input_text`` message."""
        self.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": text}],
                },
            }
        )

    async def wait_for(
        self,
        type_: str,
        predicate: Callable[[dict[str, Any]], bool] | None = None,
        timeout: float = 10,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        """Return the first event of ``type_`` (matching ``predicate``), past or future.

        Raises:
            TimeoutError: nothing matched within ``timeout`` seconds; the message lists
                the event types seen.
        """
        checked = 0
        try:
            async with asyncio.timeout(timeout):
                while True:
                    for event in self.events[checked:]:
                        if event.get("type") == type_ and (predicate is None or predicate(event)):
                            return event
                    checked = len(self.events)
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            seen = [e.get("type") for e in self.events]
            raise TimeoutError(f"no {type_!r} event within {timeout}s; saw {seen}") from None

    @property
    def remote_ip(self) -> str | None:
        """The remote address of the nominated ICE pair, or ``None``.

        Best effort: aiortc exposes no public API for the selected pair, so this reads
        ``RTCIceTransport._connection`` (an ``aioice.Connection``) and its ``_nominated``
        pairs. It returns ``None`` before ICE completes or if those internals change.
        """
        try:
            sctp = self.pc.sctp
            transports = [sctp.transport.transport] if sctp is not None else []
            transports += [t.receiver.transport.transport for t in self.pc.getTransceivers()]
            for ice in transports:
                for pair in ice._connection._nominated.values():
                    return str(pair.remote_addr[0])
        except AttributeError:
            return None
        return None

    def _on_message(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            message = message.decode()
        self.events.append(json.loads(message))
        self.arrived_at.append(time.monotonic())
        self._arrived.set()

    def _on_state(self) -> None:
        self.connection_states.append(self.pc.connectionState)
        self._state_changed.set()

    async def wait_connection_state(self, state: str, timeout: float = 10) -> None:  # noqa: ASYNC109
        """Wait until the peer's ``connectionState`` is ``state``; raises ``TimeoutError``."""
        async with asyncio.timeout(timeout):
            while self.pc.connectionState != state:
                self._state_changed.clear()
                await self._state_changed.wait()

    def arrival_of(self, event: dict[str, Any]) -> float:
        """When ``event`` (an object from :attr:`events`) arrived, ``time.monotonic()``."""
        return next(at for e, at in zip(self.events, self.arrived_at, strict=True) if e is event)

    def inbound_levels_between(self, t0: float, t1: float) -> list[float]:
        """Levels (dBFS) of the audio frames that arrived with ``t0 <= time.monotonic() <= t1``."""
        return [level for at, level in self.inbound_audio if t0 <= at <= t1]

    def _on_track(self, track: Any) -> None:
        task = asyncio.create_task(self._drain(track), name="fake-browser-drain")
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)

    async def _drain(self, track: Any) -> None:
        try:
            while True:
                frame = await track.recv()
                if track.kind == "audio":
                    self.inbound_audio.append((time.monotonic(), rms_dbfs(frame_to_mono(frame))))
        except MediaStreamError:
            return

    async def close(self) -> None:
        """Close the peer and stop the drain tasks; idempotent."""
        if self._closed:
            return
        self._closed = True
        for task in list(self._drains):
            task.cancel()
        await asyncio.gather(*self._drains, return_exceptions=True)
        self._mic.stop()
        await self.pc.close()
