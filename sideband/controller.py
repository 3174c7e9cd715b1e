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

Tamper checks (PROTOCOL.md §4, :mod:`sideband.tamper`): a ``session.updated`` whose owned
fields drift from the server's config is answered by re-sending that config; a
``function_call_output`` the broker did not send is deleted, and a response started while it
was in the conversation is cancelled. Each is reported to the injected :class:`TamperHandler`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

from sideband.connection import SidebandConnection
from sideband.errors import MalformedEventError, SidebandClosedError
from sideband.events import (
    ConversationItemAdded,
    ConversationItemDeleted,
    ConversationItemDone,
    ErrorEvent,
    FunctionCallArgumentsDone,
    Item,
    ResponseCreated,
    ResponseDone,
    ServerEvent,
    SessionCreated,
    SessionUpdated,
    function_call_output,
    item_delete,
    parse_server_event,
    response_cancel,
    response_create,
    session_update,
)
from sideband.tamper import (
    ForgedOutput,
    OutputLedger,
    OwnedSession,
    SessionDrift,
    TaintedResponse,
    Tamper,
    TamperHandler,
    Verdict,
    session_drift,
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
        owned_session: the server-owned session config; ``None`` turns the session-drift
            check off (forged outputs are still removed).
        tamper: told about every tamper detection; ``None``: act on the wire, report nothing.
    """

    def __init__(
        self,
        call_id: str,
        connect: Callable[[], Awaitable[SidebandConnection]],
        tools: ToolCallHandler,
        observer: CallObserver,
        *,
        owned_session: OwnedSession | None = None,
        tamper: TamperHandler | None = None,
    ) -> None:
        self.call_id = call_id
        self._connect = connect
        self._tools = tools
        self._observer = observer
        self._owned = owned_session
        self._tamper = tamper
        self._ledger = OutputLedger()
        self._reapplies_in_flight = 0
        self._reapply_event_ids: set[str] = set()
        self._last_reapplied: SessionDrift | None = None
        self._own_response_requested = False
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
            if self._owned is not None and not self._stopping:
                # A browser may change the session before we attach, and no session.created
                # reaches a sideband to show it: assert the server-owned config first.
                update = session_update(self._owned.as_update())
                if await self._send(update):
                    self._reapplies_in_flight += 1
                    self._reapply_event_ids.add(update["event_id"])
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

    def condemn(self) -> None:
        """The call is being ended: from now on no tool call is executed (it is abandoned)."""
        self._stopping = True

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
            await self._on_response_created(event)
        elif isinstance(event, SessionCreated | SessionUpdated):
            await self._check_session(event)
        elif isinstance(event, ConversationItemAdded | ConversationItemDone):
            if event.item.type == "function_call_output":
                await self._check_output(event.item)
        elif isinstance(event, ConversationItemDeleted):
            if self._ledger.removed(event.item_id):
                await self._maybe_response_create()
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
            if finals and event.response.status == "completed" and not self._stopping:
                self._answering.update(call.call_id for call in finals)
                self._spawn(self._answer(finals), f"tool-answer:{event.response.id}")
            elif finals:
                self._spawn(
                    self._abandon(
                        finals, "call_ending" if self._stopping else event.response.status
                    ),
                    f"tool-abandon:{event.response.id}",
                )
            await self._maybe_response_create()
        elif isinstance(event, ErrorEvent):
            error = event.error
            if error.event_id is not None and error.event_id in self._reapply_event_ids:
                # The provider refused our re-apply: no echo will come for it.
                self._reapply_event_ids.discard(error.event_id)
                self._reapplies_in_flight = max(0, self._reapplies_in_flight - 1)
                logger.warning(
                    "provider refused the config re-apply call_id=%s code=%s",
                    self.call_id,
                    error.code,
                )
            elif (
                error.code == "conversation_already_has_active_response"
                and error.event_id is not None
                and error.event_id == self._response_create_event_id
            ):
                # Someone (VAD, the browser) started a response first; ask again after it ends.
                self._own_response_requested = False
                self._response_create_wanted = True
            else:
                logger.warning(
                    "provider error call_id=%s code=%s event_id=%s",
                    self.call_id,
                    error.code,
                    error.event_id,
                )

    async def _on_response_created(self, event: ResponseCreated) -> None:
        response_id = event.response.id
        self._active_response = response_id
        # Heuristic, as the provider does not echo which client event started a response:
        # the first response.created after our response.create is taken to be ours.
        ours = self._own_response_requested
        self._own_response_requested = False
        if not self._ledger.tainted:
            return
        # A response created now reads the forged output: the model must not answer from
        # it. Ours is asked for again once the forged item is gone.
        cancelled = await self._send(response_cancel(response_id))
        if ours:
            self._response_create_wanted = True
        self._report(
            TaintedResponse(
                response_id=response_id,
                forged_item_ids=self._ledger.forged_item_ids,
                cancelled=cancelled,
            )
        )

    async def _check_session(self, event: SessionCreated | SessionUpdated) -> None:
        if self._owned is None:
            return
        # Our own re-apply comes back as a session.updated too. If that echo still differs
        # the same way (the provider normalises something we did not foresee), re-applying
        # again would loop forever, so it does not trigger another one. An update that
        # differs in another way is a new change (the browser again) and is acted on.
        echo = isinstance(event, SessionUpdated) and self._reapplies_in_flight > 0
        if echo:
            self._reapplies_in_flight -= 1
        drift = session_drift(self._owned, event.session)
        if drift is None:
            return
        if echo and _same_drift(drift, self._last_reapplied):
            logger.warning(
                "session still differs after re-applying the config call_id=%s fields=%s",
                self.call_id,
                ",".join(drift.fields),
            )
            return
        update = session_update(self._owned.as_update())
        reapplied = await self._send(update)
        if reapplied:
            self._reapplies_in_flight += 1
            self._reapply_event_ids.add(update["event_id"])
            self._last_reapplied = drift
        self._report(replace(drift, reapplied=reapplied))

    async def _check_output(self, item: Item) -> None:
        if self._ledger.classify(item) is not Verdict.FORGED:
            return
        deleted = item.id is not None and await self._send(item_delete(item.id))
        self._report(
            ForgedOutput(
                item_id=item.id,
                call_id=item.call_id[:128] if item.call_id else None,
                deleted=deleted,
            )
        )

    def _report(self, tamper: Tamper) -> None:
        if self._tamper is not None:
            self._spawn(self._tamper.tampered(tamper), f"tamper:{tamper.kind}")

    async def _maybe_response_create(self) -> None:
        """Send a wanted response.create once nothing is active and no forgery remains."""
        if (
            self._response_create_wanted
            and self._active_response is None
            and not self._ledger.tainted
        ):
            await self._send_response_create()

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
            # Registered before sending: the provider's echo may arrive before send returns.
            # A call another path answered is expected from that path, with the same output.
            self._ledger.expect(call.call_id, result.output)
            if not result.inject:
                continue
            if not await self._send(function_call_output(call.call_id, result.output)):
                return
            await self._tools.output_sent(call)
            injected = True
        if injected:
            self._response_create_wanted = True
            await self._maybe_response_create()

    async def _send_response_create(self) -> None:
        self._response_create_wanted = False
        event = response_create()
        self._response_create_event_id = event["event_id"]
        self._own_response_requested = True
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


def _same_drift(drift: SessionDrift, other: SessionDrift | None) -> bool:
    return other is not None and replace(drift, reapplied=False) == replace(other, reapplied=False)
