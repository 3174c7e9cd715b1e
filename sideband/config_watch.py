"""Putting the :class:`~sideband.session_guard.SessionGuard` on the wire for one call.

**The session config is the broker's.** The guard keeps the provider's own answer to the
broker's first assertion as the baseline; this asks for the provider's view of the session
(after a reconnect, before each ``response.create`` the controller sends, and every
``probe_interval`` seconds) instead of trusting echoes of a page's changes that may never come.
Drift is restored and reported.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Final

from sideband.contracts import Wiring
from sideband.events import SessionCreated, SessionUpdated
from sideband.session_guard import ConfigChange, SessionGuard
from sideband.tamper import OwnedSession

logger = logging.getLogger(__name__)

CONFIG_UPDATE_TIMEOUT: Final = 5.0
"""Seconds to wait for the provider's ``session.updated`` answering a config change."""
SESSION_PROBE_TIMEOUT: Final = 2.0
"""Seconds to wait for the answer to the session probe before a ``response.create``; with no
answer the owned config is asserted blind (the provider applies it before the response)."""


class ConfigOutcome(enum.StrEnum):
    """How a change of the owned config ended (:meth:`ConfigWatch.update_config`)."""

    APPLIED = "applied"
    """The provider's ``session.updated`` answering it carries the new config."""
    UNSENT = "unsent"
    """No sideband could send it: nothing changed."""
    REFUSED = "refused"
    """The provider refused it (an ``error`` for its event), or answered without the new
    config: reverted."""
    TIMEOUT = "timeout"
    """No answer in time (or the sideband was lost meanwhile): reverted."""


