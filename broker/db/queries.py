"""Queries as functions over an ``AsyncSession``; callers own the transaction."""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import CursorResult, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Result
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from broker.db.models import (
    CALL_RUNNING_STATES,
    TERMINAL_STATES,
    ApiKey,
    DisabledTool,
    SessionEvent,
    SessionRow,
    SessionState,
    ToolCall,
    ToolCallStatus,
    ToolPath,
    WebhookDelivery,
    WebhookStatus,
    utcnow,
)
from broker.usage import USAGE_FIELDS, Usage, column, usage_of_events

SESSION_ENDED: Final = "session.ended"
"""The webhook event type queued when a session ends (or fails)."""


def _changed(result: Result[Any]) -> bool:
    assert isinstance(result, CursorResult)
    return bool(result.rowcount)


async def get_api_key_by_hash(s: AsyncSession, key_hash: str) -> ApiKey | None:
    return await s.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash))


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
    changed = _changed(result)
    if changed and to_state in TERMINAL_STATES:
        await _queue_session_ended(s, session_id)
    return changed


async def _queue_session_ended(s: AsyncSession, session_id: str) -> None:
    if not await s.scalar(select(SessionRow.notify_ended).where(SessionRow.id == session_id)):
        return
    now = utcnow()
    dialect_insert = (
        postgresql.insert if s.get_bind().dialect.name == "postgresql" else sqlite.insert
    )
    # DO NOTHING on the (session_id, type) key: a second end cannot happen (the transition
    # above succeeds once), but if it ever did, it must not roll the end back.
    await s.execute(
        dialect_insert(WebhookDelivery)
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


async def set_session_fields(s: AsyncSession, session_id: str, **values: Any) -> None:
    await s.execute(update(SessionRow).where(SessionRow.id == session_id).values(**values))


async def get_tool_call(s: AsyncSession, session_id: str, call_id: str) -> ToolCall | None:
    return await s.scalar(
        select(ToolCall).where(ToolCall.session_id == session_id, ToolCall.call_id == call_id)
    )


async def count_tool_calls(s: AsyncSession, session_id: str) -> int:
    count = await s.scalar(
        select(func.count()).select_from(ToolCall).where(ToolCall.session_id == session_id)
    )
    return int(count or 0)


async def list_tool_calls(s: AsyncSession, session_id: str) -> Sequence[ToolCall]:
    result = await s.scalars(
        select(ToolCall).where(ToolCall.session_id == session_id).order_by(ToolCall.id)
    )
    return result.all()


async def insert_tool_call_if_absent(s: AsyncSession, **values: Any) -> bool:
    """Insert a tool call unless ``(session_id, call_id)`` exists; ``True`` if inserted.

    ON CONFLICT DO NOTHING keeps the two paths (sideband, bridge) from racing into an
    IntegrityError that would abort the surrounding transaction.
    """
    dialect = s.get_bind().dialect.name
    dialect_insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = (
        dialect_insert(ToolCall)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["session_id", "call_id"])
    )
    result = await s.execute(stmt)
    return _changed(result)


async def claim_tool_call(s: AsyncSession, session_id: str, call_id: str, path: str) -> bool:
    """``pending → running`` for exactly one claimant; ``True`` if this caller won."""
    result = await s.execute(
        update(ToolCall)
        .where(
            ToolCall.session_id == session_id,
            ToolCall.call_id == call_id,
            ToolCall.status == ToolCallStatus.PENDING,
        )
        .values(status=ToolCallStatus.RUNNING, path=path, started_at=utcnow())
    )
    return _changed(result)


async def settle_tool_call(
    s: AsyncSession,
    session_id: str,
    call_id: str,
    *,
    status: ToolCallStatus,
    from_statuses: Sequence[ToolCallStatus],
    **values: Any,
) -> bool:
    """Record a terminal status; only from the expected statuses, so a settled call stays so."""
    result = await s.execute(
        update(ToolCall)
        .where(
            ToolCall.session_id == session_id,
            ToolCall.call_id == call_id,
            ToolCall.status.in_([str(x) for x in from_statuses]),
        )
        .values(status=status, finished_at=utcnow(), **values)
    )
    return _changed(result)


async def reset_tool_call(s: AsyncSession, session_id: str, call_id: str) -> bool:
    """``running → pending`` (an idempotent call a crash interrupted runs again)."""
    result = await s.execute(
        update(ToolCall)
        .where(
            ToolCall.session_id == session_id,
            ToolCall.call_id == call_id,
            ToolCall.status == ToolCallStatus.RUNNING,
        )
        .values(status=ToolCallStatus.PENDING, path=None, started_at=None)
    )
    return _changed(result)


async def mark_injected(s: AsyncSession, session_id: str, call_id: str, at: datetime) -> None:
    await s.execute(
        update(ToolCall)
        .where(ToolCall.session_id == session_id, ToolCall.call_id == call_id)
        .values(injected_at=at)
    )


_OUTCOMES_TO_DELIVER = (ToolCallStatus.SUCCEEDED, ToolCallStatus.FAILED, ToolCallStatus.DENIED)


async def unfinished_tool_calls(
    s: AsyncSession, session_id: str
) -> tuple[Sequence[ToolCall], Sequence[ToolCall]]:
    """``(seen, undelivered)`` sideband calls of a session.

    ``seen``: recorded with the provider's item id, never run. ``undelivered``: decided by
    the sideband path with an output item id, not yet known to be at the provider (the
    bridge's own calls are answered by its browser).
    """
    seen = await s.scalars(
        select(ToolCall)
        .where(
            ToolCall.session_id == session_id,
            ToolCall.status == ToolCallStatus.PENDING,
            ToolCall.item_id.is_not(None),
        )
        .order_by(ToolCall.id)
    )
    undelivered = await s.scalars(
        select(ToolCall)
        .where(
            ToolCall.session_id == session_id,
            ToolCall.status.in_([str(x) for x in _OUTCOMES_TO_DELIVER]),
            ToolCall.path == ToolPath.SIDEBAND,
            ToolCall.output_item_id.is_not(None),
            ToolCall.injected_at.is_(None),
        )
        .order_by(ToolCall.id)
    )
    return seen.all(), undelivered.all()


