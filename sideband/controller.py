"""The per-call brain: watch the sideband, run finished function calls once, answer the model.

The controller never executes a tool itself. The broker injects a :class:`ToolCallHandler` that
records, authorizes and runs calls, so this module knows nothing about databases or policy.

Rules it keeps (PROTOCOL.md §3):

* A function call is *seen* on ``response.function_call_arguments.done`` but only *final* when
  the ``response.done`` that lists it has status ``completed``: arguments-done also fires for
  cancelled responses, so side effects wait for the final status.
* Every call of a completed response gets one ``function_call_output``; then one
  ``response.create`` is sent, never while another response is active (the provider rejects it
  with ``conversation_already_has_active_response``). An output counts as *answered* once a
  response is created after its echo (whoever asked for it: us, the browser or VAD), so a
  refused or lost request is asked again only while some output is still unanswered: the
  model never answers one output twice.

Reconnects: when a ``reconnect`` is given, a sideband that closes or breaks while the
controller is not stopping is re-attached (bounded, with backoff, by the caller's
``reconnect``), and then *resynced*: the provider's conversation is compared with what the
broker knows (its records, read through :meth:`ToolCallHandler.backlog`, and the items this
controller saw), with ``conversation.item.retrieve`` for every function call that may have
finished unseen, and one appended-then-deleted probe item that names the conversation's tail
(the protocol has no way to list items). Outputs decided while the sideband was away are
looked up by their client-chosen item id and sent only if the provider does not have them.
A resync belongs to its connection: a loss cancels it, and what it had not settled is the
next resync's work (a probe whose delete died with the socket is deleted first). A call's
*first* attach resyncs too when it came late (:func:`attached_late`): the model may have
finished a function call before any sideband watched.

Tamper checks (PROTOCOL.md §4, :mod:`sideband.tamper`): a ``session.updated`` whose owned
fields drift from the server's config is answered by re-sending that config; a
``function_call_output`` the broker did not send is deleted, and a response started while it
was in the conversation is cancelled. Each is reported to the injected :class:`TamperHandler`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal, Protocol

from sideband.connection import SidebandConnection
from sideband.errors import MalformedEventError, SidebandClosedError, SidebandError
from sideband.events import (
    PROBE_ITEM_PREFIX,
    ConversationItemAdded,
    ConversationItemDeleted,
    ConversationItemDone,
    ConversationItemRetrieved,
    ErrorEvent,
    FunctionCallArgumentsDone,
    Item,
    ResponseCreated,
    ResponseDone,
    ServerEvent,
    SessionCreated,
    SessionUpdated,
    function_call_output,
    is_probe_item_id,
    item_delete,
    item_retrieve,
    new_item_id,
    parse_server_event,
    probe_item_create,
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
AttachKind = Literal["attach", "reconnect", "resume"]

LATE_ATTACH_S: Final = 2.0
"""A first attach slower than this may have missed the call's start (see :func:`attached_late`)."""


def attached_late(conn: SidebandConnection) -> bool:
    """Whether a call's first sideband may have missed function calls, so must resync.

    An attach that took one handshake began right after the call was created, before the
    browser even had its SDP answer: the browser still has ICE, DTLS and SCTP ahead of it,
    then a user turn, then the model's, so nothing can have finished unseen. One that the
    provider made wait (404s while the call propagates, a refused connection) or that took
    seconds may have: it resyncs as a reconnect does. A needless resync costs one probe item.
    """
    return conn.attempts > 1 or conn.attach_seconds > LATE_ATTACH_S


"""``attach``: the call's first sideband; ``reconnect``: after this controller lost one;
``resume``: the first sideband of a restarted broker to a call it controlled before."""

