"""Queries over ``tool_calls``: recording, claiming and settling each call once.

The hot path's statements (record, claim, settle, mark injected) are Core statements built
once: each call of a tool runs a handful of them, and the ORM's per-statement work (identity
map, synchronization, building the statement) was most of the broker's time per call. Bind
parameters are named apart from the columns they set.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from sqlalchemy import String, bindparam, exists, func, literal, select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncSession

from broker.db.dialect import conflict_insert, dialect_name
from broker.db.models import ToolCall, ToolCallStatus, ToolPath, utcnow
from broker.db.queries._common import DISABLED_TOOLS, TOOL_CALLS, Executor, changed

_AT_TYPE: Final = TOOL_CALLS.c.started_at.type


async def get_tool_call(s: AsyncSession, session_id: str, call_id: str) -> ToolCall | None:
    return await s.scalar(
        select(ToolCall).where(ToolCall.session_id == session_id, ToolCall.call_id == call_id)
    )


async def list_tool_calls(s: AsyncSession, session_id: str) -> Sequence[ToolCall]:
    result = await s.scalars(
        select(ToolCall).where(ToolCall.session_id == session_id).order_by(ToolCall.id)
    )
    return result.all()


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
    return changed(result)


async def cancel_tool_call(
    s: AsyncSession, session_id: str, call_id: str, *, error: str
) -> str | None:
    """``pending → cancelled`` (the call will never run); its tool if this changed it."""
    result = await s.execute(
        update(ToolCall)
        .where(
            ToolCall.session_id == session_id,
            ToolCall.call_id == call_id,
            ToolCall.status == ToolCallStatus.PENDING,
        )
        .values(status=ToolCallStatus.CANCELLED, finished_at=utcnow(), error=error)
        .returning(ToolCall.tool)
    )
    tool = result.scalar()
    return None if tool is None else str(tool)


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
    return changed(result)


# ---- the hot path ---------------------------------------------------------------------------

_CLAIM_RETURNING: Final = (
    update(TOOL_CALLS)
    .where(
        TOOL_CALLS.c.session_id == bindparam("b_session_id"),
        TOOL_CALLS.c.call_id == bindparam("b_call_id"),
        TOOL_CALLS.c.status == str(ToolCallStatus.PENDING),
    )
    .values(
        status=str(ToolCallStatus.RUNNING),
        path=bindparam("b_path"),
        started_at=bindparam("b_now", type_=_AT_TYPE),
    )
    .returning(
        TOOL_CALLS.c.tool,
        TOOL_CALLS.c.arguments,
        TOOL_CALLS.c.arguments_sealed,
        # The kill switch, read in the claim itself: a switch committed before this
        # statement denies the call, in every process, with no cache to go stale.
        exists().where(DISABLED_TOOLS.c.tool == TOOL_CALLS.c.tool).label("disabled"),
    )
)

_TOOL_CALL_EXISTS: Final = select(literal(1)).where(
    TOOL_CALLS.c.session_id == bindparam("b_session_id"),
    TOOL_CALLS.c.call_id == bindparam("b_call_id"),
)

_MARK_INJECTED: Final = (
    update(TOOL_CALLS)
    .where(
        TOOL_CALLS.c.session_id == bindparam("b_session_id"),
        TOOL_CALLS.c.call_id == bindparam("b_call_id"),
        # Once: the first mark is when the output reached the provider (and is audited).
        TOOL_CALLS.c.injected_at.is_(None),
    )
    .values(injected_at=bindparam("b_at", type_=_AT_TYPE))
    .returning(TOOL_CALLS.c.tool, TOOL_CALLS.c.output_item_id)
)

_RECORD_COLUMNS: Final = (
    "session_id",
    "call_id",
    "tool",
    "arguments",
    "arguments_sealed",
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
    c = TOOL_CALLS.c
    values = select(
        *(bindparam(f"b_{name}", type_=c[name].type) for name in _RECORD_COLUMNS)
    ).where(
        select(func.count())
        .select_from(TOOL_CALLS)
        .where(c.session_id == bindparam("b_session_id"))
        .scalar_subquery()
        < bindparam("b_max_calls")
    )
    return (
        conflict_insert(TOOL_CALLS, dialect)
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
    arguments_sealed: str | None = None,
) -> bool | None:
    """Insert a ``pending`` call unless it exists, within the session's cap of recorded calls.

    ``arguments`` as shown (a redacting tool's redacted), ``arguments_sealed`` the raw ones
    sealed (:mod:`broker.tools.redaction`).

    Returns ``True`` if inserted, ``False`` if the call was already recorded (the first
    reporter's tool and arguments stand), ``None`` if it is absent and the session already
    has ``max_calls`` calls (nothing inserted).
    """
    result = await s.execute(
        _RECORD["postgresql" if dialect_name(s) == "postgresql" else "sqlite"],
        {
            "b_session_id": session_id,
            "b_call_id": call_id,
            "b_tool": tool,
            "b_arguments": arguments,
            "b_arguments_sealed": arguments_sealed,
            "b_status": str(ToolCallStatus.PENDING),
            "b_seen_by": str(seen_by),
            "b_response_id": response_id,
            "b_item_id": item_id,
            "b_created_at": utcnow(),
            "b_max_calls": max_calls,
        },
    )
    if changed(result):
        return True
    found = await s.scalar(_TOOL_CALL_EXISTS, {"b_session_id": session_id, "b_call_id": call_id})
    return False if found is not None else None


async def claim_tool_call_returning(
    s: Executor, session_id: str, call_id: str, path: str
) -> Row[Any] | None:
    """``pending → running`` for exactly one claimant.

    Returns the recorded ``(tool, arguments, arguments_sealed, disabled)`` if this caller
    won (``disabled``: an operator has switched the tool off), else ``None``.
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
    update(TOOL_CALLS)
    .where(
        TOOL_CALLS.c.session_id == bindparam("b_session_id"),
        TOOL_CALLS.c.call_id == bindparam("b_call_id"),
        TOOL_CALLS.c.status == bindparam("b_from_status"),
    )
    .values(
        status=bindparam("b_status"),
        finished_at=bindparam("b_now", type_=_AT_TYPE),
        output=bindparam("b_output"),
        output_sealed=bindparam("b_output_sealed", type_=String),
        error=bindparam("b_error"),
        # None keeps what the row says (e.g. the decision the grant wrote).
        decision=func.coalesce(bindparam("b_decision", type_=String), TOOL_CALLS.c.decision),
        output_item_id=func.coalesce(
            bindparam("b_output_item_id", type_=String), TOOL_CALLS.c.output_item_id
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
    output_sealed: str | None = None,
) -> bool:
    """:func:`settle_tool_call` from one status, with the outcome; one prepared statement.

    ``decision`` and ``output_item_id`` left ``None`` keep what the row says. ``output`` as
    shown; ``output_sealed`` the raw one sealed, for a redacting tool.
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
            "b_output_sealed": output_sealed,
            "b_error": error,
            "b_decision": decision,
            "b_output_item_id": output_item_id,
        },
    )
    return changed(result)


async def mark_injected(
    s: Executor, session_id: str, call_id: str, at: datetime
) -> tuple[str, str | None] | None:
    """Note the output delivered; ``(tool, output_item_id)`` the first time, else ``None``."""
    result = await s.execute(
        _MARK_INJECTED, {"b_session_id": session_id, "b_call_id": call_id, "b_at": at}
    )
    row = result.first()
    return None if row is None else (row.tool, row.output_item_id)


# ---- after a crash or a reconnect, and for the ops views ------------------------------------

_OUTCOMES_TO_DELIVER = (
    ToolCallStatus.SUCCEEDED,
    ToolCallStatus.FAILED,
    ToolCallStatus.DENIED,
    # An approval-gated call's pending output is its one output, delivered like any other.
    ToolCallStatus.HELD,
)


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


async def tool_call_counts(s: AsyncSession, session_id: str) -> dict[str, int]:
    """The session's tool calls by status (statuses with none are absent)."""
    result = await s.execute(
        select(ToolCall.status, func.count())
        .where(ToolCall.session_id == session_id)
        .group_by(ToolCall.status)
    )
    return {str(status): int(count) for status, count in result}


async def answered_outputs(s: AsyncSession, session_id: str) -> list[tuple[str, str]]:
    """``(call_id, output)`` of the session's settled calls whose output was delivered.

    What a new owner of the call must not take for forgeries when their echoes reach it, nor
    run again. A redacting tool's output is as shown; :func:`delivered_outputs` has it
    sealed too (:meth:`broker.tools.ledger.CallLedger.answered_outputs` opens it).
    """
    return [(call_id, output) for call_id, output, _ in await delivered_outputs(s, session_id)]


async def delivered_outputs(s: AsyncSession, session_id: str) -> list[tuple[str, str, str | None]]:
    """:func:`answered_outputs` with each one's ``output_sealed``."""
    rows = await s.execute(
        select(ToolCall.call_id, ToolCall.output, ToolCall.output_sealed).where(
            ToolCall.session_id == session_id,
            ToolCall.output.is_not(None),
            # Delivered: an undelivered one is the resync's to look up and send.
            ToolCall.injected_at.is_not(None),
            ToolCall.status.in_([str(x) for x in _OUTCOMES_TO_DELIVER]),
        )
    )
    return [(row.call_id, row.output, row.output_sealed) for row in rows if row.output is not None]
