"""Queries over ``webhook_deliveries``: the webhook outbox."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from broker.db.dialect import conflict_insert, dialect_name
from broker.db.models import SessionRow, WebhookDelivery, WebhookStatus, utcnow
from broker.db.queries._common import changed

SESSION_ENDED: Final = "session.ended"
"""The webhook event type queued when a session ends (or fails)."""


async def queue_session_ended(s: AsyncSession, session_id: str) -> None:
    """Queue the session's ``session.ended`` delivery, if it asked for one.

    In the caller's transaction; a second call for the same session queues nothing.
    """
    if not await s.scalar(select(SessionRow.notify_ended).where(SessionRow.id == session_id)):
        return
    now = utcnow()
    # DO NOTHING on the (session_id, type) key: a second end cannot happen (the transition
    # that ends a session succeeds once), but if it ever did, it must not roll the end back.
    await s.execute(
        conflict_insert(WebhookDelivery, dialect_name(s))
        .values(
            id="wh_" + secrets.token_hex(12),
            session_id=session_id,
            type=SESSION_ENDED,
            status=WebhookStatus.PENDING,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["session_id", "type"])
    )


async def due_webhooks(s: AsyncSession, now: datetime, limit: int) -> list[str]:
    """Ids of pending deliveries whose next attempt is due, soonest first."""
    result = await s.scalars(
        select(WebhookDelivery.id)
        .where(
            WebhookDelivery.status == WebhookStatus.PENDING,
            WebhookDelivery.next_attempt_at <= now,
        )
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
        .limit(limit)
    )
    return list(result.all())


async def next_webhook_due(s: AsyncSession) -> datetime | None:
    """When the soonest pending delivery is due (``None``: nothing pending)."""
    return await s.scalar(
        select(func.min(WebhookDelivery.next_attempt_at)).where(
            WebhookDelivery.status == WebhookStatus.PENDING
        )
    )


async def claim_webhook(
    s: AsyncSession, delivery_id: str, now: datetime, lease: timedelta
) -> WebhookDelivery | None:
    """Take one due delivery for an attempt; ``None`` if another sender took it first.

    The attempt is counted now and the row leased (``next_attempt_at`` pushed past the
    attempt's timeout): a sender that dies mid-attempt leaves a row any sender retries once
    the lease runs out.
    """
    result = await s.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.status == WebhookStatus.PENDING,
            WebhookDelivery.next_attempt_at <= now,
        )
        .values(attempts=WebhookDelivery.attempts + 1, next_attempt_at=now + lease)
    )
    if not changed(result):
        return None
    return await s.get(WebhookDelivery, delivery_id, populate_existing=True)


async def finish_webhook_attempt(s: AsyncSession, delivery_id: str, **values: Any) -> None:
    """Record an attempt's outcome (status, next attempt, last status and error)."""
    await s.execute(
        update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(**values)
    )
