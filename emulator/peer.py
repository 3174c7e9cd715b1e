"""One emulator-side ``RTCPeerConnection``, wrapped with typed callbacks and an idempotent close.

aiortc reports everything through pyee events; this wrapper turns the few the emulator
needs into plain callbacks, owns the tasks that drain inbound audio (handing each frame to
``on_audio`` as mono int16), plays model speech on the outbound track, and validates the
offer text first because aiortc accepts almost any string as SDP.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import Any, Final

import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from numpy.typing import NDArray

from .audio import Clip, ModelAudioTrack, frame_to_mono
from .errors import InvalidSdpError

logger = logging.getLogger(__name__)

DATA_CHANNEL_LABEL: Final = "oai-events"
MAX_SDP_BYTES: Final = 64 * 1024


def validate_offer(sdp: str) -> None:
    """Reject text that is not an SDP offer aiortc could answer.

    aiortc's parser accepts arbitrary text, so the checks are ours: an SDP preamble, at
    least one media section, ICE credentials, a DTLS fingerprint, and ``a=setup:actpass``
    wherever a setup role is given (an offerer must offer both roles, RFC 8842 §5.3; a
    ``setup:active``/``passive`` section means the text is an answer).

    Raises:
        InvalidSdpError: with a message naming the first failed check.
    """
    if not sdp.strip():
        raise InvalidSdpError("Missing SDP offer.")
    if len(sdp.encode()) > MAX_SDP_BYTES:
        raise InvalidSdpError("SDP offer too large.")
    lines = [line.strip() for line in sdp.strip().splitlines()]
    if lines[0] != "v=0":
        raise InvalidSdpError("Invalid SDP: expected 'v=0' as the first line.")
    if not any(line.startswith("m=") for line in lines):
        raise InvalidSdpError("Invalid SDP: no media sections.")
    for needed in ("a=ice-ufrag:", "a=ice-pwd:", "a=fingerprint:"):
        if not any(line.startswith(needed) for line in lines):
            raise InvalidSdpError(f"Invalid SDP: missing {needed.rstrip(':')}.")
    roles = {m.group(1) for line in lines if (m := re.fullmatch(r"a=setup:(\w+)", line))}
    if roles - {"actpass"}:
        raise InvalidSdpError("Invalid SDP: not an offer (setup role is not actpass).")


class Peer:
    """The emulator's side of one WebRTC call.

    Args:
        name: label for logs (the call id).
        on_channel_open: called once the browser's ``oai-events`` channel is usable.
        on_channel_message: called with each text message on that channel.
        on_audio: called with each inbound audio frame as mono int16 samples and their
            sample rate (48000 from aiortc's Opus decoder); ``None`` drops the audio.

    Callbacks run synchronously inside aiortc's event dispatch or the drain task and must
    not block. An exception from ``on_audio`` is logged (once per peer) and the frame dropped.
    """

    def __init__(
        self,
        name: str,
        *,
        on_channel_open: Callable[[], None],
        on_channel_message: Callable[[str], None],
        on_audio: Callable[[NDArray[np.int16], int], None] | None = None,
    ) -> None:
        self._name = name
        self._on_open = on_channel_open
        self._on_message = on_channel_message
        self._on_audio = on_audio
        self._audio_error_logged = False
        self._pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._outbound = ModelAudioTrack()
        self._sending_audio = False  # the answer has an audio sender (the offer had audio)
        self._channel: Any = None
        self._drains: set[asyncio.Task[None]] = set()
        self._ended = asyncio.Event()
        self._closed = False
        self.states: list[str] = []
        self._pc.on("connectionstatechange", self._on_state)
        self._pc.on("datachannel", self._on_datachannel)
        self._pc.on("track", self._on_track)

    async def answer(self, offer_sdp: str) -> str:
        """Apply the offer and return the answer SDP (sendrecv audio plus the data channel).

        Raises:
            InvalidSdpError: the offer fails :func:`validate_offer` or aiortc rejects it.
        """
        validate_offer(offer_sdp)
        try:
            await self._pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            if any(t.kind == "audio" for t in self._pc.getTransceivers()):
                # addTrack reuses the offered audio transceiver, making the answer sendrecv.
                self._pc.addTrack(self._outbound)
                self._sending_audio = True
            await self._pc.setLocalDescription(await self._pc.createAnswer())
        except InvalidSdpError:
            raise
        except Exception as exc:  # aiortc raises assorted types for offers it cannot use
            logger.debug("peer %s: offer rejected by aiortc: %r", self._name, exc)
            raise InvalidSdpError(f"Invalid SDP offer: {exc}") from exc
        return str(self._pc.localDescription.sdp)

    @property
    def channel_open(self) -> bool:
        return self._channel is not None and self._channel.readyState == "open"

    def send(self, text: str) -> bool:
        """Send one text message on the data channel; return False if it did not go.

        A message longer than the browser's ``a=max-message-size`` (256 KiB from Chrome and
        aiortc) cannot go on the channel at all; it is dropped for the page alone, so the
        fan-out still reaches every sideband (emulator/README.md [inferred] 25).
        """
        if not self.channel_open:
            return False
        try:
            self._channel.send(text)
        except ValueError:
            logger.warning(
                "peer %s: a %d-character event exceeds the browser's message size; not sent",
                self._name,
                len(text),
            )
            return False
        return True

    @property
    def has_audio(self) -> bool:
        """Whether the answer sends audio (the offer had an audio section)."""
        return self._sending_audio

    def speak(
        self, clip: Clip, *, on_start: Callable[[], None], on_stop: Callable[[bool], None]
    ) -> bool:
        """Play ``clip`` to the browser, replacing any clip playing now.

        The callbacks follow :class:`~emulator.audio.ModelAudioTrack`'s contract. Returns
        False, and never calls them, when there is no audio sender (the offer had no audio
        section) or the peer is closed.
        """
        if self._closed or not self._sending_audio:
            return False
        self._outbound.play(clip, on_start=on_start, on_stop=on_stop)
        return True

    def stop_speaking(self) -> bool:
        """Cut the current clip short (its ``on_stop(True)``); return whether there was one."""
        return self._outbound.clear()

    @property
    def speaking(self) -> bool:
        """Whether a clip is queued or playing."""
        return self._outbound.playing

    async def wait_ended(self) -> None:
        """Return once the connection is closed or failed (for any reason)."""
        await self._ended.wait()

    def _on_state(self) -> None:
        state = self._pc.connectionState
        self.states.append(state)
        logger.debug("peer %s: connection state %s", self._name, state)
        if state in {"closed", "failed"}:
            self._ended.set()

    def _on_datachannel(self, channel: Any) -> None:
        if channel.label != DATA_CHANNEL_LABEL:
            logger.debug("peer %s: ignoring data channel %r", self._name, channel.label)
            return
        self._channel = channel
        channel.on("message", self._on_channel_message)
        channel.on("close", self._on_channel_close)
        # aiortc marks a remotely opened channel open before emitting "datachannel", and
        # the browser sees our ACK before any message we send on the ordered stream.
        self._on_open()

    def _on_channel_message(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            message = message.decode("utf-8", errors="replace")
        self._on_message(message)

    def _on_channel_close(self) -> None:
        logger.debug("peer %s: data channel closed", self._name)

    def _on_track(self, track: Any) -> None:
        if track.kind != "audio":
            return
        # Drain the microphone so aiortc's jitter buffer never fills.
        task = asyncio.create_task(self._drain(track), name=f"peer-drain:{self._name}")
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)

    async def _drain(self, track: Any) -> None:
        try:
            while True:
                frame = await track.recv()
                if self._on_audio is not None:
                    self._deliver_audio(frame)
        except MediaStreamError:
            return

    def _deliver_audio(self, frame: Any) -> None:
        assert self._on_audio is not None
        try:
            self._on_audio(frame_to_mono(frame), int(frame.sample_rate))
        except Exception:
            # Keep draining: a stalled drain would fill aiortc's buffers. Once per peer,
            # since a broken callback would otherwise log fifty times a second.
            if not self._audio_error_logged:
                self._audio_error_logged = True
                logger.exception("peer %s: on_audio failed; dropping frames", self._name)

    async def close(self) -> None:
        """Close the connection, stop the drains and drop listeners; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._channel is not None:
            self._channel.remove_all_listeners()
        for task in list(self._drains):
            task.cancel()
        await asyncio.gather(*self._drains, return_exceptions=True)
        self._outbound.stop()  # drops a playing clip without its callbacks
        await self._pc.close()  # also removes the pc's own listeners
        self._ended.set()
