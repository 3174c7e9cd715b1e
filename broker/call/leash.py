"""The server-side leash: a live call ends when it runs too long, idles, or spends its budget.

One :class:`Leash` runs per live sideband, as a task of that sideband's task group (so it is
cancelled when the call ends). It waits on one deadline, the nearer of:

* ``max_duration_s`` after the session went live (``live_at``);
* ``idle_timeout_s`` after the last sign of the user: speech (``speech_started``,
  ``committed``) or a user message entering the conversation. Model output is not activity.

and wakes early only when something moves a deadline or a tool call settles.

**Tool budget.** The dispatcher owns the budget (:mod:`broker.tools.budget`): it counts the
calls it *started* (``decision = allowed``) and denies the next one ``tool_budget_exhausted``.
After every settled call the leash learns whether the budget is spent, and ends the call once
a call was denied for budget, i.e. when the model asks for call ``max_tool_calls + 1``. (It
also ends it if more calls than the budget were ever started, which the dispatcher's atomic
grant should make impossible: a second line, not a second rule.) The dispatcher tells it when
it counted the session's started calls under the session's tool lock to decide the call (the
count only grows and the budget is fixed, so a call granted, or refused for concurrency,
proves no call was ever denied for budget); otherwise (a call decided before the budget was
counted, or by another request) the leash reads the same ``tool_calls`` rows itself. The
denial is an output the model explains, so the leash first lets that answer finish: it hangs
up after the ``response.done`` of the first response created after the denial settled, or
after :data:`BUDGET_GRACE_S`, whichever comes first.

Reaching a limit records a ``broker.leash`` session event and ends the call through the
provider's hangup; the session's end reason is the limit's name.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import case, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.db.models import SessionRow, ToolCall, utcnow
from broker.db.times import as_utc
from broker.record.event_classes import EventClass
from broker.record.event_log import EventRecorder
from broker.session.end_reason import EndReason
from broker.tools.budget import ALLOWED
from broker.tools.codes import ToolErrorCode
from sideband.events import (
    USER_SPEECH,
    ResponseCreated,
    ResponseDone,
    ServerEvent,
    is_user_activity,
)

logger = logging.getLogger(__name__)

LEASH_EVENT: Final = "broker.leash"
BUDGET_GRACE_S: Final = 10.0
"""How long the model may take to tell the user the budget is spent before the hangup."""


@dataclass(frozen=True)
class LeashTerms:
    """The limits of one session, from its row."""

    max_duration_s: int
    idle_timeout_s: int
    max_tool_calls: int
    live_at: datetime | None

    @classmethod
    def from_row(cls, row: SessionRow) -> LeashTerms:
        return cls(
            max_duration_s=row.max_duration_s,
            idle_timeout_s=row.idle_timeout_s,
            max_tool_calls=row.max_tool_calls,
            live_at=row.live_at,
        )

    def seconds_live(self) -> float:
        """How long the call has been live (0 if unknown or in the future)."""
        if self.live_at is None:
            return 0.0
        return max((utcnow() - as_utc(self.live_at)).total_seconds(), 0.0)


async def tool_budget_spent(s: AsyncSession, session_id: str, max_tool_calls: int) -> bool:
    """A call was denied for budget, or more calls were started than the budget allows."""
    started, denied = (
        await s.execute(
            select(
                func.coalesce(func.sum(case((ToolCall.decision == ALLOWED, 1), else_=0)), 0),
                func.coalesce(
                    func.sum(
                        case((ToolCall.error == ToolErrorCode.TOOL_BUDGET_EXHAUSTED, 1), else_=0)
                    ),
                    0,
                ),
            ).where(ToolCall.session_id == session_id)
        )
    ).one()
    return int(started) > max_tool_calls or int(denied) > 0


class Leash:
    """Ends one call when a limit is reached.

    Args:
        session_id: the session (for logs and the tool-call count).
        terms: its limits.
        sessionmaker: to count the session's tool calls.
        recorder: the session's event log.
        end_call: ends the call with a reason (provider hangup); idempotent.
    """

    WATCHES: Final = USER_SPEECH | {
        "conversation.item.added",
        "conversation.item.created",
        "response.created",
        "response.done",
    }
    """The server events :meth:`saw` reads; it is handed no others."""

    def __init__(
        self,
        session_id: str,
        terms: LeashTerms,
        sessionmaker: async_sessionmaker[AsyncSession],
        recorder: EventRecorder,
        end_call: Callable[[EndReason], Awaitable[None]],
    ) -> None:
        self._session_id = session_id
        self._terms = terms
        self._sessionmaker = sessionmaker
        self._recorder = recorder
        self._end_call = end_call
        self._wake = asyncio.Event()
        self._check_budget = False
        self._spent = False
        self._duration_at = 0.0
        self._idle_at = 0.0
        self._watch_reply = False
        self._reply_id: str | None = None
        self._reply_done = asyncio.Event()

    def saw(self, event: ServerEvent) -> None:
        """A server event arrived on the sideband; user activity pushes the idle deadline.

        Runs on the sideband reader: never blocks.
        """
        if is_user_activity(event):
            self._bump_idle()
        elif self._watch_reply:
            # The model's reply to the latest settled call: the response started after it.
            if isinstance(event, ResponseCreated) and self._reply_id is None:
                self._reply_id = event.response.id
            elif isinstance(event, ResponseDone) and event.response.id == self._reply_id:
                self._reply_done.set()

    def sideband_attached(self) -> None:
        """Restart the idle clock once the sideband is attached.

        Activity before the attach could not be seen, so it must not be held against the call.
        """
        self._bump_idle()

    def _bump_idle(self) -> None:
        self._idle_at = asyncio.get_running_loop().time() + self._terms.idle_timeout_s
        self._wake.set()

    def tool_call_settled(self, budget_spent: bool | None = None) -> None:
        """A tool call of this session was decided; check the budget.

        ``budget_spent`` is the dispatcher's answer when it counted the session's calls
        deciding this one (the same rule as :func:`tool_budget_spent`, read under the
        session's tool lock); ``None`` has the leash count the rows itself.

        Called before the call's output is sent, so the model's reply to it is the next
        response to start.
        """
        if budget_spent is None:
            self._check_budget = True
        elif budget_spent:
            self._spent = True
        self._watch_reply = True
        self._reply_id = None
        self._reply_done.clear()
        self._wake.set()

    async def run(self) -> None:
        """Wait for a limit, then record it and end the call.

        Cancellation-safe: cancelled when the sideband ends for any other reason.
        """
        limit = await self._wait()
        if limit is EndReason.TOOL_BUDGET:
            try:
                async with asyncio.timeout(BUDGET_GRACE_S):
                    await self._reply_done.wait()
            except TimeoutError:
                logger.info("leash: no reply to the budget denial session_id=%s", self._session_id)
        logger.warning(
            "leash: %s reached session_id=%s, ending the call", limit.value, self._session_id
        )
        self._recorder.record("broker", self._event(limit), EventClass.KEPT)
        await self._end_call(limit)

    def _event(self, limit: EndReason) -> dict[str, Any]:
        value = {
            EndReason.MAX_DURATION: self._terms.max_duration_s,
            EndReason.IDLE_TIMEOUT: self._terms.idle_timeout_s,
            EndReason.TOOL_BUDGET: self._terms.max_tool_calls,
        }[limit]
        return {"type": LEASH_EVENT, "limit": limit.value, "value": value}

    def _deadline(self) -> float:
        return min(self._duration_at, self._idle_at)

    async def _wait(self) -> EndReason:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._duration_at = now + self._terms.max_duration_s - self._terms.seconds_live()
        self._idle_at = max(self._idle_at, now + self._terms.idle_timeout_s)
        try:
            async with asyncio.timeout_at(self._deadline()) as timer:
                while True:
                    await self._wake.wait()
                    self._wake.clear()
                    if self._spent:
                        return EndReason.TOOL_BUDGET
                    if self._check_budget:
                        self._check_budget = False
                        if await self._budget_spent():
                            return EndReason.TOOL_BUDGET
                    timer.reschedule(self._deadline())
        except TimeoutError:
            if not timer.expired():
                raise
        # The timer fired at the nearer deadline; the nearer one is the limit reached.
        if self._duration_at <= self._idle_at:
            return EndReason.MAX_DURATION
        return EndReason.IDLE_TIMEOUT

    async def _budget_spent(self) -> bool:
        try:
            async with self._sessionmaker() as s:
                return await tool_budget_spent(s, self._session_id, self._terms.max_tool_calls)
        except SQLAlchemyError:
            # One failed count must not cost the call its sideband; the next settled call
            # counts again.
            logger.warning(
                "leash: could not count tool calls session_id=%s", self._session_id, exc_info=True
            )
            return False
