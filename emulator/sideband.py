"""The sideband WebSocket: ``GET /v1/realtime?call_id=…`` (docs/protocol.md §2).

Each accepted socket gets exactly one reader (this handler's loop) and one writer task that
drains the call's per-connection queue, so fan-out never waits on a slow socket and the
order of server events is the call's order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Final

from aiohttp import WSMsgType, web

from ._auth import bearer_is_client_secret, require_api_key
from ._keys import CALL_REGISTRY, FAULTS, SETTINGS
from ._links import AbortRequest, CloseRequest, Outgoing, SidebandLink
from ._recorder import Source
from .calls import Call
from .errors import EmulatorError, call_not_found, injected_failure

logger = logging.getLogger(__name__)

HEARTBEAT_S: Final = 20.0
CLOSE_TIMEOUT_S: Final = 5.0
MAX_MSG_BYTES: Final = 16 * 1024 * 1024  # audio appends may be large (base64 PCM)


class SidebandSocketError(EmulatorError):
    """The sideband socket failed at the transport level."""

    def __init__(self, cause: BaseException | None) -> None:
        super().__init__(f"sideband socket error: {cause!r}")
        self.cause = cause


async def sideband_handler(request: web.Request) -> web.StreamResponse:
    """Attach a sideband to a live call.

    Refused before the upgrade with 401 ``invalid_api_key`` for a bad key, and with 404
    ``call_id_not_found`` for a client secret (after ``ephemeral_sideband_delay``), an
    unknown or ended call, or one younger than ``sideband_ready_delay`` or the
    ``sideband_unavailable_ms`` fault. Returns when
    either side closes the socket, or when a fault aborts it; ending the call closes it with
    the call's close code.
    """
    call_id = request.query.get("call_id", "")
    if bearer_is_client_secret(request):
        # What the real service was seen answering an ephemeral-key sideband (docs/protocol.md
        # §2.5 item 1): the call "does not exist" for that credential, and only after a while.
        await asyncio.sleep(request.app[SETTINGS].ephemeral_sideband_delay)
        raise call_not_found(call_id)
    require_api_key(request)
    faults = request.app[FAULTS]
    failure = faults.take_sideband_attach_error()
    if failure is not None:
        raise injected_failure(failure)
    call = request.app[CALL_REGISTRY].get(call_id) if call_id else None
    if (
        call is None
        or call.media == "websocket"  # a WebSocket session is no call: nothing attaches to it
        or not call.sideband_ready()
        or faults.sideband_unavailable(time.monotonic() - call.created_at)
    ):
        raise call_not_found(call_id)
    ws = web.WebSocketResponse(
        timeout=CLOSE_TIMEOUT_S,
        receive_timeout=None,  # sidebands may sit idle for the whole call
        heartbeat=HEARTBEAT_S,
        max_msg_size=MAX_MSG_BYTES,
    )
    await ws.prepare(request)
    link = call.attach_sideband(call_id, faults=faults)
    try:
        async with asyncio.TaskGroup() as tasks:
            writer = tasks.create_task(
                write_loop(ws, link, request.transport),
                name=f"sideband-writer:{link.connection_id}",
            )
            try:
                await read_loop(ws, call, link)
            except SidebandSocketError as exc:
                logger.info(
                    "call %s: sideband %s failed: %s", call.call_id, link.connection_id, exc
                )
            # Let the writer flush and finish the close handshake rather than cancelling it.
            link.request_close(1000)
            await writer
    finally:
        call.detach_sideband(link)
    return ws


async def read_loop(
    ws: web.WebSocketResponse, call: Call, link: SidebandLink, source: Source = "sideband"
) -> None:
    """Submit every text frame to ``call`` as a client event from ``source``; return on close.

    Raises:
        SidebandSocketError: the socket failed.
    """
    while True:
        msg = await ws.receive()
        match msg.type:
            case WSMsgType.TEXT:
                call.submit(source, link.connection_id, msg.data)
            case WSMsgType.BINARY:
                call.submit(source, link.connection_id, msg.data.decode("utf-8", "replace"))
            case WSMsgType.PING | WSMsgType.PONG | WSMsgType.CONTINUATION:
                continue  # autoping answers pings; aiohttp reassembles continuations
            case WSMsgType.CLOSE | WSMsgType.CLOSING | WSMsgType.CLOSED:
                return
            case WSMsgType.ERROR:
                raise SidebandSocketError(ws.exception())
            case _:
                # Unreachable: every WSMsgType is listed. mypy cannot prove it (the enum's
                # lowercase aliases count as members), hence no assert_never.
                logger.warning("sideband %s: unexpected frame %r", link.connection_id, msg.type)


async def write_loop(
    ws: web.WebSocketResponse, link: SidebandLink, transport: asyncio.Transport | None
) -> None:
    """Drain ``link.outbox`` into the socket, applying the link's fault switches.

    Also the writer of a WebSocket session's socket (:mod:`emulator.sessions`).
    """
    if link.drop_after_events == 0:
        _abort(link, transport)
        return
    while True:
        item = await link.outbox.get()
        if link.abort_requested.is_set() or isinstance(item, AbortRequest):
            _abort(link, transport)
            return
        if isinstance(item, CloseRequest):
            await ws.close(code=item.code)
            return
        if not await _hold(link, item):
            _abort(link, transport)
            return
        try:
            await ws.send_str(item.text)
        except ConnectionResetError:
            # The client went away; the reader sees the close and ends the handler.
            return
        link.sent += 1
        if link.drop_after_events is not None and link.sent >= link.drop_after_events:
            _abort(link, transport)
            return


async def _hold(link: SidebandLink, item: Outgoing) -> bool:
    """Wait out the event delay fault; ``False`` if an abort was requested meanwhile."""
    wait = item.queued_at + link.event_delay_s - time.monotonic()
    if wait > 0:
        # Sleeping on an event (not asyncio.sleep) lets a close or a drop cut it short.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await link.hurry.wait()
    return not link.abort_requested.is_set()


def _abort(link: SidebandLink, transport: asyncio.Transport | None) -> None:
    # Closing the TCP transport without a close frame is what a dropped connection looks
    # like to the client: aiohttp and websockets both report code 1006. The reader then
    # sees the socket closed and ends the handler.
    logger.info("sideband %s: transport aborted (fault injection)", link.connection_id)
    if transport is not None:
        transport.abort()
