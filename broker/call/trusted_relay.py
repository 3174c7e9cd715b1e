"""The relay of a trusted server session: the backend's WebSocket to the call's controller.

A trusted session has no browser: its backend speaks the realtime client and server events
through the broker (``GET /api/v1/sessions/{id}/connect``, :mod:`broker.api.trusted_connect`),
and the provider WebSocket session the broker opened for it *is* the call's sideband. The
call runs under the :class:`~broker.call.supervisor.SidebandSupervisor` like any other (tool
policy, recording, leash, tamper guard, audit, usage, webhook); this module is only the
backend's end of it:

- **Provider → backend.** Every server event the controller reads is also queued for the
  backend (:class:`RelayObserver`), never awaited: a bounded queue, drained by one writer.
  A backend that falls :attr:`~broker.settings.Settings.trusted_relay_queue` events behind
  is disconnected (its session ends ``backend_too_slow``) rather than hold the controller up.
- **Backend → provider.** Each client event goes out through the controller's send path
  (recorded like the broker's own), except what would break the broker's ownership of the
  session, answered with an ``error`` event (code ``broker_owned``) and never forwarded: a
  ``session.update`` touching ``instructions``/``tools``/``tool_choice`` (or ``model``), a
  ``response.create`` overriding them, and a ``conversation.item.create`` of a
  ``function_call`` or ``function_call_output`` (only the model calls, only the broker
  answers).
- **Server tools.** A call of one of the session's ``server_tools`` is decided by the
  dispatcher as any call, and run by :class:`ServerToolExecutor`: ``{"type":
  "broker.tool_call", "call_id", "name", "arguments"}`` to the backend, whose ``{"type":
  "broker.tool_result", "call_id", "output"}`` (a string) is the output. The tool's timeout
  bounds the wait; a backend that goes away fails the call (the model is told).

Metered (:class:`broker.metrics.TrustedMetrics`): frames and bytes each way, and the audio
they carry: the one place media crosses the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import WSMsgType, web
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.audit import trail as audit
from broker.audit.records import Actor, AuditEntry, AuditKind
from broker.db.fence import LeaseLostError
from broker.metrics import RelayDirection, TrustedMetrics
from broker.tools.codes import ToolErrorCode
from broker.tools.executors import MAX_OUTPUT_BYTES, ToolContext, ToolExecutionError
from broker.tools.server_tools import SessionTools
from sideband import AttachKind, CallObserver, Direction, SidebandConnection

logger = logging.getLogger(__name__)

TOOL_CALL_EVENT: Final = "broker.tool_call"
TOOL_RESULT_EVENT: Final = "broker.tool_result"
BROKER_OWNED: Final = "broker_owned"
"""The ``error.code`` of a backend event refused because the broker owns what it touches."""
OWNED_FIELDS: Final = ("instructions", "tools", "tool_choice")
"""What a backend may not set, in a ``session.update`` nor a ``response.create``."""
MODEL_ITEMS: Final = frozenset({"function_call", "function_call_output"})
"""Items only the model (a call) and the broker (its output) put in the conversation."""
AUDIO_FIELDS: Final = {
    "input_audio_buffer.append": "audio",
    "response.output_audio.delta": "delta",
    "response.audio.delta": "delta",
}
"""Events that carry audio (base64 PCM), and the field that holds it."""
MAX_BACKEND_FRAME: Final = 16 * 1024 * 1024
"""The largest frame a backend may send (an audio append of a long buffer), as the sideband
accepts from the provider."""


class TrustedRelay:
    """One trusted session's backend socket, from its upgrade to its close.

    Args:
        session_id: the session (log lines, audit records).
        ws: the backend's WebSocket, prepared.
        metrics: the relay's metrics.
        queue_size: events queued for the backend before it counts as too slow.
    """

    def __init__(
        self,
        session_id: str,
        ws: web.WebSocketResponse,
        metrics: TrustedMetrics,
        *,
        queue_size: int,
    ) -> None:
        self.session_id = session_id
        self._ws = ws
        self._metrics = metrics
        self._queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=queue_size)
        self._pending: dict[str, asyncio.Future[str]] = {}
        self.ready = asyncio.Event()
        """The controller is attached: backend events can go out on the provider socket."""
        self.gone = asyncio.Event()
        """The backend can be sent nothing more (it closed, or fell too far behind)."""
        self.too_slow = False
        """It fell too far behind (:attr:`gone` is set too)."""
        self._send: Callable[[dict[str, Any]], Awaitable[bool]] | None = None

    def attached(self, preamble: Sequence[dict[str, Any]]) -> None:
        """The controller is attached: the provider's first events go to the backend.

        And the backend's events may go out. Not before: until now no one could act on the
        call (an operator's hangup, the backend's leaving) through its controller, so the
        backend learns of its session only now.
        """
        for event in preamble:
            self.forward(event)
        self.ready.set()

    def bind(self, send: Callable[[dict[str, Any]], Awaitable[bool]]) -> None:
        """The controller's send path, where the backend's events go (set by the supervisor)."""
        self._send = send

    # ---- provider → backend ------------------------------------------------------------------

    def forward(self, event: dict[str, Any]) -> None:
        """Queue ``event`` for the backend; never blocks (a full queue drops the backend)."""
        if self.gone.is_set():
            return
        text = json.dumps(event, separators=(",", ":"))
        try:
            self._queue.put_nowait(text)
        except asyncio.QueueFull:
            logger.warning(
                "trusted backend too slow; disconnecting session_id=%s queued=%d",
                self.session_id,
                self._queue.qsize(),
            )
            self.too_slow = True
            self._went()
            return
        self._metrics.relayed(RelayDirection.TO_BACKEND, len(text), _audio_bytes(event))

    async def write(self) -> None:
        """Send the queued events to the backend, in order, until it is gone."""
        while not self.gone.is_set():
            text = await self._queue.get()
            if text is None:
                return
            try:
                await self._ws.send_str(text)
            except (ConnectionError, RuntimeError):
                self._went()
                return

    def finish(self) -> None:
        """Nothing more will be queued: the writer sends what is queued, then returns."""
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)

    def _went(self) -> None:
        """The backend can get nothing more: its tool calls fail now, not at their timeout."""
        self.gone.set()
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)  # wakes the writer (a full queue: it sees `gone`)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(
                    ToolExecutionError(
                        ToolErrorCode.TOOL_UNREACHABLE,
                        "the service running this tool disconnected before answering",
                    )
                )

    # ---- server tools ------------------------------------------------------------------------

    async def call_tool(self, call_id: str, name: str, arguments: str) -> str:
        """Hand the call to the backend and wait for its ``broker.tool_result``.

        The dispatcher bounds the wait with the tool's timeout.

        Raises:
            ToolExecutionError: the backend is gone, or answered an invalid output.
        """
        if self.gone.is_set():
            raise ToolExecutionError(
                ToolErrorCode.TOOL_UNREACHABLE, "the service running this tool is not connected"
            )
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        try:
            self.forward(
                {"type": TOOL_CALL_EVENT, "call_id": call_id, "name": name, "arguments": arguments}
            )
            return await future
        finally:
            self._pending.pop(call_id, None)

    def _tool_result(self, event: dict[str, Any]) -> str | None:
        """Settle a waiting call with the backend's output; an error message if refused."""
        call_id = event.get("call_id")
        future = self._pending.get(call_id) if isinstance(call_id, str) else None
        if future is None or future.done():
            return "no server tool call with this call_id is waiting for a result"
        output = event.get("output")
        if not isinstance(output, str) or len(output.encode("utf-8", "replace")) > MAX_OUTPUT_BYTES:
            future.set_exception(
                ToolExecutionError(
                    ToolErrorCode.TOOL_BAD_RESPONSE,
                    "the service running this tool answered with an invalid output",
                )
            )
            return f"output must be a string of at most {MAX_OUTPUT_BYTES} bytes"
        future.set_result(output)
        return None

    # ---- backend → provider ------------------------------------------------------------------

    async def read(self) -> None:
        """Handle the backend's frames until it closes (or is gone); then it is gone."""
        try:
            async for message in self._ws:
                if message.type is WSMsgType.TEXT:
                    await self._from_backend(message.data)
                elif message.type is WSMsgType.BINARY:
                    self._refuse(None, "invalid_event", "events are JSON text frames")
                if self.gone.is_set():
                    return
        finally:
            self._went()

    async def _from_backend(self, text: str) -> None:
        try:
            event = json.loads(text)
        except ValueError:
            self._refuse(None, "invalid_json", "the frame is not JSON")
            return
        kind = event.get("type") if isinstance(event, dict) else None
        if not isinstance(kind, str):
            self._refuse(None, "invalid_event", "an event is a JSON object with a string type")
            return
        event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        if kind == TOOL_RESULT_EVENT:
            refused = self._tool_result(event)
            if refused is not None:
                self._refuse(event_id, "invalid_tool_result", refused)
            return
        owned = broker_owned(event)
        if owned is not None:
            logger.warning(
                "trusted backend event refused session_id=%s type=%s: %s",
                self.session_id,
                kind,
                owned,
            )
            self._refuse(event_id, BROKER_OWNED, owned)
            return
        if kind.startswith("broker."):
            self._refuse(
                event_id, "unknown_broker_event", "the only broker event is broker.tool_result"
            )
            return
        await self.ready.wait()
        assert self._send is not None
        if await self._send(event):
            self._metrics.relayed(RelayDirection.TO_PROVIDER, len(text), _audio_bytes(event))
        else:
            self._refuse(event_id, "session_not_connected", "the provider session is closed")

    def _refuse(self, event_id: str | None, code: str, message: str) -> None:
        """Answer the backend with an ``error`` event, as the provider answers a bad one."""
        self.forward(
            {
                "type": "error",
                "event_id": "event_broker_" + secrets.token_hex(8),
                "error": {
                    "type": "invalid_request_error",
                    "code": code,
                    "message": message,
                    "param": None,
                    "event_id": event_id,
                },
            }
        )


