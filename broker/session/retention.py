"""Retention: ended sessions' content is erased once their tenant's period has passed.

The period is the tenant's ``retention_days`` when it set one, else ``BROKER_RETENTION_DAYS``;
neither: kept. A session counts from its end (from its creation if it never recorded one).
Each erasure is :func:`~broker.session.erasure.erase_session_content`, by the broker, for
``retention``: in short transactions of its own, so a sweep never holds a transaction across
sessions nor blocks live work. A sweep takes at most :data:`SWEEP_BATCH` sessions; a backlog
drains over the next sweeps, which follow quickly while one is full. Several broker
processes may sweep at once: each erasure is idempotent and marked once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.audit import trail
from broker.audit.records import Actor, AuditEntry, AuditKind
from broker.audit.trail import AuditTrail
from broker.db.models import utcnow
from broker.db.queries import erasure as erasure_queries
from broker.db.shielded import finish_step
from broker.errors import BrokerError
from broker.session.erasure import erase_session_content

logger = logging.getLogger(__name__)

FIRST_SWEEP_S: Final = 60.0
"""After start: a process restarted more often than every sweep still sweeps."""
SWEEP_EVERY_S: Final = 600.0
"""Between sweeps when the last one found less than a batch (periods are days)."""
BACKLOG_PAUSE_S: Final = 1.0
"""Between sweeps while each finds a full batch: a backlog drains, live work goes between."""
SWEEP_BATCH: Final = 50
"""Sessions erased per sweep at most."""
GRACE: Final = timedelta(minutes=1)
"""Beyond the period: an ended call's last events are written within seconds of its end."""
REASON: Final = "retention"


class RetentionSweeper:
    """Erases the content of sessions past their retention period, while the broker runs.

    Args:
        default_days: ``BROKER_RETENTION_DAYS`` (``None``: only tenants' own periods apply).
        now: the clock (tests inject one).
        batch: sessions per sweep at most.
    """

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        audit: AuditTrail,
        default_days: int | None,
        *,
        now: Callable[[], datetime] = utcnow,
        batch: int = SWEEP_BATCH,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._audit = audit
        self.default_days = default_days
        self.now = now
        self._batch = batch
        self.erased = 0
        """Sessions this process erased for retention."""

    async def run(self) -> None:
        """Sweep until cancelled; a failed sweep is logged and the next one tries again."""
        await asyncio.sleep(FIRST_SWEEP_S)
        while True:
            try:
                erased = await finish_step(self.sweep())
            except Exception:
                logger.exception("retention sweep failed; retrying in %.0f s", SWEEP_EVERY_S)
                erased = 0
            await asyncio.sleep(BACKLOG_PAUSE_S if erased >= self._batch else SWEEP_EVERY_S)

    async def due(self) -> list[str]:
        """Ids of at most a batch of sessions past their period now, oldest first per tenant."""
        now = self.now()
        async with self._sessionmaker() as s:
            own = await erasure_queries.tenant_retention(s)
            due: list[str] = []
            for tenant_id, days in sorted(own.items()):
                due += await erasure_queries.sessions_past_retention(
                    s, _cutoff(now, days), self._batch - len(due), tenant_id=tenant_id
                )
                if len(due) >= self._batch:
                    return due
            if self.default_days is not None:
                due += await erasure_queries.sessions_past_retention(
                    s,
                    _cutoff(now, self.default_days),
                    self._batch - len(due),
                    except_tenants=sorted(own),
                )
        return due

    async def sweep(self) -> int:
        """Erase what is past its period now (one batch); how many sessions this erased."""
        erased = 0
        for session_id in await self.due():
            try:
                done = await erase_session_content(
                    self._sessionmaker,
                    self._audit,
                    session_id,
                    REASON,
                    Actor.BROKER,
                    now=self.now,
                )
            except BrokerError as exc:  # gone meanwhile: nothing to erase
                logger.info("retention skipped session_id=%s code=%s", session_id, exc.code)
                continue
            if not done.already:
                erased += 1
        self.erased += erased
        if erased:
            logger.info("retention erased %d session(s)", erased)
        return erased


async def set_tenant_retention(
    sessionmaker: async_sessionmaker[AsyncSession], tenant_id: str, days: int | None, actor: str
) -> bool:
    """Set a tenant's own period (``None``: the setting's); ``False``: no such tenant.

    Audited as ``tenant.retention_changed`` by ``actor``, in the change's transaction.
    """
    async with sessionmaker.begin() as s:
        try:
            before = await erasure_queries.set_tenant_retention(s, tenant_id, days)
        except LookupError:
            return False
        await trail.add(
            s,
            AuditEntry(
                AuditKind.RETENTION_CHANGED,
                actor,
                {"tenant": tenant_id, "before": before, "after": days},
            ),
        )
    logger.info("tenant retention set tenant=%s days=%s", tenant_id, days)
    return True


def _cutoff(now: datetime, days: int) -> datetime:
    return now - timedelta(days=days) - GRACE
