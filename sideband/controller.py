"""The per-call brain: watch the sideband, run the model's finished function calls once, answer.

The controller never executes a tool itself. The broker injects a :class:`ToolCallHandler` that
records, authorizes and runs calls, so this module knows nothing about databases or policy.

Rules it keeps (PROTOCOL.md §3, docs/protocol.md):

* **Only the model's calls run.** A function call is one the model emitted in a response the
  sideband watched (``response.output_item.*``, ``response.function_call_arguments.done``, or
  the ``output`` of ``response.done``); it is *final* when that ``response.done`` has status
  ``completed`` (arguments-done also fires for cancelled responses). A ``function_call`` item
  that merely appears in the conversation (``conversation.item.added``, a retrieve) may be the
  page's: it is never run on that evidence. Seen live, it is deleted and reported; found by a
  resync, it is answered with an error output the model can act on (a real call the broker
  missed is made again, now watched) and reported (:class:`~sideband.tamper.UnprovenCall`).
* Every call of a completed response gets one ``function_call_output``; then one
  ``response.create`` is sent, never while another response is active (the provider rejects it
  with ``conversation_already_has_active_response``). An output counts as *answered* once a
  response is created after its echo (whoever asked for it: us, the browser or VAD), so a
  refused or lost request is asked again only while some output is still unanswered: the model
  never answers one output twice. Outputs are recognised by ``call_id`` and the exact text the
  broker sent, never by the item id it chose: a provider may assign its own ids.
* **The session config is the broker's.** A :class:`~sideband.session_guard.SessionGuard`
  keeps the provider's own answer to the broker's first assertion as the baseline, and the
  controller probes the provider's view of the session (after a reconnect, before each
  ``response.create`` it sends, and every ``probe_interval`` seconds) instead of trusting echoes
  of a page's changes that may never come. Drift is restored and reported.

Reconnects: when a ``reconnect`` is given, a sideband that closes or breaks while the
controller is not stopping is re-attached (bounded, with backoff, by the caller's
``reconnect``), and then *resynced*: the provider's conversation is compared with what the
broker knows (its records, read through :meth:`ToolCallHandler.backlog`, and the calls this
controller watched the model make), with ``conversation.item.retrieve`` for every call that may
have finished unseen, and one appended-then-deleted probe item that names the conversation's
tail (the protocol has no way to list items). Outputs decided while the sideband was away are
looked up and sent only if the provider does not have them. A resync belongs to its
connection: a loss cancels it, and what it had not settled is the next resync's work. A call's
*first* attach resyncs too when it came after the browser had its SDP answer
(:class:`AnswerGate`): the page may have acted before any sideband watched.

Tamper checks (PROTOCOL.md §4, :mod:`sideband.tamper`): config drift is restored; a
``function_call_output`` the broker did not send is deleted, and a response started while it
was in the conversation is cancelled; items only the model may add are deleted; under the
``page_responses`` policy ``cancel`` a response nobody the broker trusts started is cancelled.
Each is reported to the injected :class:`TamperHandler`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal, Protocol

from sideband.connection import SidebandConnection
from sideband.errors import MalformedEventError, SidebandClosedError, SidebandError
from sideband.events import (
    PROBE_ITEM_PREFIX,
    ConversationItemAdded,
    ConversationItemCreated,
    ConversationItemDeleted,
    ConversationItemDone,
    ConversationItemRetrieved,
    ErrorEvent,
    FunctionCallArgumentsDone,
    InputAudioBufferCommitted,
    InputAudioBufferSpeechStopped,
    Item,
    ResponseCreated,
    ResponseDone,
    ResponseOutputItemAdded,
    ResponseOutputItemDone,
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
    probe_key,
    response_cancel,
    response_create,
)
from sideband.session_guard import SessionGuard
from sideband.tamper import (
    ForgedOutput,
    OutputLedger,
    OwnedSession,
    PageItem,
    PageItems,
    PagePolicy,
    PageResponse,
    PageResponses,
    TaintedResponse,
    Tamper,
    TamperHandler,
    UnprovenCall,
    Verdict,
)

logger = logging.getLogger(__name__)

Direction = Literal["in", "out"]
AttachKind = Literal["attach", "reconnect", "resume"]
"""``attach``: the call's first sideband; ``reconnect``: after this controller lost one;
``resume``: the first sideband of a restarted broker to a call it controlled before."""

RESEND_GRACE: Final = 0.3
"""Seconds between the two lookups that must both miss before an output is sent again."""
PROBE_ATTEMPTS: Final = 3
"""Probes per resync: one more for each leftover probe found as the tail."""
LOOKUP_TIMEOUT: Final = 5.0
"""Seconds to wait for the provider's answer to a retrieve or a probe during a resync."""
SESSION_PROBE_TIMEOUT: Final = 2.0
"""Seconds to wait for the answer to the session probe before a ``response.create``; with no
answer the owned config is asserted blind (the provider applies it before the response)."""
DEFAULT_PROBE_INTERVAL: Final = 30.0
MAX_REPORTED_CHARS: Final = 128

UNVERIFIED_OUTPUT: Final = json.dumps(
    {
        "error": {
            "code": "call_unverified",
            "message": (
                "This call was not run: the broker could not verify that you made it. "
                "If you meant to call this tool, call it again."
            ),
        }
    },
    separators=(",", ":"),
)
"""The output an unproven function call gets (the broker's ``error_output`` shape)."""


