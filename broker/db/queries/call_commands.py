"""Actions on a call asked of the instance that owns it (the rows; NOTIFY only wakes)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from broker.db.dialect import dialect_name
from broker.db.models import CallCommand, CallCommandStatus, utcnow


async def queue_command(
    s: AsyncSession, session_id: str, owner_id: str, kind: str, payload: dict[str, Any]
) -> int:
    row = CallCommand(
        session_id=session_id,
        owner_id=owner_id,
        kind=kind,
        payload=payload,
        status=CallCommandStatus.PENDING,
    )
    s.add(row)
    await s.flush()
    return row.id


async def pending_commands(s: AsyncSession, owner_id: str) -> Sequence[CallCommand]:
    result = await s.scalars(
        select(CallCommand)
        .where(CallCommand.owner_id == owner_id, CallCommand.status == CallCommandStatus.PENDING)
        .order_by(CallCommand.id)
    )
    return result.all()


async def finish_command(
    s: AsyncSession, command_id: int, status: CallCommandStatus, result: dict[str, Any]
) -> bool:
    """Settle a pending command once (``False``: someone settled it already)."""
    done = await s.execute(
        update(CallCommand)
        .where(CallCommand.id == command_id, CallCommand.status == CallCommandStatus.PENDING)
        .values(status=status, result=result)
    )
    return bool(getattr(done, "rowcount", 0))


async def get_command(s: AsyncSession, command_id: int) -> CallCommand | None:
    return await s.get(CallCommand, command_id, populate_existing=True)


async def prune_commands(s: AsyncSession, older_than_s: float) -> None:

    await s.execute(
        delete(CallCommand).where(
            CallCommand.created_at < utcnow() - timedelta(seconds=older_than_s)
        )
    )


async def notify(s: AsyncSession, channel: str, payload: str) -> None:
    """``NOTIFY`` on PostgreSQL (delivered at commit); nothing elsewhere (one process)."""
    if dialect_name(s) == "postgresql":
        await s.execute(
            text("SELECT pg_notify(:channel, :payload)"), {"channel": channel, "payload": payload}
        )
