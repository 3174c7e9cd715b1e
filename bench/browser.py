"""An aiortc "browser": real SDP offers, and the bridge path the demo page takes in bridge mode.

Like ``web/demo`` with the bridge switch on: when a ``response.done`` (completed) lists
function calls, the page posts each to the broker's bridge
(``POST /api/v1/sessions/{id}/tools/{tool}``), sends every output it ran as a
``function_call_output`` on the data channel, then one ``response.create``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any, Final

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError

from .stack import BrokerApi, BrokerApiError, CreatedSession

logger = logging.getLogger(__name__)

CHANNEL_LABEL: Final = "oai-events"
OPEN_TIMEOUT_S: Final = 30.0


class BenchBrowser:
    """One peer with a silent microphone and the ``oai-events`` data channel.

    Never asks a STUN server (``iceServers=[]``): the pair connects over this machine's own
    addresses.

    Args:
        api: the broker, for the bridge; ``None`` for a browser that only makes an offer.
        session: the session whose client secret the bridge presents.
    """

    def __init__(self, api: BrokerApi | None = None, session: CreatedSession | None = None):
        self._api = api
        self._session = session
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._mic = AudioStreamTrack()
        self.pc.addTrack(self._mic)
        self.channel = self.pc.createDataChannel(CHANNEL_LABEL)
        self._opened = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.bridge_errors: list[str] = []
        self.channel.on("open", self._opened.set)
        self.channel.on("message", self._on_message)
        self.pc.on("track", self._on_track)

    async def create_offer(self) -> str:
        """Create and apply the offer (aiortc gathers its candidates here); the SDP."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def connect(self, answer_sdp: str) -> None:
        """Apply the answer and wait for the data channel.

        Raises:
            TimeoutError: not open within :data:`OPEN_TIMEOUT_S`.
        """
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))
        async with asyncio.timeout(OPEN_TIMEOUT_S):
            await self._opened.wait()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_track(self, track: Any) -> None:
        # Drain the model's audio so aiortc's receive buffers never fill.
        self._spawn(self._drain(track), "bench-browser-drain")

    async def _drain(self, track: Any) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()

    def _on_message(self, message: str | bytes) -> None:
        try:
            event = json.loads(message)
        except ValueError:
            return
        if not isinstance(event, dict) or event.get("type") != "response.done":
            return
        response = event.get("response") or {}
        if response.get("status") != "completed":
            return
        calls = [o for o in response.get("output") or [] if o.get("type") == "function_call"]
        if calls and self._api is not None:
            self._spawn(self._run_through_bridge(calls), "bench-browser-bridge")

    async def _run_through_bridge(self, calls: list[dict[str, Any]]) -> None:
        assert self._api is not None and self._session is not None
        outputs: list[tuple[str, str]] = []
        for item in calls:
            try:
                reply = await self._api.bridge(
                    self._session, item["name"], item["call_id"], item.get("arguments") or "{}"
                )
            except (BrokerApiError, OSError, TimeoutError) as exc:
                self.bridge_errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
                continue
            if reply.get("handled_by") != "sideband":
                outputs.append((item["call_id"], reply.get("output") or ""))
        if not outputs or self.channel.readyState != "open":
            return
        for call_id, output in outputs:
            self._send(
                {
                    "type": "conversation.item.create",
                    "item": {"type": "function_call_output", "call_id": call_id, "output": output},
                }
            )
        self._send({"type": "response.create"})

    def _send(self, event: dict[str, Any]) -> None:
        self.channel.send(json.dumps(event))

    async def close(self) -> None:
        """Close the peer and stop its tasks; idempotent."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._mic.stop()
        await self.pc.close()


async def make_offer() -> str:
    """A real browser offer (audio and the data channel), made once and reused."""
    browser = BenchBrowser()
    try:
        return await browser.create_offer()
    finally:
        await browser.close()