def _cut(value: str | None) -> str | None:
    return value[:MAX_REPORTED_CHARS] if value is not None else None


def _vad_responds(session: dict[str, Any]) -> bool:
    """Whether a session's turn detection starts a response by itself (``create_response``)."""
    audio = session.get("audio")
    audio_input = audio.get("input") if isinstance(audio, dict) else None
    if not isinstance(audio_input, dict) or "turn_detection" not in audio_input:
        return True  # not shown: the default (server VAD, create_response true)
    turn = audio_input["turn_detection"]
    return isinstance(turn, dict) and turn.get("create_response", True) is not False


def _same_arguments(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return bool(json.loads(a) == json.loads(b))
    except (ValueError, RecursionError):
        return False


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
        item_id: the id asked for the output item, chosen (and recorded) before it is sent;
            ``None``: the controller picks one. A provider may assign its own instead.
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
        seen: calls the broker saw the model make and never ran; ``item_id`` is how the
            provider is asked whether each one finished (a call without one, or without the
            response it came from, is left to the paths that can report it).
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


class AnswerGate:
    """Orders a call's first sideband attach against the browser's SDP answer.

    The page can send nothing before it has its answer, so a sideband attached first sees
    everything the page does. Whoever answers the browser waits (bounded) on
    :attr:`attached`, then calls :meth:`answer_sent`; the controller calls :meth:`attach`.
    Each check-and-mark is one step of the event loop, so the two can never both miss.
    """

    def __init__(self) -> None:
        self.attached = asyncio.Event()
        self._answered_first = False

    def answer_sent(self) -> bool:
        """The answer goes out now; ``True`` if the sideband had attached already."""
        if self.attached.is_set():
            return True
        self._answered_first = True
        return False

    def attach(self) -> bool:
        """The first sideband attached; ``True`` if the page had its answer before (late)."""
        self.attached.set()
        return self._answered_first


class CallController:
    """Runs one call's sideband from attach to close.

    Args:
        call_id: the provider's call id.
        connect: opens the sideband (with its own bounded retry).
        tools: the broker's handler for function calls.
        observer: sees every event in and out.
        owned_session: the server-owned session config; ``None`` turns the config guard off
            (forged outputs and page items are still removed).
        tamper: told about every tamper detection; ``None``: act on the wire, report nothing.
        reconnect: re-attaches after a loss, given the lost socket's close code (its own
            bounded retry; a call that is gone raises :class:`~sideband.errors.CallEndedError`);
            ``None``: a closed sideband ends :meth:`run`.
        resume: this call was controlled by an earlier broker process: resync right after
            the first attach, as after a reconnect.
        page: what the page may add to the call (items, responses).
        probe_interval: seconds between periodic session probes; ``None`` or ``0``: none
            (the probes after a reconnect and before each ``response.create`` stay).
        gate: orders the first attach against the browser's SDP answer; ``None``: the first
            attach is taken to come before the answer (no resync).
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
        page: PagePolicy | None = None,
        probe_interval: float | None = DEFAULT_PROBE_INTERVAL,
        gate: AnswerGate | None = None,
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
        self._guard = SessionGuard(owned_session) if owned_session is not None else None
        self._tamper = tamper
        self._page = page or PagePolicy()
        self._probe_interval = probe_interval or None
        self._ledger = OutputLedger()
        self._conn: SidebandConnection | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._stopping = False
        self._draining = False
        self._stop_requested = asyncio.Event()
        self._gate = gate or AnswerGate()
        # Calls.
        self._seen: dict[str, asyncio.Task[None]] = {}
        self._handled: set[str] = set()
        """Calls this controller answered, is answering or abandoned: never taken up again."""
        self._call_items: dict[str, FunctionCall] = {}
        """Calls the model made in a watched response with their full arguments, by item id."""
        self._started_items: dict[str, FunctionCall] = {}
        """Calls the model began in a watched response (arguments may be partial), by item id."""
        self._unproven: set[str] = set()
        """Calls answered with :data:`UNVERIFIED_OUTPUT`: no record to mark injected."""
        self._answers_in_flight = 0
        self._answers_idle = asyncio.Event()
        self._answers_idle.set()
        # Item origins: what a watched response produced, and what the page added.
        self._model_items: set[str] = set()
        self._suspects: dict[str, Item] = {}
        """Restricted items seen while a response was under way: judged at its end."""
        self._judged: set[str] = set()
        self._planted_pending: set[str] = set()
        """Page items deleted but not yet seen gone: a response now would read them."""
        self._planted_delete_events: dict[str, str] = {}
        """Our deletes of page items by event id: an error answer means the item is gone."""
        self._known_items: set[str] = set()
        # Responses.
        self._active_response: str | None = None
        self._response_state_known = True
        """Whether ``_active_response`` is known (not right after a late attach)."""
        self._response_create_event_id: str | None = None
        """Our ``response.create`` not yet followed by a ``response.created`` or an error."""
        self._creating = False
        """A task is probing the session before sending our ``response.create``."""
        self._audio_turn = False
        """The provider's voice detection committed a user turn that no ``response.created``
        has followed yet: the next response is the provider's answer to it."""
        self._speech_items: set[str] = set()
        """Items server VAD ended (``speech_stopped``): only their commits are audio turns."""
        self._vad_responds = True
        """The session's turn detection starts a response on its own (``create_response``),
        as last seen in the provider's session."""
        self._cancelled_by_us: set[str] = set()
        self._covering: dict[str, set[str]] = {}
        """Active responses → the outputs (call ids) they answer (restored if we cancel)."""
        # Outputs, by call id.
        self._unanswered: set[str] = set()
        """Our outputs that no response has been created after (as far as we saw)."""
        self._echoed: set[str] = set()
        """Our outputs the provider echoed on this connection (a response now reads them)."""
        self._carried: set[str] = set()
        """Outputs unanswered when a connection was lost: the resync finds out whether a
        response read them while the sideband was away."""
        self._delivering = 0
        """Tasks sending outputs now: a response.create waits until they are all out."""
        self._undelivered: dict[str, Undelivered] = {}
        """Outputs to look up and (re)send on the next connection."""
        self._unconfirmed: dict[str, Undelivered] = {}
        """Outputs sent on this connection whose echo has not come back yet: a send that
        succeeded locally may still be lost with a dying socket."""
        self._provider_output_ids: dict[str, str] = {}
        """Call id → the id the provider's echo gave our output (may differ from ours)."""
        self._own_output_ids: set[str] = set()
        """Every id our outputs have, ours and the provider's: never the page's."""
        self._confirmed = asyncio.Event()
        """Set whenever an output is confirmed (a drain waits on it)."""
        # Resync questions.
        self._resync_task: asyncio.Task[None] | None = None
        self._lookups: dict[str, asyncio.Future[Item | None]] = {}
        """Pending retrieves by item id; a probe waits here under its own key."""
        self._lookup_events: dict[str, str] = {}
        """The ``event_id`` of each pending retrieve or probe, to match the provider's error."""
        self._probe_keys: set[str] = set()
        self._probe_leftovers: dict[str, str | None] = {}
        """Probes added (or maybe added) and not yet seen deleted → their provider id."""
        self._probe_delete_events: dict[str, str] = {}
        """Our probe deletes' event ids → probe keys, to recognise their errors."""
        # Session probes.
        self._session_waiters: list[asyncio.Future[bool]] = []
        """Tasks waiting for the next ``session.updated`` (True) or its refusal (False)."""
        self._session_probe_events: set[str] = set()
        self._prober: asyncio.Task[None] | None = None

    # ---- lifecycle -----------------------------------------------------------------------

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
            self._fail_session_waiters()
            if self._conn is not None:
                await self._conn.close()
        if gave_up is not None:
            raise gave_up
        return close_code

    async def _serve(
        self, conn: SidebandConnection, kind: AttachKind
    ) -> tuple[int | None, SidebandClosedError | None]:
        """One connection: announce it, check the config, resync, read until it ends."""
        if self._stopping:
            await conn.close()
        late = self._gate.attach() and kind == "attach"
        await self._observer.attached(kind)
        if kind != "attach" or late:
            # Whatever happened while no sideband watched (or before the first one did):
            # which response is under way is unknown until the next one starts or ends.
            self._response_state_known = False
        if not self._stopping:
            if self._guard is not None:
                # A page may change the session while no sideband watches, and no
                # session.created reaches a sideband to show it. The first time, assert the
                # config (its answer is the baseline); later, ask what the session is now.
                if self._guard.asserted:
                    await self._send_session_event(self._guard.probe())
                else:
                    await self._send_session_event(self._guard.assertion())
                if self._probe_interval is not None:
                    self._prober = self._spawn(self._probe_periodically(), "session-probe")
            for item_id in sorted(self._planted_pending):
                # Deletes sent on a lost socket may never have arrived: ask again.
                await self._delete_planted(item_id)
            if kind != "attach" or late:
                if late:
                    logger.info(
                        "first sideband attached after the SDP answer call_id=%s attempts=%d"
                        " seconds=%.2f; resyncing",
                        self.call_id,
                        getattr(conn, "attempts", 1),
                        getattr(conn, "attach_seconds", 0.0),
                    )
                # Scoped to this connection: a loss cancels it, and the next one starts over.
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
        finally:
            # The periodic probe belongs to this connection (and would keep the task group
            # of run() open for ever).
            if self._prober is not None and not self._prober.done():
                self._prober.cancel()
            self._prober = None
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
        if self._prober is not None and not self._prober.done():
            self._prober.cancel()
        self._prober = None
        # What was in flight on the old connection will never be answered on it.
        self._fail_lookups()
        self._fail_session_waiters()
        if self._guard is not None:
            self._guard.connection_lost()
        # Sent but never echoed: maybe delivered, maybe lost with the socket; the resync asks.
        self._undelivered.update(self._unconfirmed)
        self._unconfirmed.clear()
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
        self._audio_turn = False
        self._speech_items.clear()

    @property
    def attached(self) -> bool:
        return self._conn is not None

    async def update_instructions(self, instructions: str) -> bool:
        """Change the server-owned instructions of the live call; whether it was sent.

        The owned config (and the baseline) change before the send, so the provider's answer
        is not taken for tampering; a send that fails puts the old config back, so "not
        sent" leaves nothing changed.
        """
        if self._guard is None or self._conn is None:
            return False
        previous, update = self._guard.instructions_changed(instructions)
        if not await self._send(update):
            self._guard.unsent(update)
            self._guard.revert_instructions(previous)
            return False
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
        if self._prober is not None and not self._prober.done():
            self._prober.cancel()
        self._fail_lookups()
        self._fail_session_waiters()
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

    # ---- events --------------------------------------------------------------------------

    async def _on_event(self, event: ServerEvent) -> None:
        # Runs on the reader: anything slow is handed to a task so events keep flowing.
        if isinstance(event, ResponseCreated):
            await self._on_response_created(event)
        elif isinstance(event, SessionCreated | SessionUpdated):
            await self._check_session(event)
        elif isinstance(event, ConversationItemAdded | ConversationItemCreated):
            await self._on_item(event.item, event.previous_item_id, added=True)
        elif isinstance(event, ConversationItemDone):
            await self._on_item(event.item, event.previous_item_id, added=False)
        elif isinstance(event, ConversationItemRetrieved):
            if event.item.id is not None:
                self._known_items.add(event.item.id)
                self._resolve_lookup(event.item.id, event.item)
        elif isinstance(event, ConversationItemDeleted):
            await self._on_item_deleted(event.item_id)
        elif isinstance(event, ResponseOutputItemAdded | ResponseOutputItemDone):
            self._model_item(event.item, event.response_id)
        elif isinstance(event, FunctionCallArgumentsDone):
            call = FunctionCall(
                call_id=event.call_id,
                name=event.name,
                arguments=event.arguments,
                response_id=event.response_id,
                item_id=event.item_id,
            )
            self._model_items.add(event.item_id)
            self._known_items.add(event.item_id)
            self._call_items[event.item_id] = call
            if event.call_id not in self._seen:
                self._seen[event.call_id] = self._spawn(
                    self._tools.call_seen(call), f"tool-seen:{event.call_id}"
                )
        elif isinstance(event, InputAudioBufferSpeechStopped):
            if event.item_id is not None:
                self._speech_items.add(event.item_id)
        elif isinstance(event, InputAudioBufferCommitted):
            # A page may commit the buffer itself and then start a response of its own:
            # only a turn the provider's voice detection ended, on a session whose turn
            # detection answers by itself, is an audio turn that starts a response.
            if event.item_id is not None and event.item_id in self._speech_items:
                self._speech_items.discard(event.item_id)
                self._audio_turn = self._vad_responds
        elif isinstance(event, ResponseDone):
            await self._on_response_done(event)
        elif isinstance(event, ErrorEvent):
            await self._on_error(event)

    def _model_item(self, item: Item, response_id: str) -> None:
        """A watched response produced ``item`` (``response.output_item.*``)."""
        if item.id is None:
            return
        self._model_items.add(item.id)
        self._known_items.add(item.id)
        self._suspects.pop(item.id, None)
        if item.type == "function_call" and item.call_id and item.name is not None:
            call = FunctionCall(
                call_id=item.call_id,
                name=item.name,
                arguments=item.arguments or "",
                response_id=response_id,
                item_id=item.id,
            )
            if item.status == "completed":
                self._call_items[item.id] = call
            else:
                self._started_items.setdefault(item.id, call)

    async def _on_item(self, item: Item, previous_item_id: str | None, *, added: bool) -> None:
        if item.id is not None:
            self._known_items.add(item.id)
        key = probe_key(item)
        if key is not None:
            await self._on_probe_item(item, key, previous_item_id, added=added)
            return
        if item.type == "function_call_output":
            await self._on_output_item(item)
            return
        await self._judge_item(item)

    async def _on_output_item(self, item: Item) -> None:
        """Ours (recognised by call id and text, whatever id it got) or forged."""
        call_id = item.call_id or ""
        pending = self._unconfirmed.get(call_id) or self._undelivered.get(call_id)
        verdict = self._ledger.classify(item)
        if verdict is Verdict.FORGED:
            await self._forged_output(item)
            return
        if verdict is not Verdict.OWN or pending is None:
            return
        if item.id is not None:
            self._own_output_ids.add(item.id)
            if item.id != pending.item_id:
                self._provider_output_ids[call_id] = item.id
        self._echoed.add(call_id)
        self._confirm(call_id)
        await self._maybe_response_create()

    async def _on_item_deleted(self, item_id: str) -> None:
        if item_id in self._probe_leftovers or item_id in self._probe_leftovers.values():
            key = (
                item_id
                if item_id in self._probe_leftovers
                else next(k for k, v in self._probe_leftovers.items() if v == item_id)
            )
            del self._probe_leftovers[key]
            for event_id in [e for e, k in self._probe_delete_events.items() if k == key]:
                del self._probe_delete_events[event_id]
        untainted = self._ledger.removed(item_id)
        if item_id in self._planted_pending:
            self._planted_pending.discard(item_id)
            for event_id in [e for e, i in self._planted_delete_events.items() if i == item_id]:
                del self._planted_delete_events[event_id]
            untainted = True
        if untainted:
            await self._maybe_response_create()

    async def _on_error(self, event: ErrorEvent) -> None:
        error = event.error
        event_id = error.event_id
        if event_id is not None and event_id in self._planted_delete_events:
            # Refused: the page item is not in the conversation (any more) either way.
            self._planted_pending.discard(self._planted_delete_events.pop(event_id))
            await self._maybe_response_create()
        elif event_id is not None and event_id in self._lookup_events:
            # The provider refused our own look-up: whatever the code (it is undocumented;
            # item_not_found was our guess), the item is not there to retrieve.
            self._resolve_lookup(self._lookup_events[event_id], None)
        elif event_id is not None and event_id in self._probe_delete_events:
            # Not found: that probe never arrived, so it is no leftover either.
            self._probe_leftovers.pop(self._probe_delete_events.pop(event_id), None)
        elif event_id is not None and event_id in self._session_probe_events:
            self._session_probe_events.discard(event_id)
            if self._guard is not None:
                self._guard.refused(event_id)
            logger.warning(
                "provider refused the session probe call_id=%s code=%s", self.call_id, error.code
            )
            self._wake_session_waiters(False)
        elif event_id is not None and self._guard is not None and self._guard.refused(event_id):
            # The provider refused our assertion or restore: no answer will come for it.
            logger.warning(
                "provider refused a session update call_id=%s code=%s", self.call_id, error.code
            )
        elif event_id is not None and event_id == self._response_create_event_id:
            # "Already active": someone (VAD, the browser) started a response first. If it
            # started after our outputs it answers them; if not, they are still unanswered
            # when it ends, and its response.done asks again.
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
                event_id,
            )

    async def _on_response_created(self, event: ResponseCreated) -> None:
        response_id = event.response.id
        # Items the page added before this response began cannot be the model's.
        for item_id in list(self._suspects):
            await self._planted(self._suspects.pop(item_id))
        self._active_response = response_id
        self._response_state_known = True
        # The provider does not say which client event started a response; ours (if any)
        # either is this one or was refused as "already active", so it is no longer pending.
        ours = self._response_create_event_id is not None
        self._response_create_event_id = None
        from_audio = not ours and self._audio_turn
        # One turn, one response: whatever starts next is not that turn's.
        self._audio_turn = False
        # Events on one socket are ordered: the outputs echoed before this are its input,
        # and so are outputs found in the conversation by a resync still under way.
        read = self._carried - self._pending_call_ids()
        self._carried -= read
        covered = (self._unanswered & self._echoed) | read
        self._unanswered -= covered
        self._echoed -= covered
        self._covering[response_id] = covered
        self._confirmed.set()  # a drain waits for outputs to be answered too
        if self._ledger.tainted or self._planted_pending:
            # A response created now reads a forged output or a page item: the model must
            # not answer from it. What it would have answered is asked for again once the
            # item is gone.
            cancelled = await self._cancel(response_id)
            self._report(
                TaintedResponse(
                    response_id=response_id,
                    forged_item_ids=self._ledger.forged_item_ids
                    + tuple(sorted(self._planted_pending)),
                    cancelled=cancelled,
                )
            )
        elif not ours and not from_audio and self._page.responses is PageResponses.CANCEL:
            cancelled = await self._cancel(response_id)
            self._report(PageResponse(response_id=response_id, cancelled=cancelled))

    async def _cancel(self, response_id: str) -> bool:
        cancelled = await self._send(response_cancel(response_id))
        if cancelled:
            self._cancelled_by_us.add(response_id)
        return cancelled

    async def _on_response_done(self, event: ResponseDone) -> None:
        response = event.response
        for item in response.output:
            if item.id is not None:
                self._model_items.add(item.id)
                self._known_items.add(item.id)
                self._suspects.pop(item.id, None)
        # Restricted items added while this response ran that it did not produce: the page's.
        for item_id in list(self._suspects):
            await self._planted(self._suspects.pop(item_id))
        if self._active_response == response.id:
            self._active_response = None
        self._response_state_known = True
        covered = self._covering.pop(response.id, set())
        if response.id in self._cancelled_by_us:
            # We cancelled the answer to these outputs: they still need one.
            self._cancelled_by_us.discard(response.id)
            self._unanswered |= covered
            self._echoed |= covered
        calls = [self._call_from_item(item, response.id) for item in response.output]
        # A call is answered once even if its response.done is repeated.
        finals = [c for c in calls if c is not None and c.call_id not in self._handled]
        if finals and self._draining and not self._stopping:
            # Left recorded and unrun: the next broker process picks them up.
            logger.info(
                "draining: %d call(s) left for the next broker call_id=%s",
                len(finals),
                self.call_id,
            )
        elif finals and response.status == "completed" and not self._stopping:
            self._take_up(finals)
        elif finals:
            self._handled.update(call.call_id for call in finals)
            self._spawn(
                self._abandon(finals, "call_ending" if self._stopping else response.status),
                f"tool-abandon:{response.id}",
            )
        await self._maybe_response_create()

    # ---- page items ------------------------------------------------------------------------

    def _restricted(self, item: Item) -> bool:
        """Whether only the model (or nobody) may add an item like this one."""
        if item.type == "function_call":
            return True
        return (
            item.type == "message"
            and item.role in ("system", "assistant")
            and self._page.items is PageItems.REFUSE
        )

    async def _judge_item(self, item: Item) -> None:
        if item.id is None or item.id in self._model_items or item.id in self._judged:
            return
        if not self._restricted(item):
            return
        if self._active_response is None and self._response_state_known:
            # Nothing is being generated: no response of the model's can have made it.
            await self._planted(item)
        else:
            # The model's own items may be announced here before the response says so
            # (the order is unspecified): decided when this response ends or the next starts.
            self._suspects.setdefault(item.id, item)

    async def _planted(self, item: Item) -> None:
        if item.id is None or item.id in self._model_items or item.id in self._judged:
            return
        self._judged.add(item.id)
        deleted = await self._delete_planted(item.id)
        self._report(
            PageItem(
                item_id=_cut(item.id),
                item_type=item.type,
                role=item.role,
                call_id=_cut(item.call_id),
                tool=_cut(item.name),
                deleted=deleted,
            )
        )

    async def _delete_planted(self, item_id: str) -> bool:
        event = item_delete(item_id)
        self._planted_delete_events[event["event_id"]] = item_id
        if await self._send(event):
            self._planted_pending.add(item_id)
            return True
        del self._planted_delete_events[event["event_id"]]
        return False

    # ---- session config ------------------------------------------------------------------

    async def _check_session(self, event: SessionCreated | SessionUpdated) -> None:
        self._vad_responds = _vad_responds(event.session)
        if self._guard is None:
            return
        if isinstance(event, SessionCreated):
            # Only the page's data channel gets session.created (or a replay of it): it
            # answers none of our updates, so it is judged without taking a pending answer.
            verdict = self._guard.judge(event.session)
        else:
            verdict = self._guard.updated(event.session)
        reapplied = False
        for restore in verdict.restores:
            reapplied = await self._send_session_event(restore) or reapplied
        if verdict.drift is not None and verdict.repeated:
            logger.warning(
                "session still differs after restoring the config call_id=%s fields=%s",
                self.call_id,
                ",".join(verdict.drift.fields),
            )
        elif verdict.drift is not None:
            self._report(replace(verdict.drift, reapplied=reapplied))
        if isinstance(event, SessionUpdated):
            self._wake_session_waiters(True)

    async def _send_session_event(self, event: dict[str, Any]) -> bool:
        if await self._send(event):
            return True
        if self._guard is not None:
            self._guard.unsent(event)
        return False

    async def _probe_session(self) -> bool:
        """Ask the provider for the session and wait for its answer; whether it came.

        Drift in the answer is restored on the reader (before this returns), so anything
        sent after this goes out after the restore.
        """
        assert self._guard is not None
        probe = self._guard.probe()
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._session_waiters.append(waiter)
        self._session_probe_events.add(probe["event_id"])
        if not await self._send_session_event(probe):
            self._session_probe_events.discard(probe["event_id"])
            if not waiter.done():
                waiter.set_result(False)
        try:
            async with asyncio.timeout(SESSION_PROBE_TIMEOUT):
                return await waiter
        except TimeoutError:
            return False
        finally:
            self._session_probe_events.discard(probe["event_id"])
            if waiter in self._session_waiters:
                self._session_waiters.remove(waiter)

    def _wake_session_waiters(self, answered: bool) -> None:
        waiters, self._session_waiters = self._session_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(answered)

    def _fail_session_waiters(self) -> None:
        self._wake_session_waiters(False)

    async def _probe_periodically(self) -> None:
        assert self._probe_interval is not None and self._guard is not None
        while True:
            await asyncio.sleep(self._probe_interval)
            if self._stopping:
                return
            await self._send_session_event(self._guard.probe())

    # ---- calls and outputs ---------------------------------------------------------------

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
        self._spawn(self._answer(calls), f"tool-answer:{calls[0].response_id or 'resync'}")

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
            await self._deliver_all(due)
        finally:
            self._answers_in_flight -= 1
            if self._answers_in_flight == 0:
                self._answers_idle.set()

    async def _deliver_all(self, outputs: Sequence[Undelivered]) -> None:
        self._delivering += 1
        try:
            for output in outputs:
                await self._deliver(output)
        finally:
            self._delivering -= 1
        await self._maybe_response_create()

    async def _answer_unproven(self, found: list[tuple[FunctionCall, str]]) -> None:
        """Answer calls no watched response proves with :data:`UNVERIFIED_OUTPUT`, once."""
        due: list[Undelivered] = []
        for call, _reason in found:
            self._handled.add(call.call_id)
            self._unproven.add(call.call_id)
            self._ledger.expect(call.call_id, UNVERIFIED_OUTPUT)
            due.append(Undelivered(call, UNVERIFIED_OUTPUT, new_item_id()))
        logger.warning(
            "resync: %d finished call(s) the model was not seen making; not run call_id=%s",
            len(found),
            self.call_id,
        )
        await self._deliver_all(due)
        for (call, reason), output in zip(found, due, strict=True):
            self._report(
                UnprovenCall(
                    item_id=_cut(call.item_id),
                    call_id=_cut(call.call_id),
                    tool=_cut(call.name),
                    reason=reason,
                    answered=output.call.call_id not in self._undelivered,
                )
            )

    async def _deliver(self, output: Undelivered) -> bool:
        """Send one output; ``True`` if it went out (it counts once the provider echoes it).

        One that cannot be sent, or whose echo never comes, is looked up (and sent again if
        missing) by the next connection's resync.
        """
        call_id = output.call.call_id
        self._own_output_ids.add(output.item_id)
        event = function_call_output(call_id, output.output, item_id=output.item_id)
        self._unconfirmed[call_id] = output
        self._undelivered.pop(call_id, None)
        if not await self._send(event):
            self._unconfirmed.pop(call_id, None)
            self._undelivered[call_id] = output
            return False
        self._unanswered.add(call_id)
        return True

    def _pending_call_ids(self) -> set[str]:
        """Our outputs not known to be in the conversation (unsent, or sent and unechoed)."""
        return set(self._unconfirmed) | set(self._undelivered)

    def _confirm(self, call_id: str) -> None:
        """The provider has our output for ``call_id``: record it as injected, once."""
        output = self._unconfirmed.pop(call_id, None) or self._undelivered.pop(call_id, None)
        self._confirmed.set()
        if output is not None and call_id not in self._unproven:
            self._spawn(self._tools.output_sent(output.call), f"output-sent:{call_id}")

    async def _forged_output(self, item: Item) -> None:
        deleted = item.id is not None and await self._send(item_delete(item.id))
        self._report(
            ForgedOutput(
                item_id=item.id,
                call_id=_cut(item.call_id),
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
        response, a request of ours pending or being prepared, a forged output or page item
        still in the conversation. With a config guard the session is probed first.
        """
        if not self._response_wanted() or self._creating:
            return
        if self._guard is None:
            await self._send_response_create()
            return
        self._creating = True
        self._spawn(self._probe_then_create(), "response-create")

    def _response_wanted(self) -> bool:
        return bool(
            self._unanswered & self._echoed
            and self._delivering == 0
            and self._active_response is None
            and self._response_create_event_id is None
            and not self._ledger.tainted
            and not self._planted_pending
        )

    async def _probe_then_create(self) -> None:
        try:
            conn = self._conn
            answered = await self._probe_session()
            if conn is not self._conn or self._stopping:
                return  # that connection is gone: the next one's resync decides
            if not answered and self._guard is not None:
                # No view of the session: assert the config blind; the provider applies it
                # before the response we ask for next.
                logger.warning("session probe unanswered call_id=%s; asserting", self.call_id)
                await self._send_session_event(self._guard.assertion())
            if self._response_wanted():
                await self._send_response_create()
        finally:
            self._creating = False

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

    # ---- resync --------------------------------------------------------------------------

    async def _resync(self) -> None:
        """After a (re)attach: finish what the sideband may have missed while it was away.

        1. Outputs whose delivery is unconfirmed are looked up by the id we know.
        2. The conversation's tail is probed (and retrieved if unknown): our output found
           there is confirmed whatever id the provider gave it. Outputs still missing are
           sent again.
        3. Calls the broker saw the model make that may have finished unseen are retrieved:
           a completed one whose arguments are the ones the model streamed is run; an
           incomplete one abandoned. A finished call no watched response proves (the tail,
           one seen only starting, one whose arguments changed) is never run: it gets
           :data:`UNVERIFIED_OUTPUT` and a report.
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
        for output in outputs.values():
            self._ledger.expect(output.call.call_id, output.output)
        missing = await self._look_up_outputs(outputs)
        tail: str | None = None
        tail_item: Item | None = None
        try:
            tail = await self._probe_tail()
        except _LookupFailed:
            logger.warning("resync: the conversation's tail is unknown call_id=%s", self.call_id)
        if tail is not None and tail not in self._known_items:
            try:
                tail_item = await self._lookup(tail)
            except _LookupFailed:
                tail_item = None
            if tail_item is not None and tail_item.type == "function_call_output":
                await self._on_output_item(tail_item)  # ours (confirmed), or forged
        # The tail was the last place a missing output could be found under an id of the
        # provider's own; still missing now, it is sent again (a duplicate output is better
        # than a model that waits for ever).
        resent = False
        due = [o for o in missing if o.call.call_id in self._undelivered]
        if due:
            self._delivering += 1
            try:
                for output in due:
                    resent = await self._deliver(output) or resent
            finally:
                self._delivering -= 1
        candidates = {
            call.item_id: call
            for call in backlog.seen
            if call.item_id is not None and call.response_id and call.call_id not in self._handled
        }
        candidates.update(
            (item_id, call)
            for item_id, call in self._call_items.items()
            if call.call_id not in self._handled
        )
        started = {
            item_id: call
            for item_id, call in self._started_items.items()
            if item_id not in candidates and call.call_id not in self._handled
        }
        finals: list[FunctionCall] = []
        abandoned: list[FunctionCall] = []
        unproven: list[tuple[FunctionCall, str]] = []
        for item_id in [*candidates, *started]:
            try:
                item = await self._lookup(item_id)
            except _LookupFailed:
                continue
            known = candidates.get(item_id) or started[item_id]
            if item is None:
                if item_id in candidates:
                    abandoned.append(known)  # deleted from the conversation: never final
                continue
            call = self._call_from_item(item, known.response_id)
            if call is None or call.call_id in self._handled:
                continue
            if item.status == "incomplete":
                abandoned.append(known)
            elif item.status != "completed":
                continue  # still streaming: its response.done will say
            elif item_id not in candidates:
                unproven.append((call, "partial"))
            elif call.call_id != known.call_id or not _same_arguments(
                call.arguments, known.arguments
            ):
                unproven.append((call, "replaced"))
            else:
                finals.append(known)
        if tail_item is not None and tail_item.type == "function_call":
            call = self._call_from_item(tail_item, "")
            if (
                call is not None
                and call.call_id not in self._handled
                and tail_item.status == "completed"
                and tail not in candidates
                and tail not in started
            ):
                unproven.append((call, "unseen"))
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
        if unproven and not self._stopping:
            self._spawn(self._answer_unproven(unproven), "tool-unproven:resync")
        logger.info(
            "resync call_id=%s outputs=%d resent=%s candidates=%d tail=%s finals=%d"
            " abandoned=%d unproven=%d",
            self.call_id,
            len(outputs),
            resent,
            len(candidates) + len(started),
            tail,
            len(finals),
            len(abandoned),
            len(unproven),
        )
        # Outputs already in the conversation need an answer only if nothing came after
        # them (our output is the tail): then no response read them. Anything after (the
        # model's answer, or the user speaking, which starts a response of its own) means
        # one did. Outputs resent just now are answered like any other.
        # An unknown tail (the probe went unanswered on a live socket) is taken as "ours":
        # a second answer is better than a model that waits for ever.
        in_conversation = self._carried - self._pending_call_ids()
        self._carried.clear()
        if tail is None or tail in self._own_output_ids:
            self._unanswered |= in_conversation
            self._echoed |= in_conversation
        await self._maybe_response_create()

    async def _look_up_outputs(self, outputs: dict[str, Undelivered]) -> list[Undelivered]:
        """Look up each unconfirmed output; confirm the ones found, return the missing ones.

        Missing under the id we know is not yet missing for sure: a provider that names
        items itself (we may not know it does) may hold it under another id, so the caller
        checks the conversation's tail before sending any of them again.
        """
        missing: list[Undelivered] = []
        for call_id, output in outputs.items():
            if call_id not in self._undelivered:
                continue  # confirmed meanwhile (echoed late)
            lookup_id = self._provider_output_ids.get(call_id, output.item_id)
            try:
                existing = await self._lookup(lookup_id)
                if existing is None and call_id in self._undelivered:
                    # A create sent just before the old socket died may still be in the
                    # provider's queue for it: look once more before sending a second one.
                    await asyncio.sleep(RESEND_GRACE)
                    existing = await self._lookup(lookup_id)
            except _LookupFailed:
                continue
            if call_id not in self._undelivered:
                continue
            if existing is None:
                missing.append(output)
            else:
                # It arrived before the sideband dropped; only the confirmation was lost.
                self._own_output_ids.add(lookup_id)
                self._confirm(call_id)
                # Answered or not: decided below from the tail (or by the next resync).
                self._carried.add(call_id)
        return missing

    async def _lookup(self, item_id: str) -> Item | None:
        """``conversation.item.retrieve``; ``None`` if the provider has no such item.

        Raises:
            _LookupFailed: no answer (the sideband went away, or the time ran out).
        """
        return await self._ask(item_id, item_retrieve(item_id))

    async def _probe_tail(self) -> str | None:
        """The id of the conversation's last item (``None``: the conversation is empty).

        Raises:
            _LookupFailed: no answer.
        """
        # A probe whose delete was lost with a socket is still in the conversation, and
        # would be taken for the tail: the provider applies these deletes before the create.
        for key, provider_id in sorted(self._probe_leftovers.items()):
            await self._delete_probe(key, provider_id or key)
        for _ in range(PROBE_ATTEMPTS):
            key = new_item_id(PROBE_ITEM_PREFIX)
            self._known_items.add(key)
            self._probe_keys.add(key)
            self._probe_leftovers[key] = None
            try:
                answer = await self._ask(key, probe_item_create(key))
            finally:
                # Also when unanswered: the note may have been added all the same.
                self._probe_keys.discard(key)
                await self._delete_probe(key, self._probe_leftovers.get(key) or key)
            if answer is None or answer.id is None:
                return None
            if not self._is_probe(answer.id):
                return answer.id
            # A leftover probe (a dead broker process's, or one whose delete we lost).
            logger.warning(
                "resync: deleting a leftover probe item call_id=%s item_id=%s",
                self.call_id,
                answer.id,
            )
            await self._delete_probe(answer.id, answer.id)
        raise _LookupFailed("tail")

    def _is_probe(self, item_id: str) -> bool:
        return is_probe_item_id(item_id) or item_id in self._probe_leftovers.values()

    async def _on_probe_item(
        self, item: Item, key: str, previous_item_id: str | None, *, added: bool
    ) -> None:
        if not added or item.id is None:
            return
        if key in self._probe_keys or key in self._probe_leftovers:
            if item.id != key:
                # The provider named our probe itself: deletes must use its id.
                self._probe_leftovers[key] = item.id
            if key in self._probe_keys:
                # Our probe: the item before it is the conversation's tail.
                tail = Item(id=previous_item_id, type="") if previous_item_id else None
                self._resolve_lookup(key, tail)
            elif item.id != key:
                # A late echo of a probe already given up on: its delete used our id.
                await self._delete_probe(key, item.id)
        else:
            # Someone else's probe text (a dead broker's, or the page's imitation): it is no
            # conversation item of the user's or the model's.
            await self._send(item_delete(item.id))

    async def _delete_probe(self, key: str, item_id: str) -> None:
        event = item_delete(item_id)
        # Its error (a probe that never arrived is not found) is expected, not a warning.
        self._probe_delete_events[event["event_id"]] = key
        self._probe_leftovers.setdefault(key, item_id if item_id != key else None)
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
