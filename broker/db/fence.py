"""Fencing: an owner's writes about a call commit only while it still holds the call's lease.

A call is owned by one broker instance at a time, through its ``call_leases`` row (owner,
fencing ``token``, ``expires_at`` on the database's clock). Everything an owner runs for the
call (its sideband task, the leash, the duration backstop, tool runs) runs inside
:func:`fenced`, and every transaction committed there first re-reads that row, locked
``FOR SHARE``: if another instance took the call meanwhile (the token changed) or the lease
ran out (a paused or partitioned owner), the commit fails with :class:`LeaseLostError` and
nothing is written. The share lock makes a takeover (an ``UPDATE`` of the row) wait for the
commit, so a write either lands while the lease holds or not at all.

Where the broker's writes about a call do not run in its context (the process's event-log
writer batches every call's events) they check fences explicitly (:func:`lost_fences`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass

from sqlalchemy import Select, event, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from broker.db.dialect import db_now
from broker.db.models import CallLease


@dataclass(frozen=True)
class Fence:
    """What an owner must still hold for its writes about ``session_id`` to count."""

    session_id: str
    owner_id: str
    token: int


class LeaseLostError(Exception):
    """This instance no longer owns the call: nothing about it may be written or sent."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"this broker instance no longer owns the call of session {session_id}")
        self.session_id = session_id


CURRENT_FENCE: ContextVar[Fence | None] = ContextVar("broker_call_fence", default=None)
"""The fence of the call the running task works for (``None``: not an owner's task)."""


@contextlib.contextmanager
def fenced(fence: Fence | None) -> Iterator[None]:
    """Run the block (and every task it creates: they copy the context) under ``fence``."""
    reset = CURRENT_FENCE.set(fence)
    try:
        yield
    finally:
        CURRENT_FENCE.reset(reset)


def unfence() -> None:
    """This task works for no one call (a process-wide writer started from a call's task)."""
    CURRENT_FENCE.set(None)


def _holding(fence: Fence, dialect: str) -> Select[int]:
    return (
        select(CallLease.token)
        .where(
            CallLease.session_id == fence.session_id,
            CallLease.owner_id == fence.owner_id,
            CallLease.token == fence.token,
            CallLease.expires_at > db_now(dialect),
        )
        .with_for_update(read=True)
    )


async def check_fence(s: AsyncSession, fence: Fence) -> None:
    """Raise :class:`LeaseLostError` unless ``fence`` still holds (locks the row till commit)."""
    dialect = s.get_bind().dialect.name
    if (await s.execute(_holding(fence, dialect))).first() is None:
        raise LeaseLostError(fence.session_id)


async def lost_fences(s: AsyncSession, fences: Iterable[Fence]) -> set[str]:
    """The session ids among ``fences`` whose fence no longer holds (one statement)."""
    wanted = {(f.session_id, f.owner_id, f.token) for f in fences}
    if not wanted:
        return set()
    dialect = s.get_bind().dialect.name
    held = await s.execute(
        select(CallLease.session_id, CallLease.owner_id, CallLease.token)
        .where(
            CallLease.session_id.in_({key[0] for key in wanted}),
            CallLease.expires_at > db_now(dialect),
        )
        .with_for_update(read=True)
    )
    holding = {(row.session_id, row.owner_id, row.token) for row in held}
    return {key[0] for key in wanted - holding}


class FencedSession(Session):
    """The sessions the app's sessionmaker makes: commits check the current fence."""


@event.listens_for(FencedSession, "before_commit")
def _check_before_commit(session: Session) -> None:
    fence = CURRENT_FENCE.get()
    if fence is None:
        return
    dialect = session.get_bind().dialect.name
    if session.execute(_holding(fence, dialect)).first() is None:
        raise LeaseLostError(fence.session_id)


__all__ = [
    "CURRENT_FENCE",
    "Fence",
    "FencedSession",
    "LeaseLostError",
    "check_fence",
    "fenced",
    "lost_fences",
    "unfence",
]
