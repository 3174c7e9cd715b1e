"""The tool kill switch's writes: a tool switched off, or on again, for every session at once.

The dispatcher reads the switch from the database for each call it decides, so a switch
takes effect in every broker process from the next call on (``tool_disabled``); calls already
running finish.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.db import queries
from broker.db.models import DisabledTool


async def switch_off(
    sessionmaker: async_sessionmaker[AsyncSession], tool: str, by_key: str, reason: str | None
) -> DisabledTool:
    """Switch ``tool`` off; a second switch keeps the first time and updates who and why."""
    async with sessionmaker.begin() as s:
        return await queries.disable_tool(s, tool, by_key, reason)


async def switch_on(sessionmaker: async_sessionmaker[AsyncSession], tool: str) -> bool:
    """Switch ``tool`` back on; whether it was off."""
    async with sessionmaker.begin() as s:
        return await queries.enable_tool(s, tool)
