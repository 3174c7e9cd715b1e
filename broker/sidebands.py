"""The sideband supervisor: one owned task per live call, wiring ``sideband`` to the broker.

Each call runs in a task named ``sideband:{session_id}`` that owns an event writer, the
call's :class:`broker.leash.Leash` and the :class:`sideband.CallController`; its outcome is
recorded on the session row. ``close()`` cancels and awaits them all (app cleanup). The call
itself is not hung up on shutdown: it belongs to the browser and the provider, and a restarted
broker can attach again. The broker does hang up when it decides the call must end (a leash
limit, or a tamper policy of ``hangup``); the session's end reason then says why.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Mapping
from typing import Any

import aiohttp
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.db import queries
from broker.db.models import SessionState, SidebandState
from broker.events_log import EventRecorder
from broker.hangup import hang_up
from broker.leash import Leash, LeashTerms
from broker.limits import TamperPolicy
from broker.shielded import ShieldedWrites
from broker.tamper import TamperResponder
from broker.tool_handler import SessionToolHandler
from broker.tools.dispatch import ToolDispatcher
from sideband import (
    CallController,
    CallNotFoundError,
    Direction,
    OwnedSession,
    Provider,
    SidebandConnection,
    SidebandError,
)

logger = logging.getLogger(__name__)


class _Observer:
    def __init__(
        self,
        supervisor: SidebandSupervisor,
        session_id: str,
        recorder: EventRecorder,
        leash: Leash,
    ):
        self._supervisor = supervisor
        self._session_id = session_id
        self._recorder = recorder
        self._leash = leash

    def record(self, direction: Direction, event: dict[str, Any]) -> None:
        self._recorder.record(direction, event)
        if direction == "in":
            self._leash.saw(event)

    async def attached(self) -> None:
        await self._supervisor.set_sideband_state(self._session_id, SidebandState.CONNECTED)
        self._recorder.record("broker", {"type": "broker.sideband_attached"})
        self._leash.sideband_attached()


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
        self._ending: dict[str, str] = {}
        """Calls the broker is ending, with the end reason to record (leash, tamper)."""
        self._stopping = False
        self._writes = ShieldedWrites()

    def start(
        self,
        session_id: str,
        call_id: str,
        allowed_tools: Collection[str],
        session_config: Mapping[str, Any] | None = None,
    ) -> None:
        """Start supervising ``call_id``; returns at once (the SDP answer must not wait).

        Args:
            session_id: the broker's session.
            call_id: the provider's call.
            allowed_tools: the session's tool allowlist.
            session_config: the server-owned session the call was created with; the
                browser's changes to its instructions, tools or tool choice are reverted.
                ``None`` turns that check off.
        """
        if session_id in self._tasks:
            return
        owned = OwnedSession.from_config(session_config) if session_config is not None else None
        task = asyncio.create_task(
            self._supervise(session_id, call_id, allowed_tools, owned),
            name=f"sideband:{session_id}",
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
        self,
        session_id: str,
        call_id: str,
        allowed_tools: Collection[str],
        owned: OwnedSession | None,
    ) -> None:
        recorder = EventRecorder(self._sessionmaker, session_id)
        close_code: int | None = None
        failure: BaseException | None = None
        try:
            await recorder.start()
            async with self._sessionmaker() as s:
                row = await queries.get_session_row(s, session_id)
            if row is None:
                raise LookupError(f"session {session_id} vanished before its sideband started")
            await self.set_sideband_state(session_id, SidebandState.CONNECTING)
            target = self._provider.sideband_target(call_id)

            async def connect() -> SidebandConnection:
                return await SidebandConnection.attach(
                    self._http, target, call_id, attach_timeout=self._attach_timeout
                )

            async def end_call(reason: str) -> None:
                await self._end_call(session_id, call_id, reason)

            leash = Leash(
                session_id, LeashTerms.from_row(row), self._sessionmaker, recorder, end_call
            )
            controller = CallController(
                call_id,
                connect,
                SessionToolHandler(
                    self._dispatcher,
                    session_id,
                    allowed_tools,
                    recorder,
                    on_settled=leash.tool_call_settled,
                ),
                _Observer(self, session_id, recorder, leash),
                owned_session=owned,
                tamper=TamperResponder(
                    session_id, TamperPolicy(row.tamper_policy), recorder, end_call
                ),
            )
            if self._stopping:
                return  # the broker began stopping while this sideband was being set up
            self._controllers[session_id] = controller
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

    async def _end_call(self, session_id: str, call_id: str, reason: str) -> None:
        """End the call for a broker decision (leash limit, tamper policy); idempotent.

        The reason is noted first, so however the sideband then ends (the provider closes it
        on hangup, or we close it here) the session records this reason. The hangup is
        shielded: the leash task that asks for it is cancelled as soon as the sideband
        closes, which on the emulator happens before the hangup request is even answered.
        """
        if session_id in self._ending:
            return
        self._ending[session_id] = reason
        logger.warning(
            "ending call session_id=%s call_id=%s reason=%s", session_id, call_id, reason
        )
        controller = self._controllers.get(session_id)
        if controller is not None:
            # Decided now: a call the model makes while the hangup is in flight never runs.
            controller.condemn()
        hung_up = await self._writes.run(
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
            return
        if controller is not None:
            # The provider may not close the sideband on hangup (PROTOCOL.md §2.4): close it.
            await controller.stop()

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
        reason = self._ending.pop(session_id, None)
        if reason is not None:
            # The broker ended this call itself; how the sideband closed is a consequence.
            logger.info("call ended by the broker session_id=%s reason=%s", session_id, reason)
            await self._end_session(session_id, SidebandState.CLOSED, SessionState.ENDED, reason)
            return
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
