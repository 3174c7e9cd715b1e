"""The backstop on every live call's duration, whatever its sideband does.

The sideband's leash normally ends a call at its limit (and also watches idleness and the
tool budget). A call with no sideband (a bridge-only session), or whose sideband was lost,
has no leash; this ends it anyway, shortly after the same deadline, through the provider's
hangup: a browser holding a WebRTC connection gains nothing past the limit.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Final

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.call.hangup import hang_up
from broker.call.leash import LEASH_EVENT
from broker.db import queries
from broker.db.models import CALL_RUNNING_STATES
from broker.db.times import as_utc
from broker.metrics import BrokerMetrics
from broker.session.end_reason import EndReason
from broker.session.ending import end_session
from sideband import Provider

logger = logging.getLogger(__name__)

GRACE_S: Final = 2.0  # the sideband's leash, when there is one, acts first
RETRY_DELAYS_S: Final = (5.0, 30.0, 60.0, 120.0)  # a hangup that failed is tried again


class CallDeadlines:
    """One timer per live call; each ends its call at the session's max duration."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        provider: Provider,
        metrics: BrokerMetrics,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._provider = provider
        self._metrics = metrics
        self._timers: dict[str, asyncio.Task[None]] = {}

    def watch(
        self,
        session_id: str,
        call_id: str,
        max_duration_s: int,
        live_at: datetime | None = None,
    ) -> None:
        """End ``call_id`` once ``max_duration_s`` (plus a grace) has passed, if still live.

        ``live_at`` (when the call started; default now) lets a restarted broker keep the
        original deadline.
        """
        if session_id in self._timers:
            return
        remaining = float(max_duration_s)
        if live_at is not None:
            started = as_utc(live_at)
            remaining -= (datetime.now(UTC) - started).total_seconds()
        task = asyncio.create_task(
            self._expire(session_id, call_id, max_duration_s, max(0.0, remaining)),
            name=f"deadline:{session_id}",
        )
        self._timers[session_id] = task
        task.add_done_callback(lambda _: self._timers.pop(session_id, None))

    async def unwatch(self, session_id: str) -> None:
        """Stop one call's timer (another instance owns the call now)."""
        task = self._timers.pop(session_id, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def close(self) -> None:
        """Stop every timer (the broker is stopping; the calls are not ended for this)."""
        timers = list(self._timers.values())
        for task in timers:
            task.cancel()
        await asyncio.gather(*timers, return_exceptions=True)

    async def _expire(
        self, session_id: str, call_id: str, max_duration_s: int, remaining_s: float
    ) -> None:
        await asyncio.sleep(remaining_s + GRACE_S)
        for retry_delay in (*RETRY_DELAYS_S, None):
            try:
                if await self._end_if_live(session_id, call_id, max_duration_s):
                    return
            except Exception:
                logger.exception("could not end an overdue call session_id=%s", session_id)
            if retry_delay is None:
                logger.error("giving up on ending an overdue call session_id=%s", session_id)
                return
            await asyncio.sleep(retry_delay)

    async def _end_if_live(self, session_id: str, call_id: str, max_duration_s: int) -> bool:
        """Hang up a still-live call and record why; ``False`` if the hangup failed."""
        async with self._sessionmaker() as s:
            row = await queries.get_session_row(s, session_id)
        if row is None or row.state not in CALL_RUNNING_STATES:
            return True  # ended some other way already (the leash, the browser, the provider)
        logger.warning(
            "call past its max duration, ending it session_id=%s call_id=%s limit=%ds",
            session_id,
            call_id,
            max_duration_s,
        )
        # One attempt each time: this timer's own schedule is the retry.
        if not await hang_up(self._provider, call_id, attempts=1):
            return False  # the call goes on; the session stays live and this tries again
        await end_session(
            self._sessionmaker,
            self._metrics,
            session_id,
            EndReason.MAX_DURATION,
            event={
                "type": LEASH_EVENT,
                "limit": EndReason.MAX_DURATION.value,
                "value": max_duration_s,
                "enforced_by": "deadline",
            },
        )
        return True
