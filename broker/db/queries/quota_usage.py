"""What a key or a tenant has spent against its caps, read from the ``sessions`` rows.

Tokens are the sessions' folded totals (:mod:`.session_counters`): the model's
``usage_total_tokens`` plus input transcription's ``usage_transcription_total_tokens``, counted
on the day (and month) the session was *created*: a call across midnight is the day's it began.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from broker.db.models import CALL_RUNNING_STATES, ApiKey, SessionRow, SessionState, Tenant

LIVE_STATES: Final = (SessionState.OFFERED, *CALL_RUNNING_STATES)
"""A live call: one being made (``offered``) or running."""
_TOKENS: Final = SessionRow.usage_total_tokens + SessionRow.usage_transcription_total_tokens


@dataclass(frozen=True)
class Spent:
    """One key's or tenant's consumption at one moment."""

    live_calls: int = 0
    sessions_today: int = 0
    tokens_today: int = 0
    tokens_this_month: int = 0


async def spent(
    s: AsyncSession,
    *,
    day_start: datetime,
    month_start: datetime,
    key_id: str | None = None,
    tenant_id: str | None = None,
) -> Spent:
    """What the sessions of ``key_id`` (or else of ``tenant_id``) have spent.

    One scan of the owner's sessions created this month, or still live (an index on
    ``owner_key_id`` or on ``tenant_id, created_at`` narrows it).
    """
    owner = (
        SessionRow.owner_key_id == key_id
        if key_id is not None
        else SessionRow.tenant_id == tenant_id
    )
    live = SessionRow.state.in_([str(x) for x in LIVE_STATES])
    today = SessionRow.created_at >= day_start
    month = SessionRow.created_at >= month_start
    row = (
        await s.execute(
            select(
                func.count().filter(live),
                func.count().filter(today),
                func.coalesce(func.sum(_TOKENS).filter(today), 0),
                func.coalesce(func.sum(_TOKENS).filter(month), 0),
            ).where(owner, or_(month, live))
        )
    ).one()
    return Spent(*(int(v or 0) for v in row))


async def key_quotas(s: AsyncSession, key_id: str) -> dict[str, Any] | None:
    """The stored caps of a key (``None``: none, or no such key row, e.g. ``admin``)."""
    return (await s.execute(select(ApiKey.quotas).where(ApiKey.id == key_id))).scalar()


async def tenant_quotas(s: AsyncSession, tenant_id: str) -> dict[str, Any] | None:
    return (await s.execute(select(Tenant.quotas).where(Tenant.id == tenant_id))).scalar()


async def capped_keys(s: AsyncSession) -> Sequence[tuple[str, dict[str, Any]]]:
    """Every unrevoked key with caps, and its caps."""
    result = await s.execute(
        select(ApiKey.id, ApiKey.quotas).where(
            ApiKey.quotas.is_not(None), ApiKey.revoked_at.is_(None)
        )
    )
    return [(key_id, quotas) for key_id, quotas in result if quotas]


async def capped_tenants(s: AsyncSession) -> Sequence[tuple[str, dict[str, Any]]]:
    result = await s.execute(select(Tenant.id, Tenant.quotas).where(Tenant.quotas.is_not(None)))
    return [(tenant_id, quotas) for tenant_id, quotas in result if quotas]


def _running_of(key_ids: Sequence[str], tenant_ids: Sequence[str]) -> Any:
    return (
        SessionRow.state.in_([str(x) for x in CALL_RUNNING_STATES]),
        SessionRow.call_id.is_not(None),
        or_(SessionRow.owner_key_id.in_(key_ids), SessionRow.tenant_id.in_(tenant_ids)),
    )


async def running_owners(
    s: AsyncSession, *, key_ids: Sequence[str], tenant_ids: Sequence[str]
) -> Sequence[tuple[str, str]]:
    """The ``(key, tenant)`` pairs with a running call among these keys or tenants."""
    if not key_ids and not tenant_ids:
        return []
    result = await s.execute(
        select(SessionRow.owner_key_id, SessionRow.tenant_id)
        .where(*_running_of(key_ids, tenant_ids))
        .distinct()
    )
    return [(key_id, tenant_id) for key_id, tenant_id in result]


async def running_calls(
    s: AsyncSession, *, key_ids: Sequence[str], tenant_ids: Sequence[str], limit: int
) -> Sequence[tuple[str, str, str]]:
    """At most ``limit`` running calls of these keys or tenants: ``(id, owner, tenant)``."""
    if not key_ids and not tenant_ids:
        return []
    result = await s.execute(
        select(SessionRow.id, SessionRow.owner_key_id, SessionRow.tenant_id)
        .where(*_running_of(key_ids, tenant_ids))
        .order_by(SessionRow.created_at)
        .limit(limit)
    )
    return [(sid, owner, tenant) for sid, owner, tenant in result]
