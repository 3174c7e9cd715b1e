"""Queries over ``disabled_tools``: the operators' kill switches.

The hot path reads a switch inside the claim itself
(:func:`broker.db.queries.tool_calls.claim_tool_call_returning`).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from broker.db.models import DisabledTool, utcnow
from broker.db.queries._common import changed


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
    return changed(await s.execute(delete(DisabledTool).where(DisabledTool.tool == tool)))


async def disabled_tools(s: AsyncSession) -> Sequence[DisabledTool]:
    return (await s.scalars(select(DisabledTool).order_by(DisabledTool.tool))).all()