def broker_owned(event: dict[str, Any]) -> str | None:
    """Why the broker refuses a backend's client event (``None``: it goes to the provider)."""
    kind = event.get("type")
    if kind == "session.update":
        session = event.get("session")
        owned = (*OWNED_FIELDS, "model")  # the model is the broker's choice (and its bill)
        touched = [f for f in owned if isinstance(session, dict) and f in session]
        if touched:
            return f"the broker owns the session's {', '.join(touched)}"
    elif kind == "response.create":
        response = event.get("response")
        touched = [f for f in OWNED_FIELDS if isinstance(response, dict) and f in response]
        if touched:
            return f"a response may not override the session's {', '.join(touched)}"
    elif kind == "conversation.item.create":
        item = event.get("item")
        item_type = item.get("type") if isinstance(item, dict) else None
        if item_type in MODEL_ITEMS:
            return f"only the model and the broker add {item_type} items"
    return None


def _audio_bytes(event: dict[str, Any]) -> int:
    """The PCM bytes an audio event carries (its base64's decoded size, not decoded)."""
    field = AUDIO_FIELDS.get(event.get("type"))  # type: ignore[arg-type]
    data = event.get(field) if field is not None else None
    if not isinstance(data, str) or not data:
        return 0
    return max(0, len(data) * 3 // 4 - data[-2:].count("="))


class RelayObserver:
    """The call's observer, with every server event also queued for the backend."""

    def __init__(
        self, inner: CallObserver, relay: TrustedRelay, preamble: Sequence[dict[str, Any]]
    ) -> None:
        self._inner = inner
        self._relay = relay
        self._preamble = preamble

    def record(self, direction: Direction, event: dict[str, Any]) -> None:
        self._inner.record(direction, event)
        if direction == "in":
            self._relay.forward(event)

    async def attached(self, kind: AttachKind) -> None:
        await self._inner.attached(kind)
        self._relay.attached(self._preamble)

    async def detached(self, close_code: int | None) -> None:
        await self._inner.detached(close_code)


class ServerToolExecutor:
    """Runs a trusted session's server tools: each call goes to its backend (``broker.tool_call``).

    The forward is audited (``tool.forwarded``) before it is sent; the dispatcher records the
    rest (``tool.requested`` before, ``tool.succeeded``/``tool.failed`` after).
    """

    def __init__(
        self,
        relay: TrustedRelay,
        sessionmaker: async_sessionmaker[AsyncSession],
        service_id: str | None,
    ) -> None:
        self._relay = relay
        self._sessionmaker = sessionmaker
        self._service_id = service_id

    async def __call__(self, arguments: dict[str, Any], context: ToolContext) -> str:
        try:
            await audit.append(
                self._sessionmaker,
                AuditEntry(
                    AuditKind.TOOL_FORWARDED,
                    Actor.BROKER,
                    {"call_id": context.call_id, "service_id": self._service_id},
                    session_id=context.session_id,
                    tool=context.tool,
                ),
            )
        except (SQLAlchemyError, LeaseLostError) as exc:
            # The call's own records (requested, settled) still say it ran.
            logger.error(
                "audit record not written session_id=%s kind=tool.forwarded error=%s",
                context.session_id,
                type(exc).__name__,
            )
        text = json.dumps(arguments, separators=(",", ":"), ensure_ascii=False)
        return await self._relay.call_tool(context.call_id, context.tool, text)


@dataclass(frozen=True)
class TrustedLink:
    """What the supervisor runs a trusted session's call with, instead of attaching.

    Attributes:
        connection: the provider WebSocket session, open and configured: the call's only
            sideband (never re-attached: a lost one ends the session).
        relay: the backend's end.
        tools: the registry with the session's server tools over it.
        preamble: the frames exchanged on ``connection`` before the controller ran (the
            provider's ``session.created``, the broker's ``session.update``, its answer), for
            the event log.
    """

    connection: SidebandConnection
    relay: TrustedRelay
    tools: SessionTools
    preamble: Sequence[tuple[Direction, dict[str, Any]]] = ()

    def observe(self, inner: CallObserver) -> CallObserver:
        received = [frame for direction, frame in self.preamble if direction == "in"]
        return RelayObserver(inner, self.relay, received)
