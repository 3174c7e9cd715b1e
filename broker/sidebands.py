"""The sideband supervisor: one owned task per live call, wiring ``sideband`` to the broker.

Each call runs in a task named ``sideband:{session_id}`` that owns an event writer and the
:class:`sideband.CallController`; its outcome is recorded on the session row. ``close()`` cancels
and awaits them all (app cleanup). The call itself is not hung up on shutdown: it belongs to the
browser and the provider, and a restarted broker can attach again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection

import aiohttp
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.db import queries
from broker.db.models import SessionState, SidebandState, ToolPath
from broker.events_log import EventRecorder
from broker.shielded import ShieldedWrites
from broker.tools.dispatch import MAX_CALL_ID, CallRejectedError, ToolDispatcher
from broker.tools.policy import error_output
from sideband import (
    CallController,
    CallNotFoundError,
    Direction,
    FunctionCall,
    Provider,
    SidebandConnection,
    SidebandError,
    ToolResult,
)

logger = logging.getLogger(__name__)


class SessionToolHandler:
    """The broker's :class:`sideband.ToolCallHandler` for one session."""

    def __init__(
        self,
        dispatcher: ToolDispatcher,
        session_id: str,
        allowed_tools: Collection[str],
        recorder: EventRecorder,
    ) -> None:
        self._dispatcher = dispatcher
        self._session_id = session_id
        self._allowed = frozenset(allowed_tools)
        self._recorder = recorder

    async def call_seen(self, call: FunctionCall) -> None:
        # Recording early only lets the bridge find the call sooner; execute() records it
        # again if this failed, so a failure here is logged, not fatal.
        try:
            await self._dispatcher.record(
                self._session_id,
                call.call_id,
                call.name,
                call.arguments,
                ToolPath.SIDEBAND,
                call.response_id,
            )
        except Exception:
            logger.exception(
                "could not record function call session_id=%s call_id=%s",
                self._session_id,
                call.call_id[:MAX_CALL_ID],
            )

    async def call_abandoned(self, call: FunctionCall, response_status: str) -> None:
        try:
            await self._dispatcher.abandon(self._session_id, call.call_id, response_status)
        except Exception:
            logger.exception("could not record abandoned call session_id=%s", self._session_id)

    async def execute(self, call: FunctionCall) -> ToolResult:
        """Run through the once-only pipeline; every failure becomes one output for the model.

        One bad call (absurd ids, a database error) must cost that call, not the sideband and
        the other calls of the response.
        """
        try:
            outcome = await self._dispatcher.run(
                self._session_id,
                self._allowed,
                call.call_id,
                call.name,
                call.arguments,
                ToolPath.SIDEBAND,
                call.response_id,
            )
        except CallRejectedError as exc:
            logger.warning(
                "function call rejected session_id=%s code=%s", self._session_id, exc.code
            )
            return ToolResult(output=error_output(exc.code, exc.message))
        except Exception:
            logger.exception(
                "function call failed in the broker session_id=%s call_id=%s",
                self._session_id,
                call.call_id[:MAX_CALL_ID],
            )
            return ToolResult(
                output=error_output("broker_error", "the broker could not complete this call")
            )
        self._recorder.record(
            "broker",
            {
                "type": "broker.tool_call",
                "call_id": call.call_id,
                "tool": outcome.tool,
                "status": outcome.status.value,
                "handled_by": outcome.handled_by.value if outcome.handled_by else None,
            },
        )
        # Only the request that ran the call answers the model: not a bridge winner (its
        # browser answers) and not a duplicate report of a call this sideband already ran.
        return ToolResult(output=outcome.output or "", inject=outcome.executed_now)

    async def output_sent(self, call: FunctionCall) -> None:
        try:
            await self._dispatcher.mark_injected(self._session_id, call.call_id)
        except Exception:
            logger.exception("could not mark output sent session_id=%s", self._session_id)


class _Observer:
    def __init__(self, supervisor: SidebandSupervisor, session_id: str, recorder: EventRecorder):
        self._supervisor = supervisor
        self._session_id = session_id
        self._recorder = recorder

    def record(self, direction: Direction, event: dict[str, object]) -> None:
        self._recorder.record(direction, event)

    async def attached(self) -> None:
        await self._supervisor.set_sideband_state(self._session_id, SidebandState.CONNECTED)
        self._recorder.record("broker", {"type": "broker.sideband_attached"})