class ConfigWatch:
    """One call's config guard, its probes and the tasks waiting for their answers.

    Args:
        wiring: what the controller lends it.
        owned: the server-owned session config.
        stopping: whether the controller is stopping (no more periodic probes).
        probe_interval: seconds between periodic probes; ``None``: none.
    """

    def __init__(
        self,
        wiring: Wiring,
        owned: OwnedSession,
        *,
        stopping: Callable[[], bool],
        probe_interval: float | None,
    ) -> None:
        self._call_id = wiring.call_id
        self._send = wiring.send
        self._spawn = wiring.spawn
        self._report = wiring.report
        self.guard = SessionGuard(owned)
        self._stopping = stopping
        self._probe_interval = probe_interval
        self._waiters: list[asyncio.Future[bool]] = []
        """Tasks waiting for the next ``session.updated`` (True) or its refusal (False)."""
        self._probe_events: set[str] = set()
        self._prober: asyncio.Task[None] | None = None
        self._change: tuple[ConfigChange, asyncio.Future[ConfigOutcome]] | None = None
        """The config change awaiting its answer, and who waits for it."""
        self.update_timeout = CONFIG_UPDATE_TIMEOUT
        """Seconds a config change waits for the provider's answer."""
        self._changing = asyncio.Lock()
        """One config change at a time: each is answered, or reverted, before the next."""

    async def attached(self) -> None:
        """A sideband attached: check the config now, and start the periodic probes."""
        # A page may change the session while no sideband watches, and no session.created
        # reaches a sideband to show it. The first time, assert the config (its answer is the
        # baseline); later, ask what the session is now.
        if self.guard.asserted:
            await self.send(self.guard.probe())
        else:
            await self.send(self.guard.assertion())
        if self._probe_interval is not None:
            self._prober = self._spawn(self._probe_periodically(), "session-probe")

    def detached(self) -> None:
        """The connection's reader ended: its periodic probe goes with it."""
        # Left running, it would also keep the controller's task group open for ever.
        if self._prober is not None and not self._prober.done():
            self._prober.cancel()
        self._prober = None

    async def check(self, event: SessionCreated | SessionUpdated) -> None:
        """Judge the provider's session; restore and report drift."""
        if isinstance(event, SessionCreated):
            # Only the page's data channel gets session.created (or a replay of it): it
            # answers none of our updates, so it is judged without taking a pending answer.
            verdict = self.guard.judge(event.session)
        else:
            change = self._change[0] if self._change is not None else None
            verdict = self.guard.updated(event.session, change)
            if change is not None and verdict.answered == change.update["event_id"]:
                self._settle_change(
                    ConfigOutcome.APPLIED if verdict.change_applied else ConfigOutcome.REFUSED
                )
        reapplied = False
        for restore in verdict.restores:
            reapplied = await self.send(restore) or reapplied
        if verdict.drift is not None and verdict.repeated:
            logger.warning(
                "session still differs after restoring the config call_id=%s fields=%s",
                self._call_id,
                ",".join(verdict.drift.fields),
            )
        elif verdict.drift is not None:
            self._report(replace(verdict.drift, reapplied=reapplied))
        if isinstance(event, SessionUpdated):
            self._wake(True)

    async def send(self, event: dict[str, Any]) -> bool:
        """Send one of the guard's updates; one that never left expects no answer."""
        if await self._send(event):
            return True
        self.guard.unsent(event)
        return False

    async def probe(self) -> bool:
        """Ask the provider for the session and wait for its answer; whether it came.

        Drift in the answer is restored on the reader (before this returns), so anything
        sent after this goes out after the restore.
        """
        probe = self.guard.probe()
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._probe_events.add(probe["event_id"])
        if not await self.send(probe):
            self._probe_events.discard(probe["event_id"])
            if not waiter.done():
                waiter.set_result(False)
        try:
            async with asyncio.timeout(SESSION_PROBE_TIMEOUT):
                return await waiter
        except TimeoutError:
            return False
        finally:
            self._probe_events.discard(probe["event_id"])
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    async def assert_blind(self) -> None:
        """No view of the session: assert the config; the provider applies it first."""
        logger.warning("session probe unanswered call_id=%s; asserting", self._call_id)
        await self.send(self.guard.assertion())

    async def update_config(
        self,
        *,
        instructions: str | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> ConfigOutcome:
        """Change the owned instructions and/or tools on the provider, and wait for its answer.

        The owned config (and the baseline) change before the send, so the provider's answer
        is not taken for tampering, and a page putting the old config back afterwards is.
        Anything but an answer carrying the new config puts the old one back (and, unless
        nothing was sent, asserts it again: an unanswered change may have been applied).
        """
        async with self._changing:
            change = self.guard.config_changed(instructions=instructions, tools=tools)
            waiter: asyncio.Future[ConfigOutcome] = asyncio.get_running_loop().create_future()
            self._change = (change, waiter)
            try:
                if not await self._send(change.update):
                    self.guard.unsent(change.update)
                    # Nothing went out, so nothing is asserted back either.
                    self.guard.unsent(self.guard.revert(change))
                    return ConfigOutcome.UNSENT
                try:
                    async with asyncio.timeout(self.update_timeout):
                        outcome = await waiter
                except TimeoutError:
                    outcome = ConfigOutcome.TIMEOUT
            finally:
                self._change = None
            if outcome is not ConfigOutcome.APPLIED:
                logger.warning(
                    "config change not applied call_id=%s outcome=%s", self._call_id, outcome
                )
                await self.send(self.guard.revert(change))
            return outcome

    async def update_instructions(self, instructions: str) -> bool:
        """Change the owned instructions (:meth:`update_config`); whether the provider took it."""
        return await self.update_config(instructions=instructions) is ConfigOutcome.APPLIED

    def _settle_change(self, outcome: ConfigOutcome) -> None:
        if self._change is not None and not self._change[1].done():
            self._change[1].set_result(outcome)

    def refused(self, event_id: str, code: str | None) -> bool:
        """The provider's ``error`` for ``event_id``; ``True`` if it refused one of ours."""
        if self._change is not None and self._change[0].update["event_id"] == event_id:
            self.guard.refused(event_id)
            logger.warning(
                "provider refused a config change call_id=%s code=%s", self._call_id, code
            )
            self._settle_change(ConfigOutcome.REFUSED)
            return True
        if event_id in self._probe_events:
            self._probe_events.discard(event_id)
            self.guard.refused(event_id)
            logger.warning(
                "provider refused the session probe call_id=%s code=%s", self._call_id, code
            )
            self._wake(False)
            return True
        if self.guard.refused(event_id):
            # The provider refused our assertion or restore: no answer will come for it.
            logger.warning(
                "provider refused a session update call_id=%s code=%s", self._call_id, code
            )
            return True
        return False

    def connection_lost(self) -> None:
        """Nothing sent on the lost socket will be answered; the next one probes anew."""
        self.detached()
        self.fail_waiters()
        self.guard.connection_lost()

    def stop(self) -> None:
        self.detached()
        self.fail_waiters()

    def fail_waiters(self) -> None:
        """Every task waiting for a probe's (or a change's) answer is told none came."""
        self._wake(False)
        self._settle_change(ConfigOutcome.TIMEOUT)

    def _wake(self, answered: bool) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(answered)

    async def _probe_periodically(self) -> None:
        assert self._probe_interval is not None
        while True:
            await asyncio.sleep(self._probe_interval)
            if self._stopping():
                return
            await self.send(self.guard.probe())