RESEND_GRACE: Final = 0.3
"""Seconds between the two lookups that must both miss before an output is sent again."""
PROBE_ATTEMPTS: Final = 3
"""Probes per resync: one more for each other process's leftover probe found as the tail."""
LOOKUP_TIMEOUT: Final = 5.0
"""Seconds to wait for the provider's answer to a retrieve or a probe during a resync."""


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
        item_id: the id the output item gets at the provider, chosen (and recorded) before it
            is sent, so a resync can tell whether it arrived; ``None``: the controller picks one.
    """

    output: str
    inject: bool = True
    item_id: str | None = None


@dataclass(frozen=True)
class Undelivered:
    """An output decided for a call whose delivery to the provider is not confirmed."""

    call: FunctionCall
    output: str
    item_id: str


@dataclass(frozen=True)
class Backlog:
    """What the broker's records say is unfinished on this call.

    Attributes:
        seen: calls recorded but never run; ``item_id`` is how the provider is asked whether
            each one finished (a call without one is left to the paths that can report it).
        undelivered: outputs decided but not known to have reached the provider.
    """

    seen: Sequence[FunctionCall] = ()
    undelivered: Sequence[Undelivered] = field(default_factory=tuple)


class _LookupFailed(Exception):
    """The provider did not answer a resync question (the sideband went away, or timeout)."""


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
        """The call's output went out on the sideband (or was found at the provider)."""

    async def backlog(self) -> Backlog:
        """Calls recorded as unfinished; read at every resync, so it must be cheap."""