class SidebandSupervisor:
    """Starts, tracks and stops the sideband of every live call in this process."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        provider: Provider,
        http: aiohttp.ClientSession,
        dispatcher: ToolDispatcher,
        attach_timeout: float,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._provider = provider
        self._http = http
        self._dispatcher = dispatcher
        self._attach_timeout = attach_timeout
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._controllers: dict[str, CallController] = {}
        self._stopping = False
        self._writes = ShieldedWrites()

    def start(self, session_id: str, call_id: str, allowed_tools: Collection[str]) -> None:
        """Start supervising ``call_id``; returns at once (the SDP answer must not wait)."""
        if session_id in self._tasks:
            return
        task = asyncio.create_task(
            self._supervise(session_id, call_id, allowed_tools), name=f"sideband:{session_id}"
        )
        self._tasks[session_id] = task
        task.add_done_callback(lambda t: self._finished(session_id, t))

    def _finished(self, session_id: str, task: asyncio.Task[None]) -> None:
        self._tasks.pop(session_id, None)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("sideband supervisor crashed session_id=%s", session_id, exc_info=exc)

    def running(self, session_id: str) -> bool:
        return session_id in self._tasks

    async def close(self, grace: float = 5.0) -> None:
        """Stop every sideband, recording how each ended.

        Closes the sockets, lets running tools finish for up to ``grace`` seconds, then
        cancels whatever is still running.
        """
        self._stopping = True
        tasks = list(self._tasks.values())
        if not tasks:
            return
        for session_id, task in list(self._tasks.items()):
            controller = self._controllers.get(session_id)
            if controller is None:
                continue  # setting up (sees _stopping) or finishing: ends by itself
            if controller.attached:
                await controller.stop()
            else:
                task.cancel()  # still attaching: nothing to drain
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._writes.drain()

    async def set_sideband_state(self, session_id: str, state: SidebandState) -> None:
        async with self._sessionmaker.begin() as s:
            await queries.set_session_fields(s, session_id, sideband_state=state)

    async def _supervise(
        self, session_id: str, call_id: str, allowed_tools: Collection[str]
    ) -> None:
        recorder = EventRecorder(self._sessionmaker, session_id)
        close_code: int | None = None
        failure: BaseException | None = None
        try:
            await recorder.start()
            await self.set_sideband_state(session_id, SidebandState.CONNECTING)
            target = self._provider.sideband_target(call_id)

            async def connect() -> SidebandConnection:
                return await SidebandConnection.attach(
                    self._http, target, call_id, attach_timeout=self._attach_timeout
                )

            controller = CallController(
                call_id,
                connect,
                SessionToolHandler(self._dispatcher, session_id, allowed_tools, recorder),
                _Observer(self, session_id, recorder),
            )
            if self._stopping:
                return  # the broker began stopping while this sideband was being set up
            self._controllers[session_id] = controller
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(recorder.run(), name=f"sideband-recorder:{session_id}")
                try:
                    close_code = await controller.run()
                except (SidebandError, ExceptionGroup) as exc:
                    failure = exc
                finally:
                    recorder.stop()
        except asyncio.CancelledError as exc:
            failure = exc
            raise
        except Exception as exc:
            failure = exc
            logger.exception("sideband supervisor failed session_id=%s", session_id)
        finally:
            self._controllers.pop(session_id, None)
            # Whatever happened, the row must say how the sideband ended (the bridge decides
            # by it) and the buffered events must reach the database: shielded, so a
            # shutdown's cancellation cannot skip it.
            await self._writes.run(
                self._finish(session_id, call_id, close_code, failure, recorder),
                name=f"sideband-finish:{session_id}",
            )

    async def _finish(
        self,
        session_id: str,
        call_id: str,
        close_code: int | None,
        failure: BaseException | None,
        recorder: EventRecorder,
    ) -> None:
        try:
            await recorder.flush()
            await self._record_end(session_id, call_id, close_code, failure)
        except Exception:
            logger.exception("could not record sideband end session_id=%s", session_id)

    async def _end_session(
        self, session_id: str, sideband: SidebandState, state: SessionState, reason: str
    ) -> None:
        async with self._sessionmaker.begin() as s:
            await queries.set_session_fields(s, session_id, sideband_state=sideband)
            await queries.transition_session(
                s, session_id, [SessionState.LIVE], state, end_reason=reason
            )

    async def _record_end(
        self, session_id: str, call_id: str, close_code: int | None, failure: BaseException | None
    ) -> None:
        if self._stopping and (failure is None or isinstance(failure, asyncio.CancelledError)):
            # This broker is stopping; the call goes on at the provider.
            logger.info("sideband stopped session_id=%s call_id=%s", session_id, call_id)
            await self.set_sideband_state(session_id, SidebandState.CLOSED)
            return
        if failure is None and close_code in (1000, 1001):
            # The provider closed cleanly: the call is over (hangup, browser left, time limit).
            logger.info(
                "sideband closed session_id=%s call_id=%s code=%s", session_id, call_id, close_code
            )
            await self._end_session(
                session_id,
                SidebandState.CLOSED,
                SessionState.ENDED,
                f"provider_closed:{close_code}",
            )
            return
        if isinstance(failure, CallNotFoundError):
            # The provider does not know the call for our key (gone, or another project's):
            # nothing here can control it, so the session fails closed and the bridge refuses.
            logger.warning(
                "sideband attach: call not found session_id=%s call_id=%s", session_id, call_id
            )
            await self._end_session(
                session_id,
                SidebandState.FAILED,
                SessionState.FAILED,
                "sideband: call not found at the provider",
            )
            return
        reason = (
            f"{type(failure).__name__}: {failure}"
            if failure is not None
            else f"closed with code {close_code}"
        )
        logger.warning("sideband lost session_id=%s call_id=%s: %s", session_id, call_id, reason)
        # Without the sideband the broker no longer controls the call's tools; the bridge
        # fallback takes over (it runs calls itself when the sideband has failed).
        await self.set_sideband_state(session_id, SidebandState.FAILED)
