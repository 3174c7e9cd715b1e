"""Queries as functions over an ``AsyncSession``; callers own the transaction."""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, cast

from sqlalchemy import (
    BigInteger,
    CursorResult,
    DateTime,
    String,
    Table,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Result, Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

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
from broker.record.usage import USAGE_FIELDS, Usage, column, usage_of_events

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


Executor = AsyncSession | AsyncConnection
"""The hot path's statements run on a session or, cheaper, straight on a connection."""


def _dialect(s: Executor) -> str:
    return (s.dialect if isinstance(s, AsyncConnection) else s.get_bind().dialect).name


# ---- the tool-call hot path ------------------------------------------------------------------
# Core statements over the tables, built once: each call of a tool runs a handful of them, and
# the ORM's per-statement work (identity map, synchronization, building the statement) was most
# of the broker's time per call. Bind parameters are named apart from the columns they set.

_TOOL_CALLS: Final = cast(Table, ToolCall.__table__)
_SESSIONS: Final = cast(Table, SessionRow.__table__)
_DISABLED: Final = cast(Table, DisabledTool.__table__)
_AT_TYPE: Final = _TOOL_CALLS.c.started_at.type

_LOCK_SESSION_FOR_TOOLS: Final = (
    update(_SESSIONS)
    .where(_SESSIONS.c.id == bindparam("b_session_id"))
    # A no-op write that takes the per-session lock (see broker.tools.budget).
    .values(max_tool_calls=_SESSIONS.c.max_tool_calls)
    .returning(
        _SESSIONS.c.max_tool_calls,
        _SESSIONS.c.max_concurrent_tools,
        _SESSIONS.c.max_argument_bytes,
        _SESSIONS.c.tools,
    )
)

_CLAIM_RETURNING: Final = (
    update(_TOOL_CALLS)
    .where(
        _TOOL_CALLS.c.session_id == bindparam("b_session_id"),
        _TOOL_CALLS.c.call_id == bindparam("b_call_id"),
        _TOOL_CALLS.c.status == str(ToolCallStatus.PENDING),
    )
    .values(
        status=str(ToolCallStatus.RUNNING),
        path=bindparam("b_path"),
        started_at=bindparam("b_now", type_=_AT_TYPE),
    )
    .returning(
        _TOOL_CALLS.c.tool,
        _TOOL_CALLS.c.arguments,
        # The kill switch, read in the claim itself: a switch committed before this
        # statement denies the call, in every process, with no cache to go stale.
        exists().where(_DISABLED.c.tool == _TOOL_CALLS.c.tool).label("disabled"),
    )
)

_TOOL_CALL_EXISTS: Final = select(literal(1)).where(
    _TOOL_CALLS.c.session_id == bindparam("b_session_id"),
    _TOOL_CALLS.c.call_id == bindparam("b_call_id"),
)

_MARK_INJECTED: Final = (
    update(_TOOL_CALLS)
    .where(
        _TOOL_CALLS.c.session_id == bindparam("b_session_id"),
        _TOOL_CALLS.c.call_id == bindparam("b_call_id"),
    )
    .values(injected_at=bindparam("b_at", type_=_AT_TYPE))
)

_RECORD_COLUMNS: Final = (
    "session_id",
    "call_id",
    "tool",
    "arguments",
    "status",
    "seen_by",
    "response_id",
    "item_id",
    "created_at",
)


def _record_statement(dialect: str) -> Any:
    """INSERT one call unless its ``(session_id, call_id)`` exists or the session is full.

    One statement: the count of the session's calls is a condition of the INSERT … SELECT,
    so the cap is checked under the same write as the row it admits.
    """
    c = _TOOL_CALLS.c
    values = select(
        *(bindparam(f"b_{name}", type_=c[name].type) for name in _RECORD_COLUMNS)
    ).where(
        select(func.count())
        .select_from(_TOOL_CALLS)
        .where(c.session_id == bindparam("b_session_id"))
        .scalar_subquery()
        < bindparam("b_max_calls")
    )
    dialect_insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return (
        dialect_insert(_TOOL_CALLS)
        .from_select(list(_RECORD_COLUMNS), values)
        .on_conflict_do_nothing(index_elements=["session_id", "call_id"])
    )


_RECORD: Final = {name: _record_statement(name) for name in ("postgresql", "sqlite")}


async def record_tool_call(
    s: Executor,
    *,
    session_id: str,
    call_id: str,
    tool: str,
    arguments: str,
    seen_by: str,
    response_id: str | None,
    item_id: str | None,
    max_calls: int,
) -> bool | None:
    """Insert a ``pending`` call unless it exists, within the session's cap of recorded calls.

    Returns ``True`` if inserted, ``False`` if the call was already recorded (the first
    reporter's tool and arguments stand), ``None`` if it is absent and the session already
    has ``max_calls`` calls (nothing inserted).
    """
    result = await s.execute(
        _RECORD["postgresql" if _dialect(s) == "postgresql" else "sqlite"],
        {
            "b_session_id": session_id,
            "b_call_id": call_id,
            "b_tool": tool,
            "b_arguments": arguments,
            "b_status": str(ToolCallStatus.PENDING),
            "b_seen_by": str(seen_by),
            "b_response_id": response_id,
            "b_item_id": item_id,
            "b_created_at": utcnow(),
            "b_max_calls": max_calls,
        },
    )
    if _changed(result):
        return True
    found = await s.scalar(_TOOL_CALL_EXISTS, {"b_session_id": session_id, "b_call_id": call_id})
    return False if found is not None else None


async def lock_session_for_tools(s: Executor, session_id: str) -> Row[Any] | None:
    """Take the session's tool lock and return its tool limits and allowlist.

    The row is ``(max_tool_calls, max_concurrent_tools, max_argument_bytes, tools)``, or
    ``None`` if the session is gone. Every grant of the session's budget serializes on this
    write until the transaction ends (see :mod:`broker.tools.budget`).
    """
    result = await s.execute(_LOCK_SESSION_FOR_TOOLS, {"b_session_id": session_id})
    return result.first()


async def claim_tool_call_returning(
    s: Executor, session_id: str, call_id: str, path: str
) -> Row[Any] | None:
    """``pending → running`` for exactly one claimant.

    Returns the recorded ``(tool, arguments, disabled)`` if this caller won (``disabled``:
    an operator has switched the tool off), else ``None``.
    """
    result = await s.execute(
        _CLAIM_RETURNING,
        {
            "b_session_id": session_id,
            "b_call_id": call_id,
            "b_path": str(path),
            "b_now": utcnow(),
        },
    )
    return result.first()


_SETTLE: Final = (
    update(_TOOL_CALLS)
    .where(
        _TOOL_CALLS.c.session_id == bindparam("b_session_id"),
        _TOOL_CALLS.c.call_id == bindparam("b_call_id"),
        _TOOL_CALLS.c.status == bindparam("b_from_status"),
    )
    .values(
        status=bindparam("b_status"),
        finished_at=bindparam("b_now", type_=_AT_TYPE),
        output=bindparam("b_output"),
        error=bindparam("b_error"),
        # None keeps what the row says (e.g. the decision the grant wrote).
        decision=func.coalesce(bindparam("b_decision", type_=String), _TOOL_CALLS.c.decision),
        output_item_id=func.coalesce(
            bindparam("b_output_item_id", type_=String), _TOOL_CALLS.c.output_item_id
        ),
    )
)


async def settle_tool_call_fast(
    s: Executor,
    session_id: str,
    call_id: str,
    *,
    status: ToolCallStatus,
    from_status: ToolCallStatus,
    output: str,
    error: str | None,
    decision: str | None = None,
    output_item_id: str | None = None,
) -> bool:
    """:func:`settle_tool_call` from one status, with the outcome; one prepared statement.

    ``decision`` and ``output_item_id`` left ``None`` keep what the row says.
    """
    result = await s.execute(
        _SETTLE,
        {
            "b_session_id": session_id,
            "b_call_id": call_id,
            "b_from_status": str(from_status),
            "b_status": str(status),
            "b_now": utcnow(),
            "b_output": output,
            "b_error": error,
            "b_decision": decision,
            "b_output_item_id": output_item_id,
        },
    )
    return _changed(result)


async def mark_injected(s: Executor, session_id: str, call_id: str, at: datetime) -> None:
    await s.execute(_MARK_INJECTED, {"b_session_id": session_id, "b_call_id": call_id, "b_at": at})


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


@dataclass(frozen=True)
class LogTally:
    """What an event-log writer adds to a session's coalescible counters with one write."""

    coalescible: int = 0
    """Coalescible events among the rows written."""
    coalescible_bytes: int = 0
    """Their payloads' size (compact JSON)."""
    dropped: int = 0
    """Coalescible events dropped at the session's cap since the writer's last write."""


async def add_events(
    s: AsyncSession, rows: Sequence[dict[str, Any]], *, tally: LogTally | None = None
) -> None:
    """Store event-log rows and fold them into their sessions' counters and usage totals.

    In the caller's transaction, each session of ``rows`` gets ``events_stored``,
    ``events_errors`` (provider ``error`` events), ``last_event_at`` and the usage of the
    provider's ``response.done`` events among them added (one UPDATE per session). Counters
    and usage ride on the event log's batched writes: no write of their own per event, and
    they always equal the sum over the stored events (a batch that is rolled back and
    retried is folded in once).

    Args:
        s: the caller's session (its transaction).
        rows: ``session_events`` rows, ``seq`` given.
        tally: the writer's coalescible counts; the rows must then be of one session.

    Raises:
        ValueError: ``tally`` with rows of several sessions.
    """
    if not rows:
        return
    by_session: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_session[row["session_id"]].append(row)
    if tally is not None and len(by_session) > 1:
        raise ValueError("a tally belongs to one session's rows")
    # The session row first, as before this write folded counters: its lock is taken in the
    # same order as every other writer of the row (the dispatcher's session lock).
    for session_id, session_rows in by_session.items():
        await fold_event_counts(
            s,
            session_id,
            stored=len(session_rows),
            errors=sum(1 for r in session_rows if r["type"] == "error" and r["direction"] == "in"),
            last_at=max(r["at"] for r in session_rows),
            usage=usage_of_events(session_rows),
            tally=tally or LogTally(),
        )
    await s.execute(_INSERT_EVENTS, list(rows))


_INSERT_EVENTS: Final = insert(cast(Table, SessionEvent.__table__))

_ADD_USAGE: Final = (
    update(_SESSIONS)
    .where(_SESSIONS.c.id == bindparam("b_session_id"))
    .values(
        {
            column(name): _SESSIONS.c[column(name)] + bindparam(f"b_{name}", type_=BigInteger)
            for name in USAGE_FIELDS
        }
    )
)
"""Built once: the increments are bind parameters, not a new expression per flush."""

_LOG_COUNTERS: Final = (
    "events_stored",
    "events_errors",
    "events_coalescible",
    "events_coalescible_bytes",
    "events_dropped",
)
_LAST_AT: Final = bindparam("b_last_at", type_=DateTime(timezone=True))
_FOLD_EVENTS: Final = (
    update(_SESSIONS)
    .where(_SESSIONS.c.id == bindparam("b_session_id"))
    .values(
        {
            **{
                name: _SESSIONS.c[name] + bindparam(f"b_{name}", type_=BigInteger)
                for name in _LOG_COUNTERS
            },
            **{
                column(name): _SESSIONS.c[column(name)] + bindparam(f"b_{name}", type_=BigInteger)
                for name in USAGE_FIELDS
            },
            # Never backwards: two writers (the recorder, a broker event) may commit out of
            # order. A NULL ``b_last_at`` (a write of counts only) keeps the stored time.
            "last_event_at": case(
                (
                    or_(
                        _SESSIONS.c.last_event_at.is_(None),
                        _SESSIONS.c.last_event_at < _LAST_AT,
                    ),
                    _LAST_AT,
                ),
                else_=_SESSIONS.c.last_event_at,
            ),
        }
    )
)
"""The counters and the usage of one write in one statement, built once."""


async def fold_event_counts(
    s: AsyncSession,
    session_id: str,
    *,
    stored: int = 0,
    errors: int = 0,
    last_at: datetime | None = None,
    usage: Usage | None = None,
    tally: LogTally | None = None,
) -> None:
    """Add one write's events to the session's counters and usage.

    Increments: concurrent writers add up.
    """
    tally = tally or LogTally()
    usage = usage or Usage()
    params: dict[str, Any] = {f"b_{name}": getattr(usage, name) for name in USAGE_FIELDS}
    params.update(
        b_session_id=session_id,
        b_events_stored=stored,
        b_events_errors=errors,
        b_events_coalescible=tally.coalescible,
        b_events_coalescible_bytes=tally.coalescible_bytes,
        b_events_dropped=tally.dropped,
        b_last_at=last_at,
    )
    await s.execute(_FOLD_EVENTS, params)


async def coalescible_spent(s: AsyncSession, session_id: str) -> tuple[int, int]:
    """The session's coalescible events stored so far: ``(count, bytes)`` (0s if no row)."""
    row = (
        await s.execute(
            select(SessionRow.events_coalescible, SessionRow.events_coalescible_bytes).where(
                SessionRow.id == session_id
            )
        )
    ).first()
    return (int(row[0]), int(row[1])) if row is not None else (0, 0)


async def add_session_usage(s: AsyncSession, session_id: str, usage: Usage) -> None:
    """Add ``usage`` to the session's totals (an increment: concurrent writers add up)."""
    params: dict[str, Any] = {f"b_{name}": getattr(usage, name) for name in USAGE_FIELDS}
    params["b_session_id"] = session_id
    await s.execute(_ADD_USAGE, params)


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
