"""The per-call brain: watch the sideband, run the model's finished function calls once, answer.

The controller never executes a tool itself. The broker injects a :class:`ToolCallHandler` that
records, authorizes and runs calls, so this module knows nothing about databases or policy.
It owns the connection's lifecycle, routes each provider event to the piece it concerns, and
wires the pieces together; each keeps its own state and, in its own ``connection_lost()``,
resets what a lost connection leaves unsettled.

Rules it keeps (docs/protocol.md §3, docs/protocol.md):

* **Only the model's calls run**, once each (:mod:`sideband.tool_calls`).
* Every call of a completed response gets one ``function_call_output``, then one
  ``response.create`` (:mod:`sideband.responder`); the model never answers one output twice
  (:mod:`sideband.answers`).
* **The session config is the broker's** (:mod:`sideband.config_watch`): the provider's view
  of it is probed, and drift is restored and reported.

Reconnects: when a ``reconnect`` is given, a sideband that closes or breaks while the
controller is not stopping is re-attached (bounded, with backoff, by the caller's
``reconnect``), and then *resynced* (:mod:`sideband.resync`, :mod:`sideband.lookups`). A
call's *first* attach resyncs too when it came after the browser had its SDP answer
(:class:`AnswerGate`): the page may have acted before any sideband watched.

Tamper checks (docs/protocol.md §4, :mod:`sideband.tamper`, :mod:`sideband.page_watch`): config
drift is restored; a ``function_call_output`` the broker did not send is deleted, and a
response started while it was in the conversation is cancelled; items only the model may add
are deleted; under the ``page_responses`` policy ``cancel`` a response nobody the broker
trusts started is cancelled. Each is reported to the injected :class:`TamperHandler`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, Final

from sideband import events as ev
from sideband.acks import Acks
from sideband.answers import AnswerLedger
from sideband.config_watch import ConfigOutcome, ConfigWatch
from sideband.connection import SidebandConnection
from sideband.contracts import (
    Acknowledging,
    AnswerGate,
    AttachKind,
    CallObserver,
    FunctionCall,
    KeypadObserver,
    ToolCallHandler,
    Wiring,
)
from sideband.errors import (
    FrameTooLargeError,
    MalformedEventError,
    SidebandClosedError,
    SidebandError,
)
from sideband.lookups import Lookups
from sideband.notes import NoteRole, Notes
from sideband.page_watch import PageWatch
from sideband.responder import Responder
from sideband.resync import Resync
from sideband.tamper import (
    OutputLedger,
    OversizedFrame,
    OwnedSession,
    PagePolicy,
    PageResponse,
    TaintedResponse,
    Tamper,
    TamperHandler,
    Verdict,
    cut,
)
from sideband.tool_calls import ToolCalls

logger = logging.getLogger(__name__)

DEFAULT_PROBE_INTERVAL: Final = 30.0

_Route = Callable[[Any], Awaitable[None]]


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
        known_outputs: ``(call_id, output)`` of calls another controller (an earlier owner of
            the call) answered: their echoes are ours, not forgeries, and they are never
            taken up again.
        replay: frames the first connection received before this controller ran (a sideband
            opened ahead of a handoff); handled before the socket's own.
        replay_seen_through: the ``event_id`` of the last frame the previous owner handled:
            replayed frames up to it only bring this controller's state up to date (nothing
            is recorded, judged or sent for them); ``None``: none was.
        may_send: asked before every client event is sent; ``False`` (this broker no longer
            owns the call) refuses the send as a closed socket would.
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
        known_outputs: Iterable[tuple[str, str]] = (),
        replay: Sequence[dict[str, Any]] = (),
        replay_seen_through: str | None = None,
        may_send: Callable[[dict[str, Any]], Awaitable[bool]] | None = None,
    ) -> None:
        self.call_id = call_id
        self.last_event_id: str | None = None
        """The ``event_id`` of the last server event handled (a handoff passes it on)."""
        self.last_close_code: int | None = None
        """The close code of the latest sideband socket to close (``None``: none has, or it
        broke without one)."""
        self._connect = connect
        self._reconnect = reconnect
        self._resume = resume
        self._observer = observer
        self._tamper = tamper
        self._conn: SidebandConnection | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._stopping = False
        self._draining = False
        self._stop_requested = asyncio.Event()
        self._gate = gate or AnswerGate()
        self._replay = list(replay)
        self._replay_seen_through = replay_seen_through
        self._may_send = may_send
        wiring = Wiring(call_id, self._send, self._spawn, self._report)
        stopping, draining = (lambda: self._stopping), (lambda: self._draining)
        self._outputs = OutputLedger()
        self._answers = AnswerLedger()
        self._page = PageWatch(page or PagePolicy(), wiring)
        self._lookups = Lookups(wiring)
        self._notes = Notes(
            wiring, ours=self._note_is_ours, sent=self._answers.note_sent, respond=self._respond
        )
        # Long calls are acknowledged out of band (sideband/acks.py) if the broker plans it.
        acknowledging = tools if isinstance(tools, Acknowledging) else None
        self._acks = Acks(
            wiring, self._answers, acknowledging, stopping=stopping, respond=self._respond
        )
        self._calls = ToolCalls(
            wiring,
            tools,
            outputs=self._outputs,
            answers=self._answers,
            respond=self._respond,
            acks=self._acks,
        )
        for call_id, output in known_outputs:
            self._outputs.expect(call_id, output)
            self._calls.handled.add(call_id)
        self._config: ConfigWatch | None = None
        if owned_session is not None:
            self._config = ConfigWatch(
                wiring, owned_session, stopping=stopping, probe_interval=probe_interval or None
            )
        self._responder = Responder(
            wiring,
            self._answers,
            blocked=lambda: (
                self._outputs.tainted or bool(self._page.planted_pending) or self._acks.busy
            ),
            config=self._config,
            connection=lambda: self._conn,
            stopping=stopping,
        )
        self._resync = Resync(
            wiring,
            tools=tools,
            calls=self._calls,
            answers=self._answers,
            outputs=self._outputs,
            lookups=self._lookups,
            output_found=self._on_output_item,
            respond=self._respond,
            stopping=stopping,
            draining=draining,
        )
        # Runs on the reader: anything slow is handed to a task so events keep flowing.
        self._routes: dict[type[ev.ServerEvent], _Route] = {
            ev.ResponseCreated: self._on_response_created,
            ev.SessionCreated: self._on_session,
            ev.SessionUpdated: self._on_session,
            ev.ConversationItemAdded: self._on_item,
            ev.ConversationItemCreated: self._on_item,
            ev.ConversationItemDone: self._on_item,
            ev.ConversationItemRetrieved: self._on_item_retrieved,
            ev.ConversationItemDeleted: self._on_item_deleted,
            ev.ResponseOutputItemAdded: self._on_model_item,
            ev.ResponseOutputItemDone: self._on_model_item,
            ev.FunctionCallArgumentsDone: self._on_arguments_done,
            ev.InputAudioBufferSpeechStopped: self._on_speech_stopped,
            ev.InputAudioBufferCommitted: self._on_committed,
            ev.InputAudioBufferDtmfEventReceived: self._on_dtmf,
            ev.ResponseDone: self._on_response_done,
            ev.ErrorEvent: self._on_error,
        }

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
                    if isinstance(broken, FrameTooLargeError):
                        self._frame_too_large(broken)  # before the lost look-ups are failed
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
            self._lookups.fail_all()
            if self._config is not None:
                self._config.fail_waiters()
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
            self._answers.lost_track()
        if not self._stopping:
            if self._config is not None:
                await self._config.attached()
            await self._page.redelete()
            await self._notes.resend()
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
                self._resync.start()
        try:
            await self._play_replay()
            async for data in conn.frames():
                await self._on_frame(data)
        except SidebandClosedError as exc:
            await conn.close()
            return conn.close_code, exc
        finally:
            if self._config is not None:
                self._config.detached()
            # Acknowledgements are the socket's: none waits on an answer it will not bring.
            self._acks.connection_lost()
        await conn.close()
        return conn.close_code, None

    async def _on_frame(self, data: dict[str, Any]) -> None:
        """One server event as it arrives: recorded, then handled."""
        self._observer.record("in", data)
        event_id = data.get("event_id")
        if isinstance(event_id, str):
            self.last_event_id = event_id
        try:
            event = ev.parse_server_event(data)
        except MalformedEventError as exc:
            logger.warning("sideband event skipped call_id=%s: %s", self.call_id, exc)
            return
        await self._on_event(event)

    async def _play_replay(self) -> None:
        """Handle the frames a sideband opened ahead of a handoff kept (once, first socket).

        Frames the previous owner handled (through ``replay_seen_through``) only update what
        this controller knows (calls the model made, responses, outputs): they were recorded,
        judged and answered there. The rest are handled as if they arrived now.
        """
        frames, self._replay = self._replay, []
        seen = self._replay_seen_through is not None and any(
            frame.get("event_id") == self._replay_seen_through for frame in frames
        )
        for data in frames:
            if not seen:
                await self._on_frame(data)
                continue
            seen = data.get("event_id") != self._replay_seen_through
            try:
                await self._catch_up(ev.parse_server_event(data))
            except MalformedEventError:
                continue

    async def _catch_up(self, event: ev.ServerEvent) -> None:
        """What a frame the previous owner handled tells this controller (see replay)."""
        if isinstance(event, ev.ResponseOutputItemAdded | ev.ResponseOutputItemDone):
            await self._on_model_item(event)
        elif isinstance(event, ev.FunctionCallArgumentsDone):
            self._model_made(event.item_id)
            self._calls.call_items[event.item_id] = FunctionCall(
                event.call_id, event.name, event.arguments, event.response_id, event.item_id
            )
        elif isinstance(event, ev.ResponseCreated):
            self._answers.response_created(event.response.id)
            self._page.response_started(ours=True)
        elif isinstance(event, ev.ResponseDone):
            for item in event.response.output:
                if item.id is not None:
                    self._model_made(item.id)
            self._answers.response_done(event.response.id)
            # Calls the previous owner left unrun (it was draining) are taken up here;
            # those it answered are known outputs, never run again.
            self._calls.response_done(event.response, stopping=self._stopping, draining=False)

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

    def _frame_too_large(self, error: FrameTooLargeError) -> None:
        """Blame the oversized frame on the retrieve outstanding, so no resync asks again."""
        blamed = self._lookups.frame_too_large()
        logger.warning(
            "sideband frame over %d bytes call_id=%s retrieving=%s",
            error.limit,
            self.call_id,
            ",".join(blamed) or "nothing",
        )
        reported: list[str | None] = [*blamed] or [None]
        for item_id in reported:
            self._report(OversizedFrame(item_id=cut(item_id), limit=error.limit))

    def _connection_lost(self) -> None:
        self._resync.connection_lost()
        if self._config is not None:
            self._config.connection_lost()
        self._lookups.connection_lost()
        self._answers.connection_lost()
        self._page.connection_lost()
        self._acks.connection_lost()

    @property
    def attached(self) -> bool:
        return self._conn is not None

    async def update_config(
        self,
        *,
        instructions: str | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> ConfigOutcome:
        """Change the live call's owned instructions and/or tools; waits for the provider.

        See :meth:`ConfigWatch.update_config`: the owned config switches before the send, and
        anything but the provider's answer carrying it puts the old one back.
        """
        if self._config is None or self._conn is None:
            return ConfigOutcome.UNSENT
        return await self._config.update_config(instructions=instructions, tools=tools)

    async def update_instructions(self, instructions: str) -> bool:
        """Change the owned instructions (:meth:`update_config`); whether the provider took it."""
        return await self.update_config(instructions=instructions) is ConfigOutcome.APPLIED

    async def inject_note(self, text: str, role: NoteRole = "system") -> bool:
        """Add a message of the broker's, then ask for a response; whether it was sent.

        A ``system`` note by default; a ``user`` one for a phone caller's keypad turn.
        Its id is registered as ours before the send (:mod:`sideband.notes`). Not sent now
        (the sideband is away): kept for the next connection, unless the controller stops.
        """
        if self._stopping:
            return False
        return await self._notes.add(text, connected=self._conn is not None, role=role)

    async def send_client_event(self, event: dict[str, Any]) -> bool:
        """Send a client event someone else wrote (a trusted backend's, relayed).

        Recorded like the controller's own. ``False`` if no sideband is connected (or it is
        gone).
        """
        if self._conn is None or self._stopping:
            return False
        return await self._send(event)

    def _note_is_ours(self, item_id: str) -> None:
        self._page.ours(item_id)
        self._lookups.known_items.add(item_id)

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
        self._resync.cancel()
        if self._config is not None:
            self._config.stop()
        self._lookups.fail_all()
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
                await self._calls.idle.wait()
                # Sent is not yet delivered: wait for the provider's echo of each output,
                # and for a response that reads it (else the next process cannot tell).
                while self._answers.outstanding and not self._stopping:
                    self._answers.confirmed.clear()
                    await self._answers.confirmed.wait()
        except TimeoutError:
            logger.warning(
                "drain: tool calls still running after %.1fs call_id=%s", grace, self.call_id
            )
        await self.stop()

    # ---- events --------------------------------------------------------------------------

    async def _on_event(self, event: ev.ServerEvent) -> None:
        route = self._routes.get(type(event))
        if route is not None:
            await route(event)

    async def _on_session(self, event: ev.SessionCreated | ev.SessionUpdated) -> None:
        self._page.session_seen(event.session)
        if self._config is not None:
            await self._config.check(event)

    async def _on_item(
        self, event: ev.ConversationItemAdded | ev.ConversationItemCreated | ev.ConversationItemDone
    ) -> None:
        item = event.item
        self._lookups.seen(item)
        key = ev.probe_key(item)
        if key is not None:
            added = not isinstance(event, ev.ConversationItemDone)
            await self._lookups.probe_item(item, key, event.previous_item_id, added=added)
        elif item.type == "function_call_output":
            await self._on_output_item(item)
        else:
            await self._page.judge(item, idle=self._answers.idle)

    async def _on_output_item(self, item: ev.Item) -> None:
        """Ours (recognised by call id and text, whatever id it got) or forged."""
        call_id = item.call_id or ""
        pending = self._answers.pending(call_id)
        verdict = self._outputs.classify(item)
        if verdict is Verdict.FORGED:
            await self._page.forged(item)
            return
        if verdict is not Verdict.OWN or pending is None:
            return
        self._calls.injected(call_id, self._answers.echo(call_id, item.id))
        await self._respond()

    async def _on_item_retrieved(self, event: ev.ConversationItemRetrieved) -> None:
        self._lookups.retrieved(event.item)

    async def _on_item_deleted(self, event: ev.ConversationItemDeleted) -> None:
        self._lookups.deleted(event.item_id)
        untainted = self._outputs.removed(event.item_id)
        untainted = self._page.deleted(event.item_id) or untainted
        if untainted:
            await self._respond()

    def _model_made(self, item_id: str) -> None:
        self._page.model_made(item_id)
        self._lookups.known_items.add(item_id)

    async def _on_model_item(
        self, event: ev.ResponseOutputItemAdded | ev.ResponseOutputItemDone
    ) -> None:
        if event.item.id is not None:
            self._model_made(event.item.id)
            if event.item.status != "in_progress":
                # Finished where we watched it: no longer a tail to retrieve again.
                self._lookups.seen(event.item)
            self._calls.model_item(event.item, event.response_id)

    async def _on_arguments_done(self, event: ev.FunctionCallArgumentsDone) -> None:
        self._model_made(event.item_id)
        call = FunctionCall(
            event.call_id, event.name, event.arguments, event.response_id, event.item_id
        )
        self._calls.arguments_done(event.item_id, call)

    async def _on_speech_stopped(self, event: ev.InputAudioBufferSpeechStopped) -> None:
        self._page.speech_stopped(event.item_id)

    async def _on_committed(self, event: ev.InputAudioBufferCommitted) -> None:
        self._page.committed(event.item_id)

    async def _on_dtmf(self, event: ev.InputAudioBufferDtmfEventReceived) -> None:
        # A phone caller's key: the broker records it; a finished keypad turn comes back as
        # a user message of ours for the model to answer.
        if not isinstance(self._observer, KeypadObserver):
            return
        text = self._observer.dtmf(event.event)
        if text is not None:
            await self.inject_note(text, role="user")

    async def _on_error(self, event: ev.ErrorEvent) -> None:
        event_id, code = event.error.event_id, event.error.code
        if event_id is not None:
            if self._page.refused(event_id):
                await self._respond()
                return
            if (
                self._lookups.refused(event_id)
                or (self._config is not None and self._config.refused(event_id, code))
                or self._responder.refused(event_id, code)
                or self._acks.refused(event_id, code)
            ):
                return
        logger.warning(
            "provider error call_id=%s code=%s event_id=%s", self.call_id, code, event_id
        )

    async def _on_response_created(self, event: ev.ResponseCreated) -> None:
        if self._acks.started(event.response):
            return  # our acknowledgement: reads no output, and is never the page's
        response_id = event.response.id
        # Items the page added before this response began cannot be the model's.
        await self._page.plant_suspects()
        ours = self._answers.response_created(response_id)
        page_started = self._page.response_started(ours=ours)
        if self._outputs.tainted or self._page.planted_pending:
            # A response created now reads a forged output or a page item: the model must
            # not answer from it. What it would have answered is asked for again once the
            # item is gone.
            cancelled = await self._cancel(response_id)
            forged = self._outputs.forged_item_ids + tuple(sorted(self._page.planted_pending))
            self._report(TaintedResponse(response_id, forged_item_ids=forged, cancelled=cancelled))
        elif page_started:
            cancelled = await self._cancel(response_id)
            self._report(PageResponse(response_id=response_id, cancelled=cancelled))

    async def _cancel(self, response_id: str) -> bool:
        cancelled = await self._send(ev.response_cancel(response_id))
        if cancelled:
            self._answers.cancelled(response_id)
        return cancelled

    async def _on_response_done(self, event: ev.ResponseDone) -> None:
        response = event.response
        if self._acks.done(response):
            await self._respond()  # the output's response.create waited for it to end
            return
        for item in response.output:
            if item.id is not None:
                self._model_made(item.id)
        # Restricted items added while this response ran that it did not produce: the page's.
        await self._page.plant_suspects()
        self._answers.response_done(response.id)
        self._calls.response_done(response, stopping=self._stopping, draining=self._draining)
        await self._respond()

    # ---- wiring --------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        assert self._tasks is not None, "tasks are only spawned by the reader"
        return self._tasks.create_task(coro, name=f"{name}:{self.call_id}")

    async def _respond(self) -> None:
        await self._responder.respond()

    def _report(self, tamper: Tamper) -> None:
        if self._tamper is not None:
            self._spawn(self._tamper.tampered(tamper), f"tamper:{tamper.kind}")

    async def _send(self, event: dict[str, Any]) -> bool:
        """Send and record; ``False`` if the sideband is gone (the result stays recorded)."""
        assert self._conn is not None
        if self._may_send is not None and not await self._may_send(event):
            logger.warning(
                "sideband send refused call_id=%s type=%s: this broker no longer owns the call",
                self.call_id,
                event["type"],
            )
            return False
        try:
            await self._conn.send(event)
        except SidebandClosedError as exc:
            logger.warning(
                "sideband send failed call_id=%s type=%s: %s", self.call_id, event["type"], exc
            )
            return False
        self._observer.record("out", event)
        return True
