"""Ends sessions that can no longer become calls, so every session reaches an end.

Two kinds are stranded. A session still ``created`` after its client secret expired can never
be offered (the secret was the only way in): it ends as ``expired``. A session ``offered``
for far longer than an offer can take was left by a broker that stopped mid-offer: it fails
as ``offer: interrupted`` (any call the provider made then has no sideband and no record;
the provider's own limits end it). Either way the end goes through
:func:`~broker.session.ending.end_session` like every other end, so its ``session.ended``
webhook is queued once, its event stream closes, and metrics count it. Several broker
processes may sweep at once: the end succeeds for one of them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.db import queries
from broker.db.models import SessionState, utcnow
from broker.metrics import BrokerMetrics
from broker.session.end_reason import EndReason
from broker.session.ending import end_session
from broker.session.sweeps import sweep_forever

logger = logging.getLogger(__name__)

SWEEP_EVERY_S: Final = 60.0
SWEEP_BATCH: Final = 200
"""Sessions ended per sweep and state; a backlog drains over the next sweeps."""
GRACE: Final = timedelta(minutes=1)
"""Beyond a bound, for clocks and for a request that was accepted at the last moment."""
COORDINATION_KEPT: Final = timedelta(minutes=10)
"""How long leases of ended calls, settled commands and departed instances are kept."""
INTERRUPTED: Final = "interrupted"
"""The detail of an offer a stopped broker left (``end_reason`` ``offer: interrupted``)."""


class SessionReaper:
    """Sweeps stranded sessions every :data:`SWEEP_EVERY_S` seconds while the broker runs.

    Args:
        client_secret_ttl_s: how long a session's client secret lives (no offer after it).
        offer_bound_s: the longest an offer can legitimately stay ``offered``.
    """

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        metrics: BrokerMetrics,
        client_secret_ttl_s: float,
        offer_bound_s: float,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._metrics = metrics
        self._created_for = timedelta(seconds=client_secret_ttl_s) + GRACE
        self._offered_for = timedelta(seconds=offer_bound_s) + GRACE

    async def run(self) -> None:
        """Sweep every :data:`SWEEP_EVERY_S` seconds until cancelled."""
        await sweep_forever(self.sweep, SWEEP_EVERY_S, "session")

    async def sweep(self) -> int:
        """End what is stranded now; returns how many sessions this process ended."""
        now = utcnow()
        ended = await self._end(SessionState.CREATED, now - self._created_for, EndReason.EXPIRED)
        ended += await self._end(
            SessionState.OFFERED, now - self._offered_for, EndReason.OFFER_FAILED, INTERRUPTED
        )
        await self._prune_coordination(now)
        return ended

    async def _prune_coordination(self, now: datetime) -> None:
        """Drop what several instances coordinated through once it can matter no more."""
        async with self._sessionmaker.begin() as s:
            leases = await queries.prune_leases(s, ended_before=now - COORDINATION_KEPT)
            await queries.prune_commands(s, older_than_s=COORDINATION_KEPT.total_seconds())
            await queries.prune_instances(s, older_than_s=COORDINATION_KEPT.total_seconds())
        if leases:
            logger.info("pruned %d lease(s) of ended calls", leases)

    async def _end(
        self,
        state: SessionState,
        before: datetime,
        reason: EndReason,
        detail: str | None = None,
    ) -> int:
        async with self._sessionmaker() as s:
            ids: Sequence[str] = await queries.stale_sessions(s, state, before, SWEEP_BATCH)
        text = reason.text(detail)
        ended = 0
        for session_id in ids:
            swept = await end_session(
                self._sessionmaker,
                self._metrics,
                session_id,
                reason,
                detail=detail,
                from_states=[state],
                event={"type": "broker.session_swept", "state_was": state.value, "reason": text},
            )
            if not swept:
                continue  # offered or ended meanwhile, or another process swept it
            ended += 1
            logger.info(
                "stranded session ended session_id=%s state_was=%s reason=%s",
                session_id,
                state.value,
                text,
            )
        return ended