class CallObserver(Protocol):
    """Sees the sideband's traffic; ``record`` runs on the reader's path and must not block."""

    def record(self, direction: Direction, event: dict[str, Any]) -> None: ...

    async def attached(self, kind: AttachKind) -> None:
        """The sideband is connected and the reader is about to start."""

    async def detached(self, close_code: int | None) -> None:
        """The sideband was lost while the call goes on; a reconnect starts now."""


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
        reconnect: re-attaches after a loss, given the lost socket's close code (its own
            bounded retry; a call that is gone raises :class:`~sideband.errors.CallEndedError`);
            ``None``: a closed sideband ends :meth:`run`.
        resume: this call was controlled by an earlier broker process: resync right after
            the first attach, as after a reconnect.
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
        reconnect: Callable[[int | None], Awaitable[SidebandConnection]] | None = None,
        resume: bool = False,
    ) -> None:
        self.call_id = call_id
        self.last_close_code: int | None = None
        """The close code of the latest sideband socket to close (``None``: none has, or it
        broke without one)."""
        self._connect = connect
        self._reconnect = reconnect
        self._resume = resume
        self._tools = tools
        self._observer = observer
        self._owned = owned_session
        self._tamper = tamper
        self._ledger = OutputLedger()
        self._reapplies_in_flight = 0
        self._reapply_event_ids: set[str] = set()
        self._last_reapplied: SessionDrift | None = None
        self._conn: SidebandConnection | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._seen: dict[str, asyncio.Task[None]] = {}
        self._handled: set[str] = set()
        """Calls this controller answered, is answering or abandoned: never taken up again."""
        self._stopping = False
        self._draining = False
        self._stop_requested = asyncio.Event()
        self._answers_in_flight = 0
        self._answers_idle = asyncio.Event()
        self._answers_idle.set()
        self._active_response: str | None = None
        self._response_create_event_id: str | None = None
        """Our ``response.create`` not yet followed by a ``response.created`` or an error."""
        self._unanswered: set[str] = set()
        """Our outputs' item ids that no response has been created after (as far as we saw)."""
        self._echoed: set[str] = set()
        """Our outputs the provider echoed on this connection (a response created now reads
        them)."""
        self._covering: dict[str, set[str]] = {}
        """Active responses → the outputs they answer (restored if we cancel the response)."""
        self._cancelled_by_us: set[str] = set()
        self._delivering = 0
        """Tasks sending outputs now: a response.create waits until they are all out."""
        self._carried: set[str] = set()
        """Outputs unanswered when a connection was lost: the resync finds out whether a
        response read them while the sideband was away."""
        self._resync_task: asyncio.Task[None] | None = None
        # Resync state: what this controller saw, and its questions to the provider.
        self._known_items: set[str] = set()
        self._call_items: dict[str, FunctionCall] = {}
        """Function-call items seen, by item id (arguments may still be streaming)."""
        self._output_item_ids: set[str] = set()
        self._undelivered: dict[str, Undelivered] = {}
        """Outputs to look up and (re)send on the next connection, by call id."""
        self._unconfirmed: dict[str, Undelivered] = {}
        """Outputs sent on this connection whose echo has not come back yet, by call id: a
        send that succeeded locally may still be lost with a dying socket."""
        self._output_calls: dict[str, str] = {}
        """Our output items' ids → their call ids, to recognise the provider's echo."""
        self._confirmed = asyncio.Event()
        """Set whenever an output is confirmed (a drain waits on it)."""
        self._lookups: dict[str, asyncio.Future[Item | None]] = {}
        """Pending retrieves by item id; a probe waits here under its own id."""
        self._lookup_events: dict[str, str] = {}
        """The ``event_id`` of each pending retrieve or probe, to match the provider's error."""
        self._probe_ids: set[str] = set()
        self._probe_leftovers: set[str] = set()
        """Probes added (or maybe added) and not yet seen deleted."""
        self._probe_delete_events: dict[str, str] = {}
        """Our probe deletes' event ids → probe ids, to recognise their errors."""

    async def run(self) -> int | None:
        """Attach, then handle events until the sideband closes for good; returns its code.

        With a ``reconnect``, a lost sideband is re-attached and resynced until the
        controller is stopped or the reconnect gives up. Tool work in flight is not
        interrupted by a loss: its output is delivered on the next connection.
        Cancellation-safe: cancelling closes the socket and cancels in-flight tool work.

        Raises:
            SidebandError: attach failed, the transport broke (no ``reconnect``), or the
                reconnect gave up (``CallEndedError``: the call is gone).
            ExceptionGroup: a handler fault in a tool task.
        """
        conn = await self._connect()
        self._conn = conn
        kind: AttachKind = "resume" if self._resume else "attach"
        close_code: int | None = None
        gave_up: SidebandError | None = None
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                while True:
                    close_code, broken = await self._serve(conn, kind)
                    self.last_close_code = close_code
                    if self._stopping:
                        break
                    if self._reconnect is None:
                        if broken is not None:
                            raise broken
                        break
                    self._connection_lost()
                    # A clean close (1000/1001) usually means the call ended; reattaching
                    # tells the two apart, so only an unclean loss is worth a warning.
                    logger.log(
                        logging.INFO if close_code in (1000, 1001) else logging.WARNING,
                        "sideband closed call_id=%s code=%s; reattaching",
                        self.call_id,
                        close_code,
                    )
                    await self._observer.detached(close_code)
                    try:
                        reattached = await self._reattach(close_code)
                    except SidebandError as exc:
                        # Not raised here: that would cancel tools still running; they
                        # finish (and stay recorded) first.
                        gave_up = exc
                        self._stopping = True
                        break
                    if reattached is None:
                        break
                    conn = self._conn = reattached
                    kind = "reconnect"
        finally:
            self._tasks = None
            self._fail_lookups()
            if self._conn is not None:
                await self._conn.close()
        if gave_up is not None:
            raise gave_up
        return close_code

    async def _serve(
        self, conn: SidebandConnection, kind: AttachKind
    ) -> tuple[int | None, SidebandClosedError | None]:
        """One connection: announce it, assert the config, resync, read until it ends."""
        if self._stopping:
            await conn.close()
        await self._observer.attached(kind)
        if not self._stopping:
            if self._owned is not None:
                # A browser may change the session while no sideband watches, and no
                # session.created reaches a sideband to show it: assert the config first.
                update = session_update(self._owned.as_update())
                if await self._send(update):
                    self._reapplies_in_flight += 1
                    self._reapply_event_ids.add(update["event_id"])
            if kind != "attach" or attached_late(conn):
                # Scoped to this connection: a loss cancels it, and the next one starts over.
                if kind == "attach":
                    logger.info(
                        "first sideband attached late call_id=%s attempts=%d seconds=%.2f;"
                        " resyncing",
                        self.call_id,
                        conn.attempts,
                        conn.attach_seconds,
                    )
                self._resync_task = self._spawn(self._resync(), "resync")
        try:
            async for data in conn.frames():
                self._observer.record("in", data)
                try:
                    event = parse_server_event(data)
                except MalformedEventError as exc:
                    logger.warning("sideband event skipped call_id=%s: %s", self.call_id, exc)
                    continue
                await self._on_event(event)
        except SidebandClosedError as exc:
            await conn.close()
            return conn.close_code, exc
        await conn.close()
        return conn.close_code, None

    async def _reattach(self, close_code: int | None) -> SidebandConnection | None:
        """The next connection, or ``None`` if the controller was stopped meanwhile."""
        assert self._reconnect is not None
        attempt = asyncio.ensure_future(self._reconnect(close_code))
        stopped = asyncio.ensure_future(self._stop_requested.wait())
        try:
            await asyncio.wait({attempt, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (attempt, stopped):
                if not waiter.done():
                    waiter.cancel()
            await asyncio.gather(attempt, stopped, return_exceptions=True)
        if attempt.cancelled():
            return None
        conn = attempt.result()  # raises what the reconnect raised
        if self._stopping:
            await conn.close()
            return None
        return conn

    def _connection_lost(self) -> None:
        # A resync decides from what this connection answered; the next one asks again.
        if self._resync_task is not None and not self._resync_task.done():
            self._resync_task.cancel()
        self._resync_task = None
        # What was in flight on the old connection will never be answered on it.
        self._fail_lookups()
        # Sent but never echoed: maybe delivered, maybe lost with the socket; the resync asks.
        self._undelivered.update(self._unconfirmed)
        self._unconfirmed.clear()
        self._reapplies_in_flight = 0
        self._reapply_event_ids.clear()
        self._last_reapplied = None
        self._response_create_event_id = None
        # Whether our unanswered outputs got a response meanwhile is for the resync to find
        # out (from the conversation's tail). Responses under way are taken to complete, and
        # a response.create refused as "already active" is asked again after the next
        # response.done, so assuming none is active is safe.
        # Answers we cancelled (a forgery) are owed for certain: no tail check needed.
        owed = set().union(*(self._covering.get(r, set()) for r in self._cancelled_by_us))
        self._carried |= self._unanswered - owed
        self._unanswered = owed
        self._probe_delete_events.clear()
        self._echoed = set(owed)
        self._covering.clear()
        self._cancelled_by_us.clear()
        self._active_response = None

    @property
    def attached(self) -> bool:
        return self._conn is not None

    async def update_instructions(self, instructions: str) -> bool:
        """Change the server-owned instructions of the live call; whether it was sent.

        The owned config changes before the send, so the provider's echo is not taken for
        tampering (and a later re-apply, or the next connection's, asserts the new text); a
        send that fails puts the old config back, so "not sent" leaves nothing changed.
        """
        if self._owned is None or self._conn is None:
            return False
        previous = self._owned
        self._owned = replace(previous, instructions=instructions)
        update = session_update(self._owned.as_update())
        if not await self._send(update):
            self._owned = previous
            return False
        self._reapplies_in_flight += 1
        self._reapply_event_ids.add(update["event_id"])
        return True

    def condemn(self) -> None:
        """The call is being ended: from now on no tool call is executed (it is abandoned)."""
        self._stopping = True

    async def stop(self) -> None:
        """Close the sideband so :meth:`run` returns once in-flight tool work has finished.

        The call itself goes on at the provider. Outputs of tools still running when the
        socket closes stay recorded by the handler; they are not sent.
        """
        self._stopping = True
        self._stop_requested.set()
        # A resync would only wait on questions the closing socket will never answer.
        if self._resync_task is not None and not self._resync_task.done():
            self._resync_task.cancel()
        self._fail_lookups()
        if self._conn is not None:
            await self._conn.close()

    async def drain(self, grace: float) -> None:
        """Stop taking up new calls, deliver the ones under way (up to ``grace`` s), then stop.

        Calls the model finishes from now on are left recorded and unrun (not abandoned), so
        the next broker process to attach finds and runs them.
        """
        self._draining = True
        try:
            async with asyncio.timeout(grace):
                await self._answers_idle.wait()
                # Sent is not yet delivered: wait for the provider's echo of each output,
                # and for a response that reads it (else the next process cannot tell).
                while (self._unconfirmed or self._unanswered) and not self._stopping:
                    self._confirmed.clear()
                    await self._confirmed.wait()
        except TimeoutError:
            logger.warning(
                "drain: tool calls still running after %.1fs call_id=%s", grace, self.call_id
            )
        await self.stop()

    async def _on_event(self, event: ServerEvent) -> None:
        # Runs on the reader: anything slow is handed to a task so events keep flowing.
        if isinstance(event, ResponseCreated):
            await self._on_response_created(event)
        elif isinstance(event, SessionCreated | SessionUpdated):
            await self._check_session(event)
        elif isinstance(event, ConversationItemAdded | ConversationItemDone):
            self._saw_item(event.item)
            if event.item.id in self._output_calls:
                self._echoed.add(event.item.id)
                self._confirm(self._output_calls[event.item.id])
                await self._maybe_response_create()
            if isinstance(event, ConversationItemAdded) and event.item.id in self._probe_ids:
                # Our probe: the item before it is the conversation's tail.
                tail = Item(id=event.previous_item_id, type="") if event.previous_item_id else None
                self._resolve_lookup(event.item.id, tail)
            if event.item.type == "function_call_output":
                await self._check_output(event.item)
        elif isinstance(event, ConversationItemRetrieved):
            self._saw_item(event.item)
            if event.item.id is not None:
                self._resolve_lookup(event.item.id, event.item)
        elif isinstance(event, ConversationItemDeleted):
            if event.item_id in self._probe_leftovers:
                self._probe_leftovers.discard(event.item_id)
                for event_id in [
                    e for e, p in self._probe_delete_events.items() if p == event.item_id
                ]:
                    del self._probe_delete_events[event_id]
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
            self._known_items.add(event.item_id)
            self._call_items[event.item_id] = call
            if event.call_id not in self._seen:
                self._seen[event.call_id] = self._spawn(
                    self._tools.call_seen(call), f"tool-seen:{event.call_id}"
                )
        elif isinstance(event, ResponseDone):
            if self._active_response == event.response.id:
                self._active_response = None
            covered = self._covering.pop(event.response.id, set())
            if event.response.id in self._cancelled_by_us:
                # We cancelled the answer to these outputs: they still need one.
                self._cancelled_by_us.discard(event.response.id)
                self._unanswered |= covered
                self._echoed |= covered
            calls = [
                self._call_from_item(item, event.response.id) for item in event.response.output
            ]
            # A call is answered once even if its response.done is repeated.
            finals = [c for c in calls if c is not None and c.call_id not in self._handled]
            if finals and self._draining and not self._stopping:
                # Left recorded and unrun: the next broker process picks them up.
                logger.info(
                    "draining: %d call(s) left for the next broker call_id=%s",
                    len(finals),
                    self.call_id,
                )
            elif finals and event.response.status == "completed" and not self._stopping:
                self._take_up(finals)
            elif finals:
                self._handled.update(call.call_id for call in finals)
                self._spawn(
                    self._abandon(
                        finals, "call_ending" if self._stopping else event.response.status
                    ),
                    f"tool-abandon:{event.response.id}",
                )
            await self._maybe_response_create()
        elif isinstance(event, ErrorEvent):
            error = event.error
            if error.event_id is not None and error.event_id in self._lookup_events:
                item_id = self._lookup_events[error.event_id]
                if error.code == "item_not_found":
                    self._resolve_lookup(item_id, None)
                else:
                    self._fail_lookup(item_id)
            elif error.event_id is not None and error.event_id in self._probe_delete_events:
                # Not found: that probe never arrived, so it is no leftover either.
                self._probe_leftovers.discard(self._probe_delete_events.pop(error.event_id))
            elif error.event_id is not None and error.event_id in self._reapply_event_ids:
                # The provider refused our re-apply: no echo will come for it.
                self._reapply_event_ids.discard(error.event_id)
                self._reapplies_in_flight = max(0, self._reapplies_in_flight - 1)
                logger.warning(
                    "provider refused the config re-apply call_id=%s code=%s",
                    self.call_id,
                    error.code,
                )
            elif error.event_id is not None and error.event_id == self._response_create_event_id:
                # "Already active": someone (VAD, the browser) started a response first. If
                # it started after our outputs it answers them; if not, they are still
                # unanswered when it ends, and its response.done asks again.
                self._response_create_event_id = None
                if error.code != "conversation_already_has_active_response":
                    logger.warning(
                        "provider refused our response.create call_id=%s code=%s",
                        self.call_id,
                        error.code,
                    )
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
        # The provider does not say which client event started a response; ours (if any)
        # either is this one or was refused as "already active", so it is no longer pending.
        self._response_create_event_id = None
        # Events on one socket are ordered: the outputs echoed before this are its input,
        # and so are outputs found in the conversation by a resync still under way.
        read = self._carried - self._pending_item_ids()
        self._carried -= read
        covered = (self._unanswered & self._echoed) | read
        self._unanswered -= covered
        self._echoed -= covered
        self._covering[response_id] = covered
        self._confirmed.set()  # a drain waits for outputs to be answered too
        if not self._ledger.tainted:
            return
        # A response created now reads the forged output: the model must not answer from
        # it. What it would have answered is asked for again once the forged item is gone.
        cancelled = await self._send(response_cancel(response_id))
        if cancelled:
            self._cancelled_by_us.add(response_id)
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
        """Ask for a response if an output is unanswered and nothing stands in the way.

        Only echoed outputs count (one the provider refused is never read), and not while
        outputs are going out (one response reads them all). In the way: an active
        response, a request of ours still pending, a forgery.
        """
        if (
            self._unanswered & self._echoed
            and self._delivering == 0
            and self._active_response is None
            and self._response_create_event_id is None
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

    def _take_up(self, calls: list[FunctionCall]) -> None:
        """Run and answer final calls, in one task (their outputs go out together)."""
        self._handled.update(call.call_id for call in calls)
        self._answers_in_flight += 1
        self._answers_idle.clear()
        self._spawn(self._answer(calls), f"tool-answer:{calls[0].response_id}")

    async def _answer(self, calls: list[FunctionCall]) -> None:
        try:
            for call in calls:
                await self._await_seen(call)
            async with asyncio.TaskGroup() as group:
                runs = [
                    group.create_task(self._tools.execute(call), name=f"tool:{call.call_id}")
                    for call in calls
                ]
            due: list[Undelivered] = []
            for call, run in zip(calls, runs, strict=True):
                result = run.result()
                # Registered before sending: the provider's echo may arrive before send
                # returns. A call another path answered is expected from that path, with the
                # same output.
                self._ledger.expect(call.call_id, result.output)
                if result.inject:
                    due.append(Undelivered(call, result.output, result.item_id or new_item_id()))
            self._delivering += 1
            try:
                for output in due:
                    await self._deliver(output)
            finally:
                self._delivering -= 1
            await self._maybe_response_create()
        finally:
            self._answers_in_flight -= 1
            if self._answers_in_flight == 0:
                self._answers_idle.set()

    async def _deliver(self, output: Undelivered) -> bool:
        """Send one output; ``True`` if it went out (it counts once the provider echoes it).

        One that cannot be sent, or whose echo never comes, is looked up (and sent again if
        missing) by the next connection's resync.
        """
        self._output_item_ids.add(output.item_id)
        self._output_calls[output.item_id] = output.call.call_id
        event = function_call_output(output.call.call_id, output.output, item_id=output.item_id)
        self._unconfirmed[output.call.call_id] = output
        self._undelivered.pop(output.call.call_id, None)
        if not await self._send(event):
            self._unconfirmed.pop(output.call.call_id, None)
            self._undelivered[output.call.call_id] = output
            return False
        self._unanswered.add(output.item_id)
        return True

    def _pending_item_ids(self) -> set[str]:
        """Our outputs not known to be in the conversation (unsent, or sent and unechoed)."""
        return {o.item_id for o in (*self._unconfirmed.values(), *self._undelivered.values())}

    def _confirm(self, call_id: str) -> None:
        """The provider has our output for ``call_id``: record it as injected, once."""
        output = self._unconfirmed.pop(call_id, None) or self._undelivered.pop(call_id, None)
        self._confirmed.set()
        if output is not None:
            self._spawn(self._tools.output_sent(output.call), f"output-sent:{call_id}")

    async def _resync(self) -> None:
        """After a (re)attach: finish what the sideband may have missed while it was away.

        1. Outputs whose delivery is unconfirmed are looked up by item id and sent only if
           the provider lacks them.
        2. Function calls that may have finished unseen (recorded or seen as started, and
           the item that is now the conversation's tail if this controller never saw it)
           are retrieved; a completed one is run and answered, an incomplete one abandoned.
        A question the provider does not answer leaves its call for the next resync.
        """
        backlog = await self._tools.backlog()
        # Into _undelivered first: if this connection is lost (and this resync cancelled)
        # before an output is settled, the next resync still has it.
        for u in backlog.undelivered:
            if u.call.call_id not in self._handled:
                self._undelivered[u.call.call_id] = u
        outputs = dict(self._undelivered)
        self._handled.update(outputs)
        resent = False
        for output in outputs.values():
            self._ledger.expect(output.call.call_id, output.output)
            try:
                existing = await self._lookup(output.item_id)
                if existing is None:
                    # A create sent just before the old socket died may still be in the
                    # provider's queue for it: look once more before sending a second one.
                    await asyncio.sleep(RESEND_GRACE)
                    existing = await self._lookup(output.item_id)
            except _LookupFailed:
                self._undelivered[output.call.call_id] = output
                continue
            if existing is None:
                self._delivering += 1
                try:
                    resent = await self._deliver(output) or resent
                finally:
                    self._delivering -= 1
            else:
                # It arrived before the sideband dropped; only the confirmation was lost.
                self._output_item_ids.add(output.item_id)
                self._confirm(output.call.call_id)
                # Answered or not: decided below from the tail (or by the next resync).
                self._carried.add(output.item_id)
        candidates = {
            call.item_id: call
            for call in backlog.seen
            if call.item_id is not None and call.call_id not in self._handled
        }
        candidates.update(
            (item_id, call)
            for item_id, call in self._call_items.items()
            if call.call_id not in self._handled
        )
        tail: str | None = None
        try:
            tail = await self._probe_tail()
        except _LookupFailed:
            logger.warning("resync: the conversation's tail is unknown call_id=%s", self.call_id)
        finals: list[FunctionCall] = []
        abandoned: list[FunctionCall] = []
        lookups = list(candidates)
        if tail is not None and tail not in self._known_items and tail not in candidates:
            lookups.append(tail)
        for item_id in lookups:
            try:
                item = await self._lookup(item_id)
            except _LookupFailed:
                continue
            known = candidates.get(item_id)
            if item is None:
                if known is not None:
                    abandoned.append(known)  # deleted from the conversation: never final
                continue
            if item.type == "function_call_output":
                await self._check_output(item)  # forged while nobody watched?
                continue
            call = self._call_from_item(item, known.response_id if known else "")
            if call is None or call.call_id in self._handled:
                continue
            if item.status == "completed":
                finals.append(call)
            elif item.status == "incomplete":
                abandoned.append(call)
        if abandoned:
            self._handled.update(call.call_id for call in abandoned)
            # Its own task: recorded even if this connection (and this resync) is lost now.
            self._spawn(self._abandon(abandoned, "incomplete"), "tool-abandon:resync")
        if finals and self._stopping:
            self._handled.update(call.call_id for call in finals)
            self._spawn(self._abandon(finals, "call_ending"), "tool-abandon:resync")
        elif finals and not self._draining:
            logger.info(
                "resync: %d call(s) finished while the sideband was away call_id=%s",
                len(finals),
                self.call_id,
            )
            self._take_up(finals)
        logger.info(
            "resync call_id=%s outputs=%d resent=%s candidates=%d tail=%s finals=%d abandoned=%d",
            self.call_id,
            len(outputs),
            resent,
            len(lookups),
            tail,
            len(finals),
            len(abandoned),
        )
        # Outputs already in the conversation need an answer only if nothing came after
        # them (our output is the tail): then no response read them. Anything after (the
        # model's answer, or the user speaking, which starts a response of its own) means
        # one did. Outputs resent just now are answered like any other.
        # An unknown tail (the probe went unanswered on a live socket) is taken as "ours":
        # a second answer is better than a model that waits for ever.
        in_conversation = self._carried - self._pending_item_ids()
        self._carried.clear()
        if tail is None or tail in self._output_item_ids:
            self._unanswered |= in_conversation
            self._echoed |= in_conversation
        await self._maybe_response_create()

    async def _lookup(self, item_id: str) -> Item | None:
        """``conversation.item.retrieve``; ``None`` if the provider has no such item.

        Raises:
            _LookupFailed: no answer (the sideband went away, or the time ran out).
        """
        event = item_retrieve(item_id)
        return await self._ask(item_id, event)

    async def _probe_tail(self) -> str | None:
        """The id of the conversation's last item (``None``: the conversation is empty).

        Raises:
            _LookupFailed: no answer.
        """
        # A probe whose delete was lost with a socket is still in the conversation, and
        # would be taken for the tail: the provider applies these deletes before the create.
        for leftover in sorted(self._probe_leftovers):
            await self._delete_probe(leftover)
        for _ in range(PROBE_ATTEMPTS):
            probe_id = new_item_id(PROBE_ITEM_PREFIX)
            self._known_items.add(probe_id)
            self._probe_ids.add(probe_id)
            self._probe_leftovers.add(probe_id)
            try:
                answer = await self._ask(probe_id, probe_item_create(probe_id))
            finally:
                # Also when unanswered: the note may have been added all the same.
                self._probe_ids.discard(probe_id)
                await self._delete_probe(probe_id)
            if answer is None or answer.id is None:
                return None
            if not is_probe_item_id(answer.id):
                return answer.id
            # Another broker process's leftover probe (it died before deleting it).
            logger.warning(
                "resync: deleting a leftover probe item call_id=%s item_id=%s",
                self.call_id,
                answer.id,
            )
            await self._delete_probe(answer.id)
        raise _LookupFailed("tail")

    async def _delete_probe(self, probe_id: str) -> None:
        event = item_delete(probe_id)
        # Its error (a probe that never arrived is not found) is expected, not a warning.
        self._probe_delete_events[event["event_id"]] = probe_id
        await self._send(event)

    async def _ask(self, key: str, event: dict[str, Any]) -> Item | None:
        future = self._lookups.get(key)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._lookups[key] = future
            self._lookup_events[event["event_id"]] = key
            if not await self._send(event):
                self._fail_lookup(key)
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT):
                return await asyncio.shield(future)
        except (TimeoutError, _LookupFailed) as exc:
            self._fail_lookup(key)
            raise _LookupFailed(key) from exc

    def _resolve_lookup(self, key: str, item: Item | None) -> None:
        future = self._lookups.pop(key, None)
        self._forget_lookup_events(key)
        if future is not None and not future.done():
            future.set_result(item)

    def _fail_lookup(self, key: str) -> None:
        future = self._lookups.pop(key, None)
        self._forget_lookup_events(key)
        if future is not None and not future.done():
            future.set_exception(_LookupFailed(key))
            future.exception()  # retrieved here: nobody else may be waiting

    def _forget_lookup_events(self, key: str) -> None:
        for event_id in [e for e, k in self._lookup_events.items() if k == key]:
            del self._lookup_events[event_id]

    def _fail_lookups(self) -> None:
        for key in list(self._lookups):
            self._fail_lookup(key)

    def _saw_item(self, item: Item) -> None:
        if item.id is None:
            return
        self._known_items.add(item.id)
        if item.type == "function_call" and item.call_id and item.name is not None:
            self._call_items.setdefault(
                item.id,
                FunctionCall(
                    call_id=item.call_id,
                    name=item.name,
                    arguments=item.arguments or "",
                    response_id="",
                    item_id=item.id,
                ),
            )

    async def _send_response_create(self) -> None:
        event = response_create()
        self._response_create_event_id = event["event_id"]
        if not await self._send(event):
            # Lost with the connection: the next connection's resync decides again.
            self._response_create_event_id = None

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
