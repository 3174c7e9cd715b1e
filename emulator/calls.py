"""Calls: one :class:`Call` per WebRTC call (or WebSocket session, or phone call).

A :class:`Call` owns one :class:`~emulator.peer.Peer` (none for a WebSocket session,
:mod:`emulator.sessions`), the attached sidebands, a worker
task that processes client events one at a time, and at most one running response. This
module holds its lifecycle, its sidebands and the worker; the other parts are its bases:

- :mod:`emulator._call_base`: the call's state, its tasks, and the fan-out of server events
  (every connection sees the same order; ``error`` events go only to their sender);
- :mod:`emulator._call_conversation`: the ``conversation.item.*`` client events;
- :mod:`emulator._call_responses`: ``response.create``/``response.cancel`` and the responses;
- :mod:`emulator._call_audio_in`: input audio, turn detection, commits and transcription.

The recorder's records are :mod:`emulator._recorder`'s; the registry of calls is
:mod:`emulator.call_registry`'s.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Final

from ._call_audio_in import CallAudioInput
from ._call_conversation import CallConversation
from ._call_responses import CallResponses
from ._events import error_event, server_event, session_event
from ._links import SidebandLink
from ._recorder import ReceivedClientEvent, Source, recorded
from ._session import check_session_fields, merge_session, turn_detection
from .errors import ClientEventError
from .faults import Faults

logger = logging.getLogger(__name__)

SIDEBAND_CLOSE_WAIT_S: Final = 2.0  # bound on waiting for sidebands to finish closing


class Call(CallConversation, CallResponses, CallAudioInput):
    """One WebRTC call and its session.

    Public attributes are for inspection by tests: ``call_id``, ``location`` (the exact
    ``Location`` header sent), ``session`` (effective config), ``received`` (every client
    event from every connection, in arrival order), ``sent`` (every server event the call
    produced, in order, each once however many connections got it), ``sideband_attaches``
    (the ``call_id`` query value of each accepted sideband), ``ended``/``end_reason`` and
    ``conversation``.

    ``page_events``, when given, is the only server event types the data channel receives
    (Azure's ``?webrtcfilter=on``); sidebands always receive every event.

    ``media="websocket"`` makes a call without a peer (a WebSocket session): no data
    channel, and responses carry their audio as ``response.output_audio.delta`` events
    (:class:`~emulator._streamed_audio.StreamedVoice`) instead of RTP.
    """

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self, offer_sdp: str) -> str:
        """Answer the offer and start the call's tasks; returns the answer SDP.

        Raises:
            InvalidSdpError: the offer is unusable (the caller must then :meth:`end` the call).
        """
        if self._peer is None:
            raise RuntimeError("a call without a peer takes no offer")
        answer = await self._peer.answer(offer_sdp)
        self._spawn(self._work(), f"call-worker:{self.call_id}")
        self._spawn(self._watch_peer(), f"call-peer-watch:{self.call_id}")
        return answer

    async def _watch_peer(self) -> None:
        assert self._peer is not None
        await self._peer.wait_ended()
        await self.end("peer_closed")

    async def end(self, reason: str, *, close_code: int = 1000, abort: bool = False) -> None:
        """End the call: close sidebands (``close_code``), the peer and every task; idempotent.

        ``abort`` cuts the sidebands' transports instead, without a close frame (clients see
        1006): how a phone caller's hangup has been seen to end a sideband (docs/protocol.md
        §0). A second caller waits for the first to finish. Safe to call from one of the
        call's own tasks (that task is not cancelled).
        """
        if self.ended:
            if asyncio.current_task() not in self._tasks:
                await self._end_done.wait()
            return
        self.ended = True
        self.end_reason = reason
        self._close_code = close_code
        logger.info("call %s ended reason=%s", self.call_id, reason)
        try:
            links = list(self._sidebands.values())
            for link in links:
                if abort:
                    link.request_abort()
                else:
                    link.request_close(close_code)
            if links:
                try:
                    async with asyncio.timeout(SIDEBAND_CLOSE_WAIT_S):
                        for link in links:
                            await link.detached.wait()
                except TimeoutError:
                    logger.warning("call %s: sidebands slow to close", self.call_id)
            if self._peer is not None:
                await self._peer.close()
            current = asyncio.current_task()
            tasks = [t for t in self._tasks if t is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._active = None
            self._out_of_band.clear()
        finally:
            self._end_done.set()

    async def wait_ended(self) -> None:
        """Return once the call has ended (:meth:`end` finished), whoever ended it."""
        await self._end_done.wait()

    def sideband_ready(self) -> bool:
        """Whether a sideband may attach now (``sideband_ready_delay`` has passed)."""
        elapsed = time.monotonic() - self.created_at
        return not self.ended and elapsed >= self._settings.sideband_ready_delay

    def attach_sideband(self, call_id_query: str, *, faults: Faults | None = None) -> SidebandLink:
        """Register an upgraded sideband socket; it receives every later server event.

        ``faults`` (the app's fault switches) lets the link drop, delay or filter events.
        """
        link = SidebandLink(call_id_query, faults=faults)
        if self.ended:
            # The call ended while the handshake was upgrading: close as the others were.
            link.request_close(self._close_code)
            return link
        if self._faults.current.single_sideband:
            for earlier in self._sidebands.values():
                earlier.request_close(1000)
        self._sidebands[link.connection_id] = link
        self.sideband_attaches.append(call_id_query)
        logger.info("call %s: sideband %s attached", self.call_id, link.connection_id)
        if self._settings.replay_session_created_to_sideband:
            event = session_event("session.created", self.session)
            self.sent.append(event)
            link.deliver(json.dumps(event), event_type="session.created")
        return link

    def detach_sideband(self, link: SidebandLink) -> None:
        self._sidebands.pop(link.connection_id, None)
        link.detached.set()
        logger.info("call %s: sideband %s detached", self.call_id, link.connection_id)

    @property
    def sidebands(self) -> list[SidebandLink]:
        """The sidebands attached now, in attach order."""
        return list(self._sidebands.values())

    def close_sidebands(self, code: int) -> None:
        """Ask every attached sideband to close with ``code`` (used at app shutdown)."""
        for link in self._sidebands.values():
            link.request_close(code)

    # ---- client events ---------------------------------------------------------------

    def _on_dc_message(self, raw: str) -> None:
        self.submit("datachannel", self._dc_connection_id, raw)

    def submit(self, source: Source, connection_id: str, raw: str) -> None:
        """Record a client event and queue it for the call's worker.

        Text that is not a JSON object is not recorded (it is no event); it is answered
        with an ``invalid_json`` error to the sender.
        """
        if self.ended:
            return
        try:
            event = json.loads(raw)
        except ValueError:
            event = None
        if isinstance(event, dict):
            self.received.append(
                ReceivedClientEvent(source, connection_id, recorded(event), time.time())
            )
            self._inbox.put_nowait((source, connection_id, event))
        else:
            self._inbox.put_nowait((source, connection_id, None))

    async def _work(self) -> None:
        while True:
            source, connection_id, event = await self._inbox.get()
            if self.ended:
                continue  # end() is closing everything; late events change nothing
            try:
                self._process(event, source, connection_id)
            except ClientEventError as exc:
                client_event_id = event.get("event_id") if event else None
                if not isinstance(client_event_id, str):
                    client_event_id = None
                code = self._faults.current.missing_item_error_code
                if exc.code == "item_not_found" and code != exc.code:
                    exc = ClientEventError(code, exc.message, param=exc.param, type_=exc.type)
                self._reply(source, connection_id, error_event(exc, client_event_id))
            except Exception:
                # A bug in the emulator: report it to the sender and keep serving the call.
                logger.exception("call %s: failed to process a client event", self.call_id)
                failure = ClientEventError("server_error", "Internal error.", type_="server_error")
                self._reply(source, connection_id, error_event(failure, None))

    def _process(self, event: dict[str, Any] | None, source: Source, connection_id: str) -> None:
        if event is None:
            raise ClientEventError("invalid_json", "The message is not a JSON object.")
        match event.get("type"):
            case "session.update":
                self._session_update(event, source, connection_id)
            case "conversation.item.create":
                self._item_create(event, source, connection_id)
            case "conversation.item.delete":
                self._item_delete(event)
            case "conversation.item.retrieve":
                self._item_retrieve(event)
            case "conversation.item.truncate":
                self._item_truncate(event)
            case "input_audio_buffer.append":
                self._input_append(event)
            case "input_audio_buffer.commit":
                self._input_commit()
            case "input_audio_buffer.clear":
                self._input.clear()
                self._speech_item_id = None
                self.broadcast(server_event("input_audio_buffer.cleared"))
            case "output_audio_buffer.clear":
                self._speaker.clear()
            case "response.create":
                self._response_create(event)
            case "response.cancel":
                self._response_cancel(event)
            case None:
                raise ClientEventError(
                    "missing_required_parameter",
                    "Missing required parameter: 'type'.",
                    param="type",
                )
            case other:
                raise ClientEventError(
                    "unknown_event", f"Unsupported event type: {other!r}.", param="type"
                )

    def _session_update(self, event: dict[str, Any], source: Source, connection_id: str) -> None:
        if "session" not in event:
            raise ClientEventError(
                "missing_required_parameter",
                "Missing required parameter: 'session'.",
                param="session",
            )
        update = check_session_fields(event["session"])
        # Only a valid update is refused: an invalid one gets its own error and keeps the count.
        refusal = None if source == "datachannel" else self._faults.take_session_update_error()
        if refusal is not None:
            raise ClientEventError(
                refusal.code, "The session update could not be applied.", param="session"
            )
        faults = self._faults.current
        if faults.keep_instructions_on_empty and update.get("instructions") == "":
            update = {k: v for k, v in update.items() if k != "instructions"}
        merge_session(self.session, update)
        self._input.configure(turn_detection(self.session))
        updated = session_event("session.updated", self.session)
        if source == "datachannel" and faults.sideband_misses_page_session_updates:
            self._reply(source, connection_id, updated)  # the sender is always answered
        else:
            self.broadcast(updated)

    def snapshot(self) -> dict[str, Any]:
        """The JSON served by ``GET /_emulator/calls/{call_id}``."""
        return {
            "call_id": self.call_id,
            "location": self.location,
            "ended": self.ended,
            "end_reason": self.end_reason,
            "session": self.session,
            "sideband_attaches": list(self.sideband_attaches),
            "received": [
                {"source": r.source, "connection_id": r.connection_id, "event": r.event}
                for r in self.received
            ],
            "conversation": self.conversation,
        }
