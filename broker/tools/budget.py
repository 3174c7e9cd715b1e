"""A session's tool budget and concurrency limit, enforced in the database.

What counts:

* **Budget** (``max_tool_calls``): calls *started* — those that passed policy and were handed
  to their executor, whether they then succeeded, failed or timed out (the side effect may
  have happened either way). Denied and cancelled calls never ran and cost nothing; a
  denial's output is the only thing the model gets. The call after the last allowed one is
  denied ``tool_budget_exhausted``. Both paths (sideband, bridge) share the count.
* **Concurrency** (``max_concurrent_tools``): started calls still running. One more is
  denied ``too_many_concurrent_tools`` (denied rather than queued: nothing waits on a
  browser-driven queue, and the model can simply call again). A row left ``running`` by a
  broker that died mid-call stops counting once no tool could still be running
  (:data:`STALE_RUNNING_AFTER`).

The check and the grant must be one atomic step, or two calls of one response (run
concurrently) could both see room for one. The grant's transaction first writes to the session
row (:func:`broker.db.queries.lock_session_for_tools`), which serializes grants per session:
PostgreSQL holds that row's lock until commit; SQLite holds its single write lock. The counts
read after it (:func:`grant_locked`) therefore include every earlier grant.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Final, cast

from sqlalchemy import Table, and_, bindparam, case, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from broker.db.models import ToolCall, ToolCallStatus, utcnow
from broker.tools.codes import ToolErrorCode
from broker.tools.registry import MAX_TIMEOUT

ALLOWED: Final = "allowed"
DENIED: Final = "denied"
STALE_RUNNING_AFTER: Final = timedelta(seconds=MAX_TIMEOUT + 60)
"""No tool runs longer than the largest timeout; a ``running`` row older than this is debris."""


@dataclass(frozen=True)
class ToolLimits:
    """The tool limits stored on a session's row (fixed when the session was created)."""

    max_tool_calls: int
    max_concurrent_tools: int
    max_argument_bytes: int


async def grant_locked(
    s: AsyncSession | AsyncConnection, session_id: str, call_id: str, limits: ToolLimits
) -> tuple[ToolErrorCode | None, int]:
    """Mark the call as started (``decision = allowed``) if the session has room; else say why.

    The caller must already hold the session's lock in ``s``
    (:func:`broker.db.queries.lock_session_for_tools` takes it) and commit soon: the lock is
    what makes the counts read here include every earlier grant.

    Returns:
        ``(None, started)`` when granted, else ``(tool_budget_exhausted or
        too_many_concurrent_tools, started)``; ``started``: how many of the session's calls
        have been started, this one included if granted.
    """
    started, running = (
        await s.execute(
            _COUNTS,
            {"b_session_id": session_id, "b_fresh_after": utcnow() - STALE_RUNNING_AFTER},
        )
    ).one()
    started, running = int(started or 0), int(running or 0)
    if started >= limits.max_tool_calls:
        return ToolErrorCode.TOOL_BUDGET_EXHAUSTED, started
    if running >= limits.max_concurrent_tools:
        return ToolErrorCode.TOO_MANY_CONCURRENT_TOOLS, started
    await s.execute(_ALLOW, {"b_session_id": session_id, "b_call_id": call_id})
    return None, started + 1


_CALLS: Final = cast(Table, ToolCall.__table__)
_COUNTS: Final = select(
    # Started calls, and those of them still running (and not debris): one read.
    func.count(),
    func.coalesce(
        func.sum(
            case(
                (
                    and_(
                        _CALLS.c.status == str(ToolCallStatus.RUNNING),
                        _CALLS.c.started_at
                        > bindparam("b_fresh_after", type_=_CALLS.c.started_at.type),
                    ),
                    1,
                ),
                else_=0,
            )
        ),
        0,
    ),
).where(_CALLS.c.session_id == bindparam("b_session_id"), _CALLS.c.decision == ALLOWED)
_ALLOW: Final = (
    update(_CALLS)
    .where(
        _CALLS.c.session_id == bindparam("b_session_id"),
        _CALLS.c.call_id == bindparam("b_call_id"),
    )
    .values(decision=ALLOWED)
)
