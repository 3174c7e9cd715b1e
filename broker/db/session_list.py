"""The ops list of sessions: filtered, newest first, a page at a time, with per-session counts.

Event counts come from the session row's counters (kept by the event log's writers), never
from ``session_events``: a session with a huge log lists as fast as one with none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import and_, exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from broker.db.models import SessionRow, ToolCall


@dataclass(frozen=True)
class SessionFilter:
    """Every field that is set must match.

    ``tool``: the session called that tool; ``tenant_id``: the caller's tenant (``None``
    for a cross-tenant caller: every tenant's).
    """

    states: frozenset[str] = frozenset()
    model: str | None = None
    tool: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    tenant_id: str | None = None


@dataclass(frozen=True)
class Cursor:
    """Where the previous page ended: its last row's ``(created_at, id)``."""

    created_at: datetime
    session_id: str


@dataclass
class SessionSummary:
    row: SessionRow
    tool_calls: dict[str, int] = field(default_factory=dict)
    """Tool calls by status (``succeeded``, ``failed``, ``denied``, …)."""
    last_event_at: datetime | None = None
    errors: int = 0
    """Provider ``error`` events received on the sideband."""


async def list_sessions(
    s: AsyncSession, where: SessionFilter, after: Cursor | None, limit: int
) -> tuple[list[SessionSummary], bool]:
    """One page, newest first; and whether more rows follow it."""
    query = select(SessionRow)
    if where.tenant_id is not None:
        # ix_sessions_tenant_created_at serves this and the newest-first order together.
        query = query.where(SessionRow.tenant_id == where.tenant_id)
    if where.states:
        query = query.where(SessionRow.state.in_(sorted(where.states)))
    if where.model is not None:
        query = query.where(SessionRow.model == where.model)
    if where.tool is not None:
        query = query.where(
            exists().where(ToolCall.session_id == SessionRow.id, ToolCall.tool == where.tool)
        )
    if where.created_after is not None:
        query = query.where(SessionRow.created_at >= where.created_after)
    if where.created_before is not None:
        query = query.where(SessionRow.created_at < where.created_before)
    if after is not None:
        # Keyset pagination: stable while new sessions arrive (they sort before the cursor).
        query = query.where(
            or_(
                SessionRow.created_at < after.created_at,
                and_(SessionRow.created_at == after.created_at, SessionRow.id < after.session_id),
            )
        )
    query = query.order_by(SessionRow.created_at.desc(), SessionRow.id.desc()).limit(limit + 1)
    rows = list((await s.scalars(query)).all())
    more = len(rows) > limit
    summaries = {
        row.id: SessionSummary(row, last_event_at=row.last_event_at, errors=row.events_errors)
        for row in rows[:limit]
    }
    await _add_counts(s, summaries)
    return list(summaries.values()), more


async def _add_counts(s: AsyncSession, summaries: dict[str, SessionSummary]) -> None:
    ids: Sequence[str] = list(summaries)
    if not ids:
        return
    by_status = select(ToolCall.session_id, ToolCall.status, func.count()).where(
        ToolCall.session_id.in_(ids)
    )
    for session_id, status, count in await s.execute(
        by_status.group_by(ToolCall.session_id, ToolCall.status)
    ):
        summaries[session_id].tool_calls[status] = count
