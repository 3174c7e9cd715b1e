"""The per-call brain: watch the sideband, run finished function calls once, answer the model.

The controller never executes a tool itself. The broker injects a :class:`ToolCallHandler` that
records, authorizes and runs calls, so this module knows nothing about databases or policy.

Rules it keeps (PROTOCOL.md §3):

* A function call is *seen* on ``response.function_call_arguments.done`` but only *final* when
  the ``response.done`` that lists it has status ``completed``: arguments-done also fires for
  cancelled responses, so side effects wait for the final status.
* Every call of a completed response gets one ``function_call_output``; then one
  ``response.create`` is sent, never while another response is active (the provider rejects it
  with ``conversation_already_has_active_response``; if it does anyway, we retry after the next
  ``response.done``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from sideband.connection import SidebandConnection
from sideband.errors import MalformedEventError, SidebandClosedError
from sideband.events import (
    ErrorEvent,
    FunctionCallArgumentsDone,
    Item,
    ResponseCreated,
    ResponseDone,
    ServerEvent,
    function_call_output,
    parse_server_event,
    response_create,
)

logger = logging.getLogger(__name__)

Direction = Literal["in", "out"]


@dataclass(frozen=True)
class FunctionCall:
    """A function call the model emitted on this call."""

    call_id: str
    name: str
    arguments: str
    response_id: str
    item_id: str | None = None


@dataclass(frozen=True)
class ToolResult:
    """What to tell the model about a call.

    Attributes:
        output: the ``function_call_output`` text, sent verbatim.
        inject: ``False`` when another path (the browser bridge) already answered this call, so
            a second output must not be sent.
    """

    output: str
    inject: bool = True


class ToolCallHandler(Protocol):
    """The broker's side of function calling; every method is called with one call at a time."""

    async def call_seen(self, call: FunctionCall) -> None:
        """The model finished the call's arguments; not final yet. Must not execute anything."""

    async def call_abandoned(self, call: FunctionCall, response_status: str) -> None:
        """The response carrying the call ended without completing; it will never run."""

    async def execute(self, call: FunctionCall) -> ToolResult:
        """Run the call at most once (whatever path asks) and return what the model gets.

        Tool failures and denials are results, not exceptions; an exception here is a broker
        fault and ends the controller.
        """

    async def output_sent(self, call: FunctionCall) -> None:
        """The call's output went out on the sideband."""


class CallObserver(Protocol):
    """Sees the sideband's traffic; ``record`` runs on the reader's path and must not block."""

    def record(self, direction: Direction, event: dict[str, Any]) -> None: ...

    async def attached(self) -> None:
        """The sideband is connected and the reader is about to start."""


