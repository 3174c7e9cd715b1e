"""Queries that erase a session's content, and find the sessions retention erases.

Each statement is small and bounded (a batch of events, one session's tool calls), so a
caller runs it in a short transaction of its own and live work never waits long behind it.
What "content" is, and what stays, is :mod:`broker.session.erasure`'s docstring.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Final

from sqlalchemy import case, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from broker.db.models import (
    TERMINAL_STATES,
    CallCommand,
    SessionEvent,
    SessionRow,
    Tenant,
    ToolCall,
)

ERASED_JSON: Final = '{"erased":true}'
"""What an erased tool call's ``arguments`` and ``output`` read (still valid JSON)."""
ERASED_TEXT: Final = "erased"
"""What an erased tool call's ``error`` reads."""

_TERMINAL: Final = [str(state) for state in TERMINAL_STATES]


def _count(result: object) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


async def delete_events(s: AsyncSession, session_id: str, limit: int) -> int:
    """Delete at most ``limit`` of the session's event-log rows; how many were deleted."""
    batch = (
        select(SessionEvent.id)
        .where(SessionEvent.session_id == session_id)
        .order_by(SessionEvent.id)
        .limit(limit)
        .scalar_subquery()
    )
    return _count(await s.execute(delete(SessionEvent).where(SessionEvent.id.in_(batch))))


async def blank_tool_calls(s: AsyncSession, session_id: str) -> int:
    """Replace the session's tool arguments, outputs and errors by markers, drop the seals.

    One statement: a session's calls are bounded by its ``max_tool_calls``. Returns how many
    calls still had something to erase (``0`` on a second run).
    """
    t = ToolCall
    left = or_(
        t.arguments != ERASED_JSON,
        t.arguments_sealed.is_not(None),
        t.output_sealed.is_not(None),
        (t.output.is_not(None)) & (t.output != ERASED_JSON),
        (t.error.is_not(None)) & (t.error != ERASED_TEXT),
    )
    result = await s.execute(
        update(t)
        .where(t.session_id == session_id, left)
        .values(
            arguments=ERASED_JSON,
            arguments_sealed=None,
            output=case((t.output.is_(None), None), else_=ERASED_JSON),
            output_sealed=None,
            error=case((t.error.is_(None), None), else_=ERASED_TEXT),
        )
        .execution_options(synchronize_session=False)
    )
    return _count(result)


async def delete_call_commands(s: AsyncSession, session_id: str) -> int:
    """Drop the commands asked of the session's call (instructions, sealed tool relays)."""
    return _count(await s.execute(delete(CallCommand).where(CallCommand.session_id == session_id)))


async def mark_erased(s: AsyncSession, session_id: str, when: datetime) -> bool:
    """Blank the row's instructions and metadata and set ``erased_at``, once.

    Conditional on an ended session not yet marked: of two erasers racing (two instances'
    sweeps, a sweep and a ``DELETE``), one marks it. Whether this call did.
    """
    result = await s.execute(
        update(SessionRow)
        .where(
            SessionRow.id == session_id,
            SessionRow.state.in_(_TERMINAL),
            SessionRow.erased_at.is_(None),
        )
        .values({SessionRow.instructions: "", SessionRow.metadata_: {}, SessionRow.erased_at: when})
        .execution_options(synchronize_session=False)
    )
    return bool(_count(result))


async def tenant_retention(s: AsyncSession) -> dict[str, int]:
    """Each tenant's own ``retention_days``, for the tenants that set one."""
    rows = await s.execute(
        select(Tenant.id, Tenant.retention_days).where(Tenant.retention_days.is_not(None))
    )
    return {tenant_id: days for tenant_id, days in rows.all() if days is not None}


async def sessions_past_retention(
    s: AsyncSession,
    ended_before: datetime,
    limit: int,
    *,
    tenant_id: str | None = None,
    except_tenants: Sequence[str] = (),
) -> Sequence[str]:
    """Ids of at most ``limit`` ended, unerased sessions that ended before ``ended_before``.

    A session that never recorded an end counts from its creation. ``tenant_id``: only that
    tenant's; else every tenant's but ``except_tenants`` (those with a period of their own).
    Oldest first. ``created_at`` bounds the scan by its index: a session ends after it began.
    """
    since = func.coalesce(SessionRow.ended_at, SessionRow.created_at)
    query = select(SessionRow.id).where(
        SessionRow.state.in_(_TERMINAL),
        SessionRow.erased_at.is_(None),
        SessionRow.created_at < ended_before,
        since < ended_before,
    )
    if tenant_id is not None:
        query = query.where(SessionRow.tenant_id == tenant_id)
    elif except_tenants:
        query = query.where(SessionRow.tenant_id.not_in(list(except_tenants)))
    return (await s.scalars(query.order_by(SessionRow.created_at).limit(limit))).all()


async def set_tenant_retention(s: AsyncSession, tenant_id: str, days: int | None) -> int | None:
    """Set a tenant's own period (``None``: the setting's); its period before.

    Raises:
        LookupError: no such tenant.
    """
    tenant = await s.get(Tenant, tenant_id, with_for_update=True)
    if tenant is None:
        raise LookupError(tenant_id)
    before = tenant.retention_days
    tenant.retention_days = days
    return before
