"""The sideband supervisor: one owned task per live call, wiring ``sideband`` to the broker.

Each call runs in a task named ``sideband:{session_id}`` that owns an event writer, the
call's :class:`broker.call.leash.Leash` and the :class:`sideband.CallController`; its outcome is
recorded on the session row. A lost sideband is re-attached by the controller (bounded by
``sideband_reconnect_timeout``); one that cannot be attached (or re-attached) in time leaves
the session ``degraded`` (the bridge takes over), and a call the provider no longer knows
is ``ended``.

On start, the broker attaches again (``start(…, resume=True)``) to every call a previous
broker process controlled: calls a crash left ``running`` are settled by the idempotency
rule, and the controller's resync finishes the rest. :meth:`SidebandSupervisor.close` drains: no new
call is taken up, calls under way finish and are delivered within the grace, the sockets
close, and anything left stays recorded for the next process. The call itself is never hung
up on shutdown: it belongs to the browser and the provider. The broker does hang up when it
decides the call must end (a leash limit, or a tamper policy of ``hangup``); the session's
end reason then says why.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any, Final

import aiohttp
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker import tracing
from broker.audit import trail as audit
from broker.audit.records import Actor, AuditEntry, AuditKind
from broker.call.hangup import hang_up
from broker.call.keypad import DtmfRecord, Keypad, KeypadTurn
from broker.call.leash import Leash, LeashTerms
from broker.call.observer import SessionObserver
from broker.call.ownership import StandbyConnection, may_act_now
from broker.call.tamper_policy import TamperResponder
from broker.call.trusted_dial import Preamble, ProviderSocket, configure
from broker.call.trusted_relay import TrustedLink
from broker.db import queries
from broker.db.fence import LeaseLostError
from broker.db.models import ConnectionType, SessionState, SidebandState
from broker.db.shielded import ShieldedWrites
from broker.logs import bind_call
from broker.metrics import BrokerMetrics, SidebandFailure
from broker.record.event_log import EventRecorder
from broker.session.end_reason import EndReason
from broker.session.ending import end_session
from broker.session.limits import TamperPolicy
from broker.tools.dispatch import ToolDispatcher
from broker.tools.sideband_handler import SessionToolHandler
from sideband import (
    AnswerGate,
    CallController,
    CallEndedError,
    CallNotFoundError,
    CallObserver,
    ConfigOutcome,
    OwnedSession,
    PageItems,
    PagePolicy,
    PageResponses,
    Provider,
    ProviderError,
    ProviderTimeoutError,
    SidebandConnection,
    SidebandError,
    SidebandTarget,
)

logger = logging.getLogger(__name__)


class HandedOverError(SidebandError):
    """The sideband closed while its call was being handed to another instance."""


HANDED_OVER_EVENT: Final = "broker.sideband_handed_over"
"""Written last by an instance handing a call over: ``to`` and ``last_event_id`` (the last
server event it handled; the successor handles what came after)."""
REATTACH_NOT_FOUND_GRACE: Final = 1.0
"""After an abnormal close, how long a 404 on re-attach is retried before the call counts as
ended (after a clean close, the first 404 is conclusive)."""
RECONNECT_SPREAD: Final = 0.05
"""Upper bound of the random wait before re-attaching, so that many sidebands dropped at once
(a provider restart) do not all come back in one burst."""


class SidebandSupervisor:
    """Starts, tracks and stops the sideband of every live call in this process."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        provider: Provider,
        http: aiohttp.ClientSession,
        dispatcher: ToolDispatcher,
        attach_timeout: float,
        reconnect_timeout: float = 30.0,
        metrics: BrokerMetrics | None = None,
        probe_interval: float = 30.0,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._provider = provider
        self._http = http
        self._dispatcher = dispatcher
        self._attach_timeout = attach_timeout
        self._reconnect_timeout = reconnect_timeout
        self.metrics = metrics if metrics is not None else BrokerMetrics()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._controllers: dict[str, CallController] = {}
        self._tool_handlers: dict[str, SessionToolHandler] = {}
        self._observers: dict[str, SessionObserver] = {}
        """Each supervised call's tool handler, whose allowlist a reconfiguration changes."""
        self._ending: dict[str, tuple[EndReason, str | None]] = {}
        """Calls the broker is ending, with the end reason to record (leash, tamper) and who
        ended it (an operator's key; ``None``: as the reason says)."""
        self._stopping = False
        self._writes = ShieldedWrites()
        self._probe_interval = probe_interval
        self._gates: dict[str, AnswerGate] = {}
        self._watching: dict[str, asyncio.Event] = {}
        """Set once the call's sideband attached and that is recorded (:meth:`watching`)."""
        """Calls whose SDP answer may still wait for their first attach."""
        self._lost: set[str] = set()
        """Calls another instance took: they stop writing and sending at once."""
        self._handing: dict[str, str] = {}
        """Calls being handed to another instance (its id), draining for it."""
        self.instance_id: str | None = None
        """This broker instance's id, named in the sideband's audit records (set by the
        session service, which holds the call ownership)."""
        self._trusted: dict[str, TrustedLink] = {}
        """Trusted server sessions' calls: their provider WebSocket session is the sideband
        (never re-attached, no provider hangup: closing it ends the call)."""
        self.handoff_pending: Callable[[str], bool] = lambda _session_id: False
        """Whether the call is being offered to another instance (set by the app's wiring):
        a sideband lost meanwhile is not re-attached."""
        self.keypad_turn: Callable[[str], KeypadTurn | None] = lambda _line: None
        """A phone line's keypad turn, by the line's name (set by the app's wiring from the
        lines file); ``None``: the line has none."""
        self.dtmf_record: Callable[[str], DtmfRecord] = lambda _line: DtmfRecord.DIGITS
        """What a phone line's event log keeps of the caller's keys, by the line's name."""

    def start(
        self,
        session_id: str,
        call_id: str,
        allowed_tools: Collection[str],
        session_config: Mapping[str, Any] | None = None,
        *,
        resume: bool = False,
        standby: StandbyConnection | None = None,
        trace_link: str | None = None,
    ) -> None:
        """Start supervising ``call_id``; returns at once (the SDP answer must not wait).

        Args:
            session_id: the broker's session.
            call_id: the provider's call.
            allowed_tools: the session's tool allowlist.
            session_config: the server-owned session the call was created with; the
                browser's changes to its instructions, tools or tool choice are reverted.
                ``None`` turns that check off.
            resume: an earlier broker process controlled this call: a 404 now means it ended
                while no broker watched, calls a crash left ``running`` are settled first,
                and the controller resyncs right after attaching.
            standby: the sideband this instance opened ahead of a handoff, with the frames
                it kept: the first connection (``resume`` implied).
            trace_link: the ``traceparent`` the session was created under
                (``sessions.trace_parent``): the call's span links to it.

        Called under the call's fence (:func:`broker.db.fence.fenced`): the task it starts
        inherits it, and so does every task the call's controller starts.
        """
        if session_id in self._tasks or self._stopping:
            return
        owned = OwnedSession.from_config(session_config) if session_config is not None else None
        gate = AnswerGate()
        resume = resume or standby is not None
        if not resume:
            self._gates[session_id] = gate
        task = asyncio.create_task(
            self._traced(
                session_id, call_id, allowed_tools, owned, resume, gate, standby, trace_link
            ),
            name=f"sideband:{session_id}",
        )
        self._tasks[session_id] = task
        task.add_done_callback(lambda t: self._finished(session_id, t))

    def start_trusted(
        self,
        session_id: str,
        call_id: str,
        allowed_tools: Collection[str],
        session_config: Mapping[str, Any],
        link: TrustedLink,
    ) -> None:
        """Supervise a trusted session's call on the provider WebSocket session ``link`` holds.

        As :meth:`start`, with its backend relayed (:mod:`broker.call.trusted_relay`). When the
        call ends, for whatever reason, the session ends with it.
        """
        if session_id in self._tasks or self._stopping:
            return
        self._trusted[session_id] = link
        self.start(session_id, call_id, allowed_tools, session_config)

    async def dial_trusted(
        self, session_id: str, model: str, call_id: str, config: Mapping[str, Any]
    ) -> tuple[ProviderSocket, Preamble]:
        """Open a trusted session's provider WebSocket session and hand it ``config``.

        Returns the socket (``/v1/realtime?model=…``) and the frames until the provider
        answered the server-owned config.

        Raises:
            SidebandError: it could not be opened within the attach bound, or the provider
                refused the config (the socket is closed).
            TimeoutError: no answer to the config in time (the socket is closed).
        """
        connection = await _attach(
            session_id,
            self._http,
            self._provider.session_target(model),
            call_id,
            "trusted",
            attach_timeout=self._attach_timeout,
        )
        try:
            return connection, await configure(connection, config)
        except BaseException:
            await connection.close()
            raise

    def task_of(self, session_id: str) -> asyncio.Task[None] | None:
        """The task supervising the session's call, while it runs."""
        return self._tasks.get(session_id)

    async def hold_answer(self, session_id: str, wait: float) -> bool:
        """Hold a new call's SDP answer until its sideband attached, at most ``wait`` s.

        Returns whether the sideband attached first. If not, the answer goes out anyway and
        the first attach resyncs: whatever the page did before it is looked at under the
        provenance rule (a call no watched response made is never run).
        """
        gate = self._gates.pop(session_id, None)
        if gate is None:
            return False
        if wait > 0:
            try:
                async with asyncio.timeout(wait):
                    await gate.attached.wait()
            except TimeoutError:
                pass
        first = gate.answer_sent()
        if not first:
            logger.info(
                "answering before the sideband attached session_id=%s; it will resync",
                session_id,
            )
        self.metrics.answer_held(first)
        return first

    def _finished(self, session_id: str, task: asyncio.Task[None]) -> None:
        self._tasks.pop(session_id, None)
        self._trusted.pop(session_id, None)
        self._gates.pop(session_id, None)
        self._watching.pop(session_id, None)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("sideband supervisor crashed session_id=%s", session_id, exc_info=exc)

    def running(self, session_id: str) -> bool:
        return session_id in self._tasks

    async def let_go(self, session_id: str) -> None:
        """Another instance owns the call now: stop at once, writing and sending nothing more.

        The call goes on at the provider, watched by its new owner.
        """
        task = self._tasks.get(session_id)
        if task is None:
            return
        self._lost.add(session_id)
        controller = self._controllers.get(session_id)
        if controller is not None:
            controller.condemn()
            await controller.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        self._lost.discard(session_id)

    async def open_standby(self, session_id: str, call_id: str) -> StandbyConnection:
        """Open a sideband to a call another instance is handing over, keeping its frames.

        Raises:
            SidebandError: it could not be attached within the attach bound.
        """
        connection = await _attach(
            session_id,
            self._http,
            self._provider.sideband_target(call_id),
            call_id,
            "standby",
            attach_timeout=self._attach_timeout,
        )
        standby = StandbyConnection(session_id, connection)
        standby.start()
        return standby

    async def hand_off(self, session_id: str, successor_id: str, grace: float) -> bool:
        """Drain the call's sideband for a successor that has its own sideband open.

        Tool calls under way finish and are delivered (up to ``grace``); calls the model
        finishes meanwhile stay recorded for the successor; then the socket closes and the
        call's events are stored, the last with the ``event_id`` this sideband got to (the
        successor handles what came after it). Returns once the sideband task has ended.
        """
        task = self._tasks.get(session_id)
        controller = self._controllers.get(session_id)
        if session_id in self._trusted:
            return False  # its sockets are this instance's: no other can take them over
        if task is None or controller is None:
            return task is None  # bridge-only (nothing to drain) or still setting up
        self._handing[session_id] = successor_id
        await controller.drain(grace)
        await asyncio.gather(task, return_exceptions=True)
        return True

    @property
    def live_count(self) -> int:
        return len(self._tasks)

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def close(self, grace: float = 5.0) -> None:
        """Stop every sideband, recording how each ended: a drain, bounded by ``grace``.

        No new call is taken up; calls under way finish and are delivered; then the sockets
        close. Whatever is still running after ``grace`` seconds is cancelled (a cancelled
        tool settles as ``outcome_unknown``); calls not taken up stay recorded, unrun, for
        the next broker process to find.
        """
        self._stopping = True
        tasks = list(self._tasks.values())
        if not tasks:
            await self._writes.drain()
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        drains = []
        for session_id, task in list(self._tasks.items()):
            controller = self._controllers.get(session_id)
            if controller is None:
                continue  # setting up (sees _stopping) or finishing: ends by itself
            if controller.attached:
                drains.append(controller.drain(grace))
            else:
                task.cancel()  # still attaching: nothing to drain
        await asyncio.gather(*drains, return_exceptions=True)
        _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time()) + 1.0)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._writes.drain()

    async def set_sideband_state(
        self, session_id: str, state: SidebandState, *entries: AuditEntry
    ) -> None:
        """Record the sideband's state, with the audit ``entries`` that say why."""
        async with self._sessionmaker.begin() as s:
            await queries.set_sideband_state(s, session_id, state)
            await audit.add(s, *entries)

    async def _audit(self, entry: AuditEntry) -> None:
        """Record ``entry`` in a transaction of its own, for a change with none (a tamper).

        A failed write is logged, not raised: it would end the call's controller, and the
        policy must still act. Under the call's fence, an instance that lost the call writes
        nothing.
        """
        try:
            await audit.append(self._sessionmaker, entry)
        except (SQLAlchemyError, LeaseLostError) as exc:
            logger.error(
                "audit record not written session_id=%s kind=%s error=%s",
                entry.session_id,
                entry.kind,
                type(exc).__name__,
            )

    async def _traced(
        self,
        session_id: str,
        call_id: str,
        allowed_tools: Collection[str],
        owned: OwnedSession | None,
        resume: bool,
        gate: AnswerGate,
        standby: StandbyConnection | None,
        trace_link: str | None = None,
    ) -> None:
        """:meth:`_supervise` in the call's span, which lives as long as its sideband task.

        A child of the offer's span when the offer started it; the root of its own trace when
        this process took the call up again (``broker.resumed``). Linked, either way, to the
        span that created the session (``trace_link``), which may be in the app's trace.
        """
        with tracing.span(
            "broker.call",
            {
                "broker.session_id": session_id,
                "broker.call_id": call_id,
                "broker.resumed": resume or standby is not None,
            },
            links=(tracing.linked_context(trace_link),),
        ) as span:
            tracing.register_call(session_id, span.context())
            try:
                await self._supervise(
                    session_id, call_id, allowed_tools, owned, resume, gate, standby
                )
            finally:
                tracing.forget_call(session_id)

    async def _supervise(
        self,
        session_id: str,
        call_id: str,
        allowed_tools: Collection[str],
        owned: OwnedSession | None,
        resume: bool,
        gate: AnswerGate,
        standby: StandbyConnection | None,
    ) -> None:
        bind_call(session_id, call_id)  # this task's, and its children's, log records
        recorder = EventRecorder(self._sessionmaker, session_id)
        replay: list[dict[str, Any]] = []
        first: SidebandConnection | None = None
        trusted = self._trusted.get(session_id)
        if standby is not None:
            first, replay = await standby.take()
        elif trusted is not None:
            first = trusted.connection
        close_code: int | None = None
        failure: BaseException | None = None
        controller: CallController | None = None
        keypad: Keypad | None = None
        try:
            await recorder.start()
            for direction, frame in trusted.preamble if trusted is not None else ():
                recorder.record(direction, frame)
            async with self._sessionmaker() as s:
                row = await queries.get_session_row(s, session_id)
            if row is None:
                raise LookupError(f"session {session_id} vanished before its sideband started")
            await self.set_sideband_state(session_id, SidebandState.CONNECTING)
            known_outputs: list[tuple[str, str]] = []
            seen_through: str | None = None
            if resume:
                # As the model got them (a redacting tool's opened from their seals): what
                # their echoes carry.
                known_outputs = await self._dispatcher.answered_outputs(session_id)
                if standby is not None:
                    async with self._sessionmaker() as s:
                        seen_through = await queries.handed_over_at(s, session_id)
                for call_id_, status in await self._dispatcher.recover_interrupted(session_id):
                    recorder.record(
                        "broker",
                        {
                            "type": "broker.tool_call_recovered",
                            "call_id": call_id_,
                            "status": status.value,
                        },
                    )
            target = self._provider.sideband_target(call_id)

            async def connect() -> SidebandConnection:
                nonlocal first
                if first is not None:
                    conn, first = first, None
                    return conn
                if resume:
                    # The call may have ended while no broker watched: a 404 now is the answer.
                    return await reconnect(None)
                return await _attach(
                    session_id,
                    self._http,
                    target,
                    call_id,
                    "first",
                    attach_timeout=self._attach_timeout,
                )

            async def reconnect(close_code: int | None) -> SidebandConnection:
                if self.handoff_pending(session_id):
                    # Offered to another instance, whose own attach may be what closed this
                    # one (a provider with one sideband per call): re-attaching would close
                    # theirs in turn. Let go; the successor's resync finishes what is left.
                    raise HandedOverError(f"sideband closed ({close_code}) during a handoff")
                clean = close_code in (1000, 1001)
                return await _attach(
                    session_id,
                    self._http,
                    target,
                    call_id,
                    "reattach",
                    attach_timeout=self._reconnect_timeout,
                    not_found_for=0.0 if clean else REATTACH_NOT_FOUND_GRACE,
                    first_delay=0.0 if clean else RECONNECT_SPREAD,
                )

            async def end_call(reason: EndReason) -> None:
                await self._end_call(session_id, call_id, reason)

            async def set_sideband_state(state: SidebandState, *entries: AuditEntry) -> None:
                await self.set_sideband_state(session_id, state, *entries)

            leash = Leash(
                session_id, LeashTerms.from_row(row), self._sessionmaker, recorder, end_call
            )
            tool_handler = SessionToolHandler(
                self._dispatcher,
                session_id,
                allowed_tools,
                recorder,
                on_settled=leash.tool_call_settled,
                session_tools=trusted.tools if trusted is not None else None,
            )
            if row.connection_type == ConnectionType.SIP:
                keypad = Keypad(
                    session_id,
                    recorder,
                    self._dispatcher.dtmf,
                    self.keypad_turn(row.sip_line) if row.sip_line else None,
                    self.dtmf_record(row.sip_line) if row.sip_line else DtmfRecord.DIGITS,
                )
            session_observer = SessionObserver(
                session_id,
                recorder,
                leash,
                self.metrics,
                set_sideband_state,
                instance_id=self.instance_id,
                keypad=keypad,
                on_attached=self._watching.setdefault(session_id, asyncio.Event()).set,
            )
            observer: CallObserver = session_observer
            controller = CallController(
                call_id,
                connect,
                tool_handler,
                trusted.observe(observer) if trusted is not None else observer,
                owned_session=owned,
                tamper=TamperResponder(
                    session_id,
                    TamperPolicy(row.tamper_policy),
                    recorder,
                    end_call,
                    self.metrics.tamper_seen,
                    audit=self._audit,
                ),
                # A trusted session's provider socket is its call: lost, it is over.
                reconnect=reconnect if trusted is None else None,
                resume=resume,
                page=PagePolicy(
                    items=PageItems(row.page_items), responses=PageResponses(row.page_responses)
                ),
                probe_interval=self._probe_interval,
                gate=gate,
                known_outputs=known_outputs,
                replay=replay,
                replay_seen_through=seen_through,
                may_send=_may_send,
            )
            if self._stopping:
                return  # the broker began stopping while this sideband was being set up
            self._controllers[session_id] = controller
            if trusted is not None:
                trusted.relay.bind(controller.send_client_event)
            self._tool_handlers[session_id] = tool_handler
            self._observers[session_id] = session_observer
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(recorder.run(), name=f"sideband-recorder:{session_id}")
                # The leash lives exactly as long as the sideband: a call that ended for
                # any other reason needs no timers.
                leash_task = tasks.create_task(leash.run(), name=f"sideband-leash:{session_id}")
                try:
                    close_code = await controller.run()
                except (SidebandError, ExceptionGroup) as exc:
                    failure = exc
                finally:
                    leash_task.cancel()
                    recorder.stop()
        except asyncio.CancelledError as exc:
            failure = exc
            raise
        except Exception as exc:
            failure = exc
            if session_id not in self._lost:
                logger.exception("sideband supervisor failed session_id=%s", session_id)
        finally:
            self._controllers.pop(session_id, None)
            self._tool_handlers.pop(session_id, None)
            self._observers.pop(session_id, None)
            if keypad is not None:
                keypad.forget()
            if first is not None:
                await first.close()
            if session_id in self._lost:
                # Another instance owns the call: nothing of this one's may be written.
                recorder.stop()
                recorder.discard()
                logger.info("sideband let go session_id=%s call_id=%s", session_id, call_id)
            else:
                # Whatever happened, the row must say how the sideband ended (the bridge decides
                # by it) and the buffered events must reach the database: shielded, so a
                # shutdown's cancellation cannot skip it.
                last_code = controller.last_close_code if controller is not None else close_code
                last_event_id = controller.last_event_id if controller is not None else None
                await self._writes.run(
                    self._finish(session_id, call_id, last_code, last_event_id, failure, recorder),
                    name=f"sideband-finish:{session_id}",
                )

    async def update_config(
        self,
        session_id: str,
        *,
        instructions: str | None = None,
        tools: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> ConfigOutcome:
        """Change a supervised call's instructions and/or tools (name -> provider definition).

        Waits for the provider's answer (:meth:`sideband.CallController.update_config`); once
        it carries the new tools, the call's tool handler judges calls by them.

        Raises:
            KeyError: this process does not supervise the session's sideband.
        """
        controller = self._controllers[session_id]
        outcome = await controller.update_config(
            instructions=instructions, tools=None if tools is None else list(tools.values())
        )
        handler = self._tool_handlers.get(session_id)
        if outcome is ConfigOutcome.APPLIED and tools is not None and handler is not None:
            handler.allow(tools)
        return outcome

    async def inject_note(self, session_id: str, text: str, stored: str | None = None) -> bool:
        """Add a system message of the broker's to a supervised call, then a response.

        Whether it went out (:meth:`sideband.CallController.inject_note`). ``stored``: what
        the event log keeps instead of ``text`` (the model gets ``text``), in every event
        holding the message (the item sent, the provider's echoes, a resend).

        Raises:
            KeyError: this process does not supervise the session's sideband.
        """
        controller = self._controllers[session_id]
        if stored is not None:
            self._observers[session_id].keep_as(text, stored)
        return await controller.inject_note(text)

    async def watching(self, session_id: str, wait: float) -> bool:
        """Wait (at most ``wait`` s) until the call's sideband attached and it is recorded.

        What the broker sends from then on (a phone call's turn detection and greeting) comes
        after the attach in the session's event log, and the controller reads every answer.
        """
        if session_id not in self._tasks:
            return False
        event = self._watching.setdefault(session_id, asyncio.Event())
        try:
            async with asyncio.timeout(wait):
                await event.wait()
        except TimeoutError:
            return False
        return session_id in self._tasks

    async def send_client_event(self, session_id: str, event: dict[str, Any]) -> bool:
        """Send a client event of the broker's own on a supervised call; whether it went out.

        A phone call's turn detection and greeting: recorded like the controller's own.

        Raises:
            KeyError: this process does not supervise the session's sideband.
        """
        return await self._controllers[session_id].send_client_event(event)

    async def end_call(
        self, session_id: str, call_id: str, reason: EndReason, actor: str | None = None
    ) -> bool:
        """End a supervised call for a decision (an operator's); idempotent.

        Returns ``False`` if the provider did not hang up (the call goes on, still watched).
        ``actor``: who ends it, for its ``session.ended`` audit record (an operator's key).

        Raises:
            KeyError: this process does not supervise the session's sideband.
        """
        if session_id not in self._controllers:
            task = self._tasks.get(session_id)
            if session_id not in self._trusted or task is None:
                raise KeyError(session_id)
            # A trusted session's call still setting up: stopped before it runs, its end is
            # recorded for this reason (its provider socket closes with the task).
            self._ending.setdefault(session_id, (reason, actor))
            task.cancel()
            return True
        return await self._end_call(session_id, call_id, reason, actor)

    async def transfer_call(
        self,
        session_id: str,
        call_id: str,
        target_uri: str,
        actor: str,
        record: Callable[[], Awaitable[None]],
    ) -> bool:
        """Transfer a supervised phone call to ``target_uri`` (``refer``), then let it go.

        The end reason (``transferred``) is noted before the refer, so however the sideband
        then closes (the provider may close it at once) the session ends as transferred, not
        as a lost call. Once the provider took the refer, ``record`` runs (the audit record
        and event, before the end) and the sideband is closed: the call is no longer the
        model's. Returns ``False`` if the broker is already ending the call.

        Raises:
            KeyError: this process does not supervise the session's sideband.
            ProviderError, CallNotFoundError, ProviderTimeoutError, ProviderUnreachableError,
                ProviderCapabilityError: the provider did not take the refer; the call goes
                on, watched as before.
        """
        controller = self._controllers[session_id]
        if session_id in self._ending:
            return False
        self._ending[session_id] = (EndReason.TRANSFERRED, actor)
        try:
            # Shielded: a request cancelled mid-refer must not leave the outcome unknown here.
            await self._writes.run(
                self._provider.refer_call(call_id, target_uri), name=f"refer:{session_id}"
            )
        except BaseException:
            self._ending.pop(session_id, None)
            raise
        controller.condemn()
        logger.warning("call transferred session_id=%s call_id=%s", session_id, call_id)
        try:
            await record()
        finally:
            await controller.stop()
        return True

    async def _end_call(
        self, session_id: str, call_id: str, reason: EndReason, actor: str | None = None
    ) -> bool:
        """End the call for a broker decision (leash limit, tamper policy); idempotent.

        The reason is noted first, so however the sideband then ends (the provider closes it
        on hangup, or we close it here) the session records this reason. The hangup is
        shielded: the leash task that asks for it is cancelled as soon as the sideband
        closes, which on the emulator happens before the hangup request is even answered.
        """
        if session_id in self._ending:
            return True
        self._ending[session_id] = (reason, actor)
        logger.warning(
            "ending call session_id=%s call_id=%s reason=%s", session_id, call_id, reason
        )
        controller = self._controllers.get(session_id)
        if controller is not None:
            # Decided now: a call the model makes while the hangup is in flight never runs.
            controller.condemn()
        # A trusted session's call is its provider socket: closing it (below) ends it.
        hung_up = session_id in self._trusted or await self._writes.run(
            hang_up(self._provider, call_id), name=f"hangup:{session_id}"
        )
        if not hung_up:
            # The call goes on at the provider: keep watching it (tools stay refused) rather
            # than record an end that did not happen. The duration backstop tries again.
            self._ending.pop(session_id, None)
            logger.error(
                "call could not be ended; it stays monitored session_id=%s reason=%s",
                session_id,
                reason,
            )
            return False
        if controller is not None:
            # The provider may not close the sideband on hangup (docs/protocol.md §2.4): close it.
            await controller.stop()
        return True

    async def _finish(
        self,
        session_id: str,
        call_id: str,
        close_code: int | None,
        last_event_id: str | None,
        failure: BaseException | None,
        recorder: EventRecorder,
    ) -> None:
        # The session's usage rides on its event log: store what is still buffered before
        # the end is recorded, so the end (and its webhook) sees every response.done. Stopped
        # here too (a sideband that failed before it ran): the writer then lets it go.
        recorder.stop()
        try:
            await recorder.flush()
        except Exception:
            logger.exception("could not write sideband events session_id=%s", session_id)
        try:
            await self._record_end(
                session_id, call_id, close_code, last_event_id, failure, recorder
            )
        except Exception:
            logger.exception("could not record sideband end session_id=%s", session_id)
        try:
            await recorder.flush()
        except Exception:
            logger.exception("could not write sideband events session_id=%s", session_id)

    async def _record_end(
        self,
        session_id: str,
        call_id: str,
        close_code: int | None,
        last_event_id: str | None,
        failure: BaseException | None,
        recorder: EventRecorder,
    ) -> None:
        successor = self._handing.pop(session_id, None)
        handed = successor is not None or isinstance(failure, HandedOverError)
        if handed and session_id not in self._ending:
            logger.info("sideband handed over session_id=%s to=%s", session_id, successor)
            recorder.record(
                "broker",
                {"type": HANDED_OVER_EVENT, "to": successor, "last_event_id": last_event_id},
            )
            return
        trusted = self._trusted.pop(session_id, None) is not None
        ending = self._ending.pop(session_id, None)
        if ending is not None:
            # The broker ended this call itself; how the sideband closed is a consequence.
            reason, actor = ending
            logger.info("call ended by the broker session_id=%s reason=%s", session_id, reason)
            await end_session(
                self._sessionmaker,
                self.metrics,
                session_id,
                reason,
                sideband_state=SidebandState.CLOSED,
                actor=actor,
            )
            return
        if trusted:
            await self._end_trusted(session_id, close_code)
            return
        if self._stopping and (failure is None or isinstance(failure, asyncio.CancelledError)):
            # This broker is stopping; the call goes on at the provider.
            logger.info("sideband stopped session_id=%s call_id=%s", session_id, call_id)
            recorder.record("broker", {"type": "broker.sideband_released"})
            await self.set_sideband_state(session_id, SidebandState.CLOSED)
            return
        clean = close_code in (1000, 1001)
        if isinstance(failure, CallEndedError) or (failure is None and clean):
            # The provider no longer knows a call we had attached: it is over (hangup, the
            # browser left, a time limit), whether or not a close frame said so first.
            ended = EndReason.PROVIDER_CLOSED if clean else EndReason.CALL_GONE
            detail = str(close_code) if clean else None
            logger.info(
                "call ended session_id=%s call_id=%s reason=%s",
                session_id,
                call_id,
                ended.text(detail),
            )
            if isinstance(failure, CallEndedError):
                # Belt and braces: a 404 for a call that in fact goes on (docs/protocol.md §2.5
                # item 3) must not leave a call no broker watches. A gone call answers 404.
                await hang_up(self._provider, call_id, attempts=1)
            await end_session(
                self._sessionmaker,
                self.metrics,
                session_id,
                ended,
                detail=detail,
                event={"type": "broker.call_ended", "reason": ended.text(detail)},
                sideband_state=SidebandState.CLOSED,
            )
            return
        why, label = _failure_reason(failure, close_code)
        # The call goes on, but without a sideband the broker neither sees its tool calls
        # nor watches it for tampering: the bridge fallback takes over, and ops are told.
        logger.warning(
            "session degraded: no sideband session_id=%s call_id=%s: %s", session_id, call_id, why
        )
        recorder.record("broker", {"type": "broker.degraded", "reason": why})
        self.metrics.sideband_failed(label)
        async with self._sessionmaker.begin() as s:
            await queries.set_sideband_state(s, session_id, SidebandState.FAILED)
            degraded = await queries.transition_session(
                s, session_id, [SessionState.LIVE], SessionState.DEGRADED
            )
            # The moment the broker stopped watching the call (the bridge runs its tools
            # from now on), whether or not a sideband was ever attached.
            await audit.add(
                s,
                AuditEntry(
                    AuditKind.SIDEBAND_LOST,
                    Actor.BROKER,
                    {
                        "close_code": close_code,
                        "gave_up": True,
                        "reason": why,
                        "instance_id": self.instance_id,
                    },
                    session_id=session_id,
                ),
            )
        if degraded:
            self.metrics.session_degraded()

    async def _end_trusted(self, session_id: str, close_code: int | None) -> None:
        """A trusted session's provider socket closed, not at the broker's word: it is over.

        Its call lives only as long as the sockets this instance holds, so whatever closed
        it (the provider, the broker stopping) ends the session.
        """
        if self._stopping:
            reason, detail = EndReason.BROKER_STOPPED, None
        elif close_code in (1000, 1001):
            reason, detail = EndReason.PROVIDER_CLOSED, str(close_code)
        else:
            reason, detail = EndReason.CALL_GONE, None
        logger.info("trusted session ended session_id=%s reason=%s", session_id, reason)
        await end_session(
            self._sessionmaker,
            self.metrics,
            session_id,
            reason,
            detail=detail,
            event={"type": "broker.call_ended", "reason": reason.text(detail)},
            sideband_state=SidebandState.CLOSED,
        )


async def _attach(
    session_id: str,
    http: aiohttp.ClientSession,
    target: SidebandTarget,
    call_id: str,
    reason: str,
    *,
    attach_timeout: float,
    not_found_for: float | None = None,
    first_delay: float = 0.0,
) -> SidebandConnection:
    """:meth:`SidebandConnection.attach` in a ``broker.sideband.attach`` span.

    One span per attach, whatever its retries (``broker.sideband.attempts`` on success; a
    failure's span carries the error's class). ``reason``: ``first``, ``reattach`` (after a
    lost sideband, or on taking a call up again) or ``standby`` (ahead of a handoff).
    """
    with tracing.span(
        "broker.sideband.attach",
        {"broker.session_id": session_id, "broker.call_id": call_id, "broker.reason": reason},
        kind="client",
    ) as span:
        try:
            connection = await SidebandConnection.attach(
                http,
                target,
                call_id,
                attach_timeout=attach_timeout,
                not_found_for=not_found_for,
                first_delay=first_delay,
            )
        except CallEndedError:
            # How a re-attach learns that the call is over: its end, not a failure.
            span.ended_as("call_ended")
            raise
        span.set("broker.sideband.attempts", connection.attempts)
        span.set("broker.outcome", "attached")
        return connection


async def _may_send(_event: dict[str, Any]) -> bool:
    return await may_act_now()


def _failure_reason(
    failure: BaseException | None, close_code: int | None
) -> tuple[str, SidebandFailure]:
    """A log- and event-safe description (no provider body) and its metric label."""
    if failure is None:
        return f"closed with code {close_code}", SidebandFailure.LOST
    if isinstance(failure, CallNotFoundError):
        return "the provider did not know the call (404) within the attach bound", (
            SidebandFailure.CALL_NOT_FOUND
        )
    if isinstance(failure, ProviderTimeoutError):
        return str(failure), SidebandFailure.ATTACH_TIMEOUT
    if isinstance(failure, ProviderError):
        return str(failure), SidebandFailure.PROVIDER_ERROR
    if isinstance(failure, SidebandError):
        return str(failure), SidebandFailure.LOST
    return type(failure).__name__, SidebandFailure.OTHER
