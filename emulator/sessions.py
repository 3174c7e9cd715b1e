"""WebSocket sessions: ``GET /v1/realtime?model=…`` without a ``call_id`` (no WebRTC).

The provider's server-to-server mode: the socket itself is the session's one connection.
The first server event is ``session.created`` (the session a call would get, ``model`` from
the query); after it the socket sends and receives exactly the client and server events a
call's sideband does (:mod:`emulator.calls` processes them), except that the model's audio
travels in the event stream as ``response.output_audio.delta`` (base64, the session's
``audio.output.format``, PCM16 24 kHz mono by default) and ``response.output_audio.done``,
next to ``response.output_audio_transcript.*``; user audio comes in as
``input_audio_buffer.append``. There is no ``output_audio_buffer.*`` (nothing plays here).
Closing the socket ends the session; ending the session (``/_emulator/calls/{id}/end``,
app shutdown) closes the socket.

Authentication: the standard key, or a live client secret (``ek_…``), as the real service
accepts ephemeral keys on WebSocket sessions; a secret's session config becomes the
session's (its model wins over the query's). Only the ``openai`` flavour serves sessions
(the broker's Azure provider does not use them).

Sessions are registered with the calls, under their session id (``sess_…``), so the admin
routes (inspect, end, heard) work on them; a sideband cannot attach to one.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import quote

from aiohttp import web

from ._auth import authorize_call_creation
from ._events import session_event
from ._keys import CALL_REGISTRY, FAULTS, SETTINGS
from ._links import SidebandLink
from ._session import initial_session
from .calls import Call
from .faults import Faults
from .settings import EmulatorSettings
from .sideband import (
    CLOSE_TIMEOUT_S,
    HEARTBEAT_S,
    MAX_MSG_BYTES,
    SidebandSocketError,
    read_loop,
    sideband_handler,
    write_loop,
)

logger = logging.getLogger(__name__)


class RealtimeSession(Call):
    """A session without a peer, whose one connection is a WebSocket.

    ``call_id`` is the session id (``session["id"]``); ``location`` is the URL path it was
    opened with. Everything else is :class:`~emulator.calls.Call`'s.
    """

    def __init__(
        self, session: dict[str, Any], settings: EmulatorSettings, faults: Faults | None = None
    ) -> None:
        super().__init__(str(session["id"]), session, settings, faults, media="websocket")
        self.location = f"/v1/realtime?model={quote(str(session.get('model', '')), safe='')}"

    def open(self, faults: Faults | None = None) -> SidebandLink:
        """Start the session's worker; return the socket's link, ``session.created`` queued.

        ``faults`` (the app's switches) applies the sideband fault switches to this socket.
        """
        self._spawn(self._work(), f"session-worker:{self.call_id}")
        link = SidebandLink("", faults=faults)
        self._sidebands[link.connection_id] = link
        event = session_event("session.created", self.session)
        self.sent.append(event)
        link.deliver(json.dumps(event), event_type="session.created")
        logger.info("session %s opened model=%s", self.call_id, self.session.get("model"))
        return link

    def snapshot(self) -> dict[str, Any]:
        """The call's snapshot, plus ``media: "websocket"``."""
        return {**super().snapshot(), "media": self.media}


async def realtime_handler(request: web.Request) -> web.StreamResponse:
    """``GET /v1/realtime``: a sideband, or a WebSocket session.

    ``?call_id=`` attaches a sideband; only ``?model=`` (openai flavour) opens a session.
    """
    settings = request.app[SETTINGS]
    if "call_id" in request.query or "model" not in request.query or settings.flavor != "openai":
        return await sideband_handler(request)
    return await session_handler(request)


async def session_handler(request: web.Request) -> web.StreamResponse:
    """Open a WebSocket session; returns when the socket closes (the session then ends).

    Refused before the upgrade with 401 ``invalid_api_key`` for a bad key or an unknown or
    expired client secret.
    """
    secret = authorize_call_creation(request)
    session = (
        secret.session_for_call(None)
        if secret is not None
        else initial_session(None, request.query.get("model"))
    )
    ws = web.WebSocketResponse(
        timeout=CLOSE_TIMEOUT_S,
        receive_timeout=None,  # a session may sit idle between turns
        heartbeat=HEARTBEAT_S,
        max_msg_size=MAX_MSG_BYTES,
    )
    await ws.prepare(request)
    faults = request.app[FAULTS]
    realtime = RealtimeSession(session, request.app[SETTINGS], faults)
    request.app[CALL_REGISTRY].add(realtime)
    link = realtime.open(faults)
    try:
        async with asyncio.TaskGroup() as tasks:
            writer = tasks.create_task(
                write_loop(ws, link, request.transport),
                name=f"session-writer:{realtime.call_id}",
            )
            try:
                await read_loop(ws, realtime, link, source="websocket")
            except SidebandSocketError as exc:
                logger.info("session %s: socket failed: %s", realtime.call_id, exc)
            link.request_close(1000)
            await writer
    finally:
        realtime.detach_sideband(link)
        await realtime.end("client_closed")
    return ws
