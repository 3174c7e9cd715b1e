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
concurrently) could both see room for one. :func:`grant` first writes to the session row, which
serializes grants per session: PostgreSQL holds that row's lock until commit; SQLite holds its
single write lock. The counts read after it therefore include every earlier grant.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Final

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from broker.db.models import SessionRow, ToolCall, ToolCallStatus, utcnow
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

    @classmethod
    def from_row(cls, row: SessionRow) -> ToolLimits:
        return cls(row.max_tool_calls, row.max_concurrent_tools, row.max_argument_bytes)


async def grant(
    s: AsyncSession, session_id: str, call_id: str, limits: ToolLimits
) -> ToolErrorCode | None:
    """Mark the call as started (``decision = allowed``) if the session has room; else say why.

    Call inside a transaction (``sessionmaker.begin()``) and nothing else in it: the session
    row stays locked until it commits.

    Returns:
        ``None`` when granted; ``tool_budget_exhausted`` or ``too_many_concurrent_tools``.
    """
    # A no-op write that takes the per-session lock (see the module docstring).
    await s.execute(
        update(SessionRow)
        .where(SessionRow.id == session_id)
        .values(max_tool_calls=SessionRow.max_tool_calls)
    )
    started = (
        select(func.count())
        .select_from(ToolCall)
        .where(ToolCall.session_id == session_id, ToolCall.decision == ALLOWED)
    )
    if (await s.scalar(started) or 0) >= limits.max_tool_calls:
        return ToolErrorCode.TOOL_BUDGET_EXHAUSTED
    running = started.where(
        ToolCall.status == ToolCallStatus.RUNNING,
        ToolCall.started_at > utcnow() - STALE_RUNNING_AFTER,
    )
    if (await s.scalar(running) or 0) >= limits.max_concurrent_tools:
        return ToolErrorCode.TOO_MANY_CONCURRENT_TOOLS
    await s.execute(
        update(ToolCall)
        .where(ToolCall.session_id == session_id, ToolCall.call_id == call_id)
        .values(decision=ALLOWED)
    )
    return None
