"""Queries over ``sessions``: reading a session, moving its state, the tools' lock on it.

The row's event-log counters and usage totals are :mod:`broker.db.queries.session_counters`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from sqlalchemy import bindparam, select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncSession

from broker.db.models import CALL_RUNNING_STATES, TERMINAL_STATES, SessionRow, SessionState, utcnow
from broker.db.queries._common import SESSIONS, Executor, changed
from broker.db.queries.webhook_deliveries import queue_session_ended


async def get_session_row(s: AsyncSession, session_id: str) -> SessionRow | None:
    return await s.get(SessionRow, session_id)


async def transition_session(
    s: AsyncSession,
    session_id: str,
    from_states: Sequence[SessionState],
    to_state: SessionState,
    **values: Any,
) -> bool:
    """Move a session to ``to_state`` only if it is in one of ``from_states``; atomic.

    The move into ``ended`` or ``failed`` is the session's end, whichever path makes it (the
    supervisor, the duration backstop, an operator, a failed offer): the same transaction
    queues its ``session.ended`` webhook (when the session asked for one), so an end is
    announced exactly once and never without being recorded.
    """
    stamp = {
        SessionState.OFFERED: "offered_at",
        SessionState.LIVE: "live_at",
        SessionState.ENDED: "ended_at",
        SessionState.FAILED: "ended_at",
    }.get(to_state)
    if stamp is not None:
        values.setdefault(stamp, utcnow())
    result = await s.execute(
        update(SessionRow)
        .where(SessionRow.id == session_id, SessionRow.state.in_([str(x) for x in from_states]))
        .values(state=str(to_state), **values)
    )
    moved = changed(result)
    if moved and to_state in TERMINAL_STATES:
        await queue_session_ended(s, session_id)
    return moved


async def stale_sessions(
    s: AsyncSession, state: SessionState, before: datetime, limit: int
) -> Sequence[str]:
    """Ids of at most ``limit`` sessions in ``state`` since before ``before``, oldest first.

    "Since" is ``offered_at`` for ``offered``, else ``created_at``.
    """
    since = SessionRow.offered_at if state is SessionState.OFFERED else SessionRow.created_at
    return (
        await s.scalars(
            select(SessionRow.id)
            .where(SessionRow.state == str(state), since < before)
            .order_by(since)
            .limit(limit)
        )
    ).all()


async def set_session_fields(s: AsyncSession, session_id: str, **values: Any) -> None:
    await s.execute(update(SessionRow).where(SessionRow.id == session_id).values(**values))


async def sessions_with_running_calls(s: AsyncSession) -> Sequence[SessionRow]:
    """Sessions whose provider call exists as far as the broker knows (live or degraded)."""
    result = await s.scalars(
        select(SessionRow)
        .where(
            SessionRow.state.in_([str(x) for x in CALL_RUNNING_STATES]),
            SessionRow.call_id.is_not(None),
        )
        .order_by(SessionRow.live_at)
    )
    return result.all()


# Built once: every tool call takes this lock (see broker.db.queries.tool_calls on why).
_LOCK_SESSION_FOR_TOOLS: Final = (
    update(SESSIONS)
    .where(SESSIONS.c.id == bindparam("b_session_id"))
    # A no-op write that takes the per-session lock (see broker.tools.budget).
    .values(max_tool_calls=SESSIONS.c.max_tool_calls)
    .returning(
        SESSIONS.c.max_tool_calls,
        SESSIONS.c.max_concurrent_tools,
        SESSIONS.c.max_argument_bytes,
        SESSIONS.c.tools,
    )
)


async def lock_session_for_tools(s: Executor, session_id: str) -> Row[Any] | None:
    """Take the session's tool lock and return its tool limits and allowlist.

    The row is ``(max_tool_calls, max_concurrent_tools, max_argument_bytes, tools)``, or
    ``None`` if the session is gone. Every grant of the session's budget serializes on this
    write until the transaction ends (see :mod:`broker.tools.budget`).
    """
    result = await s.execute(_LOCK_SESSION_FOR_TOOLS, {"b_session_id": session_id})
    return result.first()
