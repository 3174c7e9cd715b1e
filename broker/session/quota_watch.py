"""Hard spend caps: live calls of a key or tenant past its token cap are ended.

A key's or tenant's caps with ``hard_cap`` (:mod:`broker.auth.quotas`) do more than refuse new
sessions: once one of its token caps is reached, its running calls are hung up with the end
reason ``quota_exceeded``. Tokens are folded into the sessions' rows as the calls report
them, so this is checked by a sweep every :data:`SWEEP_EVERY_S` seconds: a call may overshoot
by what it spends until the next sweep.

Each ended call gets a ``broker.leash`` event (``limit: quota_exceeded``) and a
``quota.exceeded`` audit record before its hangup; its end is recorded as every end is
(:func:`broker.session.ending.end_session`: the ``session.ended`` webhook and audit record).
A call another instance owns is hung up there (:meth:`CallActions.hang_up`); several
instances may sweep at once, and the end succeeds once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.audit import trail as audit
from broker.auth.quotas import (
    CapStanding,
    Quotas,
    Scope,
    Standing,
    exceeded_entry,
    standing,
)
from broker.call.leash import LEASH_EVENT
from broker.db import queries
from broker.db.models import CALL_RUNNING_STATES, SessionRow
from broker.db.queries import quota_usage
from broker.errors import BrokerError
from broker.record.event_classes import EventClass
from broker.record.event_log import append_event
from broker.session.end_reason import EndReason
from broker.session.sweeps import sweep_forever

logger = logging.getLogger(__name__)

SWEEP_EVERY_S: Final = 30.0
SWEEP_BATCH: Final = 100
"""Calls ended per sweep at most: the rest are ended by the next sweeps."""


class QuotaWatch:
    """Ends live calls past a hard cap, every :data:`SWEEP_EVERY_S` seconds while the broker runs.

    Args:
        sessionmaker: the app's.
        hang_up: hangs a running call up and ends its session for a reason
            (:meth:`broker.session.service.SessionService.hang_up`).
    """

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        hang_up: Callable[[SessionRow, EndReason], Awaitable[None]],
    ) -> None:
        self._sessionmaker = sessionmaker
        self._hang_up = hang_up

    async def run(self) -> None:
        """Sweep every :data:`SWEEP_EVERY_S` seconds until cancelled."""
        await sweep_forever(self.sweep, SWEEP_EVERY_S, "quota")

    async def sweep(self, now: datetime | None = None) -> int:
        """End the live calls past a hard cap now; returns how many this process ended."""
        now = now or datetime.now(UTC)
        async with self._sessionmaker() as s:
            keys = _hard(await quota_usage.capped_keys(s))
            tenants = _hard(await quota_usage.capped_tenants(s))
            # Standings only of hard-capped owners with a running call: as many as live calls
            # at most, however many keys have caps.
            active = await quota_usage.running_owners(s, key_ids=keys, tenant_ids=tenants)
            candidates: dict[tuple[Scope, str], None] = {}
            for key_id, tenant_id in active:
                if key_id in keys:
                    candidates[("key", key_id)] = None
                if tenant_id in tenants:
                    candidates[("tenant", tenant_id)] = None
            over: dict[tuple[Scope, str], tuple[Standing, CapStanding]] = {}
            for scope, owner in candidates:
                found = await standing(s, scope, owner, now)
                if reached := found.tokens_reached:
                    over[(scope, owner)] = (found, reached[0])
            # Only the calls to end: a batch always makes progress.
            calls = await quota_usage.running_calls(
                s,
                key_ids=[owner for scope, owner in over if scope == "key"],
                tenant_ids=[owner for scope, owner in over if scope == "tenant"],
                limit=SWEEP_BATCH,
            )
        ended = 0
        for session_id, key_id, tenant_id in calls:
            cause = over.get(("key", key_id)) or over.get(("tenant", tenant_id))
            if cause is not None and await self._end(session_id, *cause):
                ended += 1
        return ended

    async def _end(self, session_id: str, owner: Standing, cap: CapStanding) -> bool:
        async with self._sessionmaker() as s:
            row = await queries.get_session_row(s, session_id)
        if row is None or row.state not in CALL_RUNNING_STATES or row.call_id is None:
            return False
        entry = exceeded_entry(owner, cap, session_id)

        async def audited(s: AsyncSession) -> None:
            await audit.add(s, entry)

        # The decision's event and its audit record in one transaction, before the hangup.
        await append_event(
            self._sessionmaker,
            session_id,
            {
                "type": LEASH_EVENT,
                "limit": EndReason.QUOTA_EXCEEDED.value,
                "value": cap.allowed,
                "cap": owner.scope,
                "quota": cap.limit,
                "used": cap.used,
            },
            EventClass.KEPT,
            alongside=audited,
        )
        try:
            await self._hang_up(row, EndReason.QUOTA_EXCEEDED)
        except BrokerError as exc:
            # The provider did not hang up, or the owner did not answer: the next sweep tries
            # again.
            logger.warning(
                "hard cap hangup failed session_id=%s code=%s: %s", session_id, exc.code, exc
            )
            return False
        logger.warning(
            "call ended at a hard cap session_id=%s cap=%s.%s used=%d allowed=%d",
            session_id,
            owner.scope,
            cap.limit,
            cap.used,
            cap.allowed,
        )
        return True


def _hard(capped: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    """The owners whose caps are hard."""
    hard = []
    for owner, stored in capped:
        quotas = Quotas.of(stored)
        if quotas is not None and quotas.hard_cap:
            hard.append(owner)
    return hard