class CallController:
    """Runs one call's sideband from attach to close.

    Args:
        call_id: the provider's call id.
        connect: opens the sideband (with its own bounded retry).
        tools: the broker's handler for function calls.
        observer: sees every event in and out.
    """

    def __init__(
        self,
        call_id: str,
        connect: Callable[[], Awaitable[SidebandConnection]],
        tools: ToolCallHandler,
        observer: CallObserver,
    ) -> None:
        self.call_id = call_id
        self._connect = connect
        self._tools = tools
        self._observer = observer
        self._conn: SidebandConnection | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._seen: dict[str, asyncio.Task[None]] = {}
        self._answering: set[str] = set()
        self._stopping = False
        self._active_response: str | None = None
        self._response_create_wanted = False
        self._response_create_event_id: str | None = None

    async def run(self) -> int | None:
        """Attach, then handle events until the sideband closes; returns the close code.

        Cancellation-safe: cancelling closes the socket and cancels in-flight tool work.

        Raises:
            SidebandError: attach failed, or the transport broke.
            ExceptionGroup: a handler fault in a tool task.
        """
        conn = await self._connect()
        self._conn = conn
        if self._stopping:
            await conn.close()
        try:
            await self._observer.attached()
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                async for data in conn.frames():
                    self._observer.record("in", data)
                    try:
                        event = parse_server_event(data)
                    except MalformedEventError as exc:
                        logger.warning("sideband event skipped call_id=%s: %s", self.call_id, exc)
                        continue
                    await self._on_event(event)
        finally:
            self._tasks = None
            await conn.close()
        return conn.close_code

    @property
    def attached(self) -> bool:
        return self._conn is not None

    async def stop(self) -> None:
        """Close the sideband so :meth:`run` returns once in-flight tool work has finished.

        The call itself goes on at the provider. Outputs of tools still running when the
        socket closes stay recorded by the handler; they are not sent.
        """
        self._stopping = True
        if self._conn is not None:
            await self._conn.close()

    async def _on_event(self, event: ServerEvent) -> None:
        # Runs on the reader: anything slow is handed to a task so events keep flowing.
        if isinstance(event, ResponseCreated):
            self._active_response = event.response.id
        elif isinstance(event, FunctionCallArgumentsDone):
            call = FunctionCall(
                call_id=event.call_id,
                name=event.name,
                arguments=event.arguments,
                response_id=event.response_id,
                item_id=event.item_id,
            )
            if event.call_id not in self._seen:
                self._seen[event.call_id] = self._spawn(
                    self._tools.call_seen(call), f"tool-seen:{event.call_id}"
                )
        elif isinstance(event, ResponseDone):
            if self._active_response == event.response.id:
                self._active_response = None
            calls = [
                self._call_from_item(item, event.response.id) for item in event.response.output
            ]
            # A call is answered once per connection even if its response.done is repeated.
            finals = [c for c in calls if c is not None and c.call_id not in self._answering]
            if finals and event.response.status == "completed":
                self._answering.update(call.call_id for call in finals)
                self._spawn(self._answer(finals), f"tool-answer:{event.response.id}")
            elif finals:
                self._spawn(
                    self._abandon(finals, event.response.status),
                    f"tool-abandon:{event.response.id}",
                )
            if self._response_create_wanted and self._active_response is None:
                await self._send_response_create()
        elif isinstance(event, ErrorEvent):
            error = event.error
            if (
                error.code == "conversation_already_has_active_response"
                and error.event_id is not None
                and error.event_id == self._response_create_event_id
            ):
                # Someone (VAD, the browser) started a response first; ask again after it ends.
                self._response_create_wanted = True
            else:
                logger.warning(
                    "provider error call_id=%s code=%s event_id=%s",
                    self.call_id,
                    error.code,
                    error.event_id,
                )

    @staticmethod
    def _call_from_item(item: Item, response_id: str) -> FunctionCall | None:
        if item.type != "function_call" or not item.call_id or item.name is None:
            return None
        return FunctionCall(
            call_id=item.call_id,
            name=item.name,
            arguments=item.arguments or "",
            response_id=response_id,
            item_id=item.id,
        )

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        assert self._tasks is not None, "tasks are only spawned by the reader"
        return self._tasks.create_task(coro, name=f"{name}:{self.call_id}")

    async def _await_seen(self, call: FunctionCall) -> None:
        # The seen-record must exist before execution; a response.done may list a call whose
        # arguments-done we never saw (attached late), so record it now in that case.
        seen = self._seen.get(call.call_id)
        if seen is None:
            await self._tools.call_seen(call)
        else:
            await seen

    async def _abandon(self, calls: list[FunctionCall], status: str) -> None:
        for call in calls:
            await self._await_seen(call)
            await self._tools.call_abandoned(call, status)

    async def _answer(self, calls: list[FunctionCall]) -> None:
        for call in calls:
            await self._await_seen(call)
        async with asyncio.TaskGroup() as group:
            runs = [
                group.create_task(self._tools.execute(call), name=f"tool:{call.call_id}")
                for call in calls
            ]
        injected = False
        for call, run in zip(calls, runs, strict=True):
            result = run.result()
            if not result.inject:
                continue
            if not await self._send(function_call_output(call.call_id, result.output)):
                return
            await self._tools.output_sent(call)
            injected = True
        if injected:
            if self._active_response is None:
                await self._send_response_create()
            else:
                self._response_create_wanted = True

    async def _send_response_create(self) -> None:
        self._response_create_wanted = False
        event = response_create()
        self._response_create_event_id = event["event_id"]
        await self._send(event)

    async def _send(self, event: dict[str, Any]) -> bool:
        """Send and record; ``False`` if the sideband is gone (the result stays recorded)."""
        assert self._conn is not None
        try:
            await self._conn.send(event)
        except SidebandClosedError as exc:
            logger.warning(
                "sideband send failed call_id=%s type=%s: %s", self.call_id, event["type"], exc
            )
            return False
        self._observer.record("out", event)
        return True