async def running_tool_calls(s: AsyncSession, session_id: str) -> Sequence[ToolCall]:
    result = await s.scalars(
        select(ToolCall).where(
            ToolCall.session_id == session_id, ToolCall.status == ToolCallStatus.RUNNING
        )
    )
    return result.all()


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


async def next_event_seq(s: AsyncSession, session_id: str) -> int:
    current = await s.scalar(
        select(func.max(SessionEvent.seq)).where(SessionEvent.session_id == session_id)
    )
    return (current or 0) + 1


async def add_events(s: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """Store event-log rows and fold their usage into their sessions' totals.

    The usage of the provider's ``response.done`` events among ``rows`` is added to their
    sessions' ``usage_*`` columns in the caller's transaction. Usage rides on the event
    log's batched writes: no write of its own per event, and the totals always equal the sum
    over the stored events (a batch that is rolled back and retried is folded in once).
    """
    if not rows:
        return
    by_session: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_session[row["session_id"]].append(row)
    for session_id, session_rows in by_session.items():
        usage = usage_of_events(session_rows)
        if not usage.empty:
            await add_session_usage(s, session_id, usage)
    await s.execute(insert(SessionEvent), list(rows))


async def add_session_usage(s: AsyncSession, session_id: str, usage: Usage) -> None:
    """Add ``usage`` to the session's totals (an increment: concurrent writers add up)."""
    increments = {
        column(name): getattr(SessionRow, column(name)) + getattr(usage, name)
        for name in USAGE_FIELDS
    }
    await s.execute(update(SessionRow).where(SessionRow.id == session_id).values(**increments))


async def usage_by_key(s: AsyncSession) -> dict[str, Usage]:
    """Every API key's usage: the sum over its sessions, live ones included."""
    sums = [func.coalesce(func.sum(getattr(SessionRow, column(n))), 0) for n in USAGE_FIELDS]
    result = await s.execute(
        select(SessionRow.owner_key_id, *sums).group_by(SessionRow.owner_key_id)
    )
    return {
        key_id: Usage(**dict(zip(USAGE_FIELDS, (int(v) for v in values), strict=True)))
        for key_id, *values in result
    }


async def disable_tool(
    s: AsyncSession, tool: str, disabled_by: str, reason: str | None
) -> DisabledTool:
    """Switch ``tool`` off (idempotent: a second call keeps the first time, updates the rest)."""
    row = await s.get(DisabledTool, tool)
    if row is None:
        row = DisabledTool(tool=tool, disabled_by=disabled_by, reason=reason, disabled_at=utcnow())
        try:
            async with s.begin_nested():
                s.add(row)
        except IntegrityError:
            # Another operator (or process) switched it off at the same moment: theirs stands.
            existing = await s.get(DisabledTool, tool, populate_existing=True)
            if existing is None:
                raise
            row = existing
        else:
            return row
    row.disabled_by, row.reason = disabled_by, reason
    await s.flush()
    return row


async def enable_tool(s: AsyncSession, tool: str) -> bool:
    """Switch ``tool`` back on; whether it was off."""
    return _changed(await s.execute(delete(DisabledTool).where(DisabledTool.tool == tool)))


async def is_tool_disabled(s: AsyncSession, tool: str) -> bool:
    return await s.get(DisabledTool, tool) is not None


async def disabled_tools(s: AsyncSession) -> Sequence[DisabledTool]:
    return (await s.scalars(select(DisabledTool).order_by(DisabledTool.tool))).all()


async def session_events_after(
    s: AsyncSession, session_id: str, after_seq: int, limit: int
) -> Sequence[SessionEvent]:
    """Up to ``limit`` of the session's events with ``seq > after_seq``, in ``seq`` order."""
    result = await s.scalars(
        select(SessionEvent)
        .where(SessionEvent.session_id == session_id, SessionEvent.seq > after_seq)
        .order_by(SessionEvent.seq)
        .limit(limit)
    )
    return result.all()


async def latest_events_of(
    s: AsyncSession, session_id: str, types: Sequence[str], limit: int
) -> list[SessionEvent]:
    """The newest ``limit`` provider events of these ``types``, in ``seq`` order."""
    rows = await s.scalars(
        select(SessionEvent)
        .where(
            SessionEvent.session_id == session_id,
            SessionEvent.direction == "in",
            SessionEvent.type.in_(types),
        )
        .order_by(SessionEvent.seq.desc())
        .limit(limit)
    )
    return list(reversed(rows.all()))


async def tool_call_counts(s: AsyncSession, session_id: str) -> dict[str, int]:
    """The session's tool calls by status (statuses with none are absent)."""
    result = await s.execute(
        select(ToolCall.status, func.count())
        .where(ToolCall.session_id == session_id)
        .group_by(ToolCall.status)
    )
    return {str(status): int(count) for status, count in result}


# ---- the webhook outbox ---------------------------------------------------------------------


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
    if not _changed(result):
        return None
    return await s.get(WebhookDelivery, delivery_id, populate_existing=True)


async def finish_webhook_attempt(s: AsyncSession, delivery_id: str, **values: Any) -> None:
    """Record an attempt's outcome (status, next attempt, last status and error)."""
    await s.execute(
        update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(**values)
    )
