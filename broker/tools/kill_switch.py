"""The tool kill switch's writes: a tool switched off, or on again, for every session at once.

The dispatcher reads the switch from the database for each call it decides, so a switch
takes effect in every broker process from the next call on (``tool_disabled``); calls already
running finish. Each switch is audited (``ops.tool_disabled`` / ``ops.tool_enabled``, by the
operator's key) in the transaction that flips it.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.audit import trail as audit
from broker.audit.records import Actor, AuditEntry, AuditKind
from broker.db import queries
from broker.db.models import DisabledTool


async def switch_off(
    sessionmaker: async_sessionmaker[AsyncSession], tool: str, by_key: str, reason: str | None
) -> DisabledTool:
    """Switch ``tool`` off; a second switch keeps the first time and updates who and why."""
    async with sessionmaker.begin() as s:
        row = await queries.disable_tool(s, tool, by_key, reason)
        await audit.add(
            s,
            AuditEntry(
                AuditKind.OPS_TOOL_DISABLED,
                Actor.key(by_key),
                {"tool": tool, "reason": reason},
                tool=tool,
            ),
        )
        return row


async def switch_on(sessionmaker: async_sessionmaker[AsyncSession], tool: str, by_key: str) -> bool:
    """Switch ``tool`` back on; whether it was off (audited either way: the operator acted)."""
    async with sessionmaker.begin() as s:
        was_off = await queries.enable_tool(s, tool)
        await audit.add(
            s,
            AuditEntry(
                AuditKind.OPS_TOOL_ENABLED,
                Actor.key(by_key),
                {"tool": tool, "was_disabled": was_off},
                tool=tool,
            ),
        )
        return was_off
