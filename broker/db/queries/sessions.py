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

from broker.db.models import (
    CALL_RUNNING_STATES,
    TERMINAL_STATES,
    SessionRow,
    SessionState,
    SidebandState,
    utcnow,
)
from broker.db.queries._common import SESSIONS, Executor, changed


async def get_session_row(s: AsyncSession, session_id: str) -> SessionRow | None:
    return await s.get(SessionRow, session_id)


async def transition_session(
    s: AsyncSession,
    session_id: str,
    from_states: Sequence[SessionState],
    to_state: SessionState,
    *,
    offer_jti: str | None = None,
    call_id: str | None = None,
) -> bool:
    """Move a session to ``to_state`` only if it is in one of ``from_states``; atomic.

    Only for the moves before an end (``offered``, ``live``, ``degraded``): a session ends
    through :func:`broker.session.ending.end_session`, which also queues the webhook, writes
    the event and counts the end.

    Raises:
        ValueError: ``to_state`` is ``ended`` or ``failed``.
    """
    if to_state in TERMINAL_STATES:
        raise ValueError(f"a session ends through end_session, not a transition to {to_state}")
    values: dict[str, Any] = {}
    if offer_jti is not None:
        values["offer_jti"] = offer_jti
    if call_id is not None:
        values["call_id"] = call_id
    stamp = _STAMPS.get(to_state)
    if stamp is not None:
        values[stamp] = utcnow()
    return await _move(s, session_id, from_states, to_state, values)


async def mark_session_ended(
    s: AsyncSession,
    session_id: str,
    from_states: Sequence[SessionState],
    to_state: SessionState,
    end_reason: str,
) -> bool:
    """Move a session into ``ended`` or ``failed`` if it is in one of ``from_states``.

    The row's half of a session's end; :func:`broker.session.ending.end_session` is the
    whole of it (only it calls this).

    Raises:
        ValueError: ``to_state`` is not ``ended`` or ``failed``.
    """
    if to_state not in TERMINAL_STATES:
        raise ValueError(f"{to_state} is not an end")
    values = {"end_reason": end_reason, "ended_at": utcnow()}
    return await _move(s, session_id, from_states, to_state, values)


_STAMPS: Final = {SessionState.OFFERED: "offered_at", SessionState.LIVE: "live_at"}
"""The time column each state before an end records (an end records ``ended_at``)."""


async def _move(
    s: AsyncSession,
    session_id: str,
    from_states: Sequence[SessionState],
    to_state: SessionState,
    values: dict[str, Any],
) -> bool:
    result = await s.execute(
        update(SessionRow)
        .where(SessionRow.id == session_id, SessionRow.state.in_([str(x) for x in from_states]))
        .values(state=str(to_state), **values)
    )
    return changed(result)


async def set_sideband_state(s: AsyncSession, session_id: str, state: SidebandState) -> None:
    await s.execute(
        update(SessionRow).where(SessionRow.id == session_id).values(sideband_state=str(state))
    )


async def set_instructions(s: AsyncSession, session_id: str, instructions: str) -> None:
    """Store a call's new instructions (a resumed or re-attached sideband asserts them)."""
    await s.execute(
        update(SessionRow).where(SessionRow.id == session_id).values(instructions=instructions)
    )


async def set_config(
    s: AsyncSession, session_id: str, instructions: str, tools: Sequence[str]
) -> None:
    """Store a live call's new instructions and tool allowlist (a reconfiguration).

    From then on the dispatcher and the bridge judge calls by these tools, and a resumed or
    re-attached sideband asserts this config.
    """
    await s.execute(
        update(SessionRow)
        .where(SessionRow.id == session_id)
        .values(instructions=instructions, tools=list(tools))
    )


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
        SESSIONS.c.tenant_id,
    )
)


async def lock_session_for_tools(s: Executor, session_id: str) -> Row[Any] | None:
    """Take the session's tool lock and return its tool limits and allowlist.

    The row is ``(max_tool_calls, max_concurrent_tools, max_argument_bytes, tools,
    tenant_id)`` (the tenant: for the per-tenant metrics), or
    ``None`` if the session is gone. Every grant of the session's budget serializes on this
    write until the transaction ends (see :mod:`broker.tools.budget`).
    """
    result = await s.execute(_LOCK_SESSION_FOR_TOOLS, {"b_session_id": session_id})
    return result.first()
