"""Erasing what was said in one ended session, keeping that it happened.

**What is erased** (what people said, and what a tool was told or answered about them):

- the event log (``session_events``): every provider frame, hence the transcript and the
  event stream, which are built from it;
- each tool call's ``arguments``, ``output`` and ``error`` (replaced by markers:
  :data:`~broker.db.queries.erasure.ERASED_JSON`, ``erased``) and their seals;
- the session's ``instructions`` (``""``: they may name the person) and ``metadata`` (``{}``:
  an app's user ids live there);
- commands asked of its call (``call_commands``: instructions, relayed tool arguments);
- the bodies of its audit records (:meth:`AuditTrail.erase_session`, which records
  ``audit.erased``; the chain keeps every header and hash, so it still verifies).

**What stays**, as a tombstone: the session row's state, model, voice, tool names, limits,
times, end reason, usage and event counters, ``erased_at``; each tool call's tool, status,
decision, path and times; the audit headers (who did what, when). A ``session.erased`` audit
record by the actor closes it, with what was erased.

**Order and races.** The content goes first, in short transactions (a batch of events at a
time, on SQLite at the write gate's routine priority, so live calls' writes go before it),
then the audit bodies, then the row is marked (``erased_at``) by a conditional update. Every
step is idempotent: an erasure interrupted before the mark is finished by the next sweep or
``DELETE``; of two erasers racing (two instances' sweeps, a sweep and a ``DELETE``) one marks
the row and records ``session.erased`` (the other may add a second ``audit.erased``, which
the chain takes like any other). A session that is not ``ended`` or ``failed`` is never
touched.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.audit import trail
from broker.audit.records import AuditEntry, AuditKind
from broker.audit.trail import AuditTrail
from broker.db import queries
from broker.db.models import TERMINAL_STATES, SessionState, utcnow
from broker.db.queries import erasure as erasure_queries
from broker.db.write_gate import WriteGate
from broker.errors import ConflictError, NotFoundError

logger = logging.getLogger(__name__)

EVENT_BATCH: Final = 500
"""Event-log rows deleted per transaction."""
REASON_CHARS: Final = 200


@dataclass(frozen=True)
class Erasure:
    """What one erasure did: its own counts (a second erasure finds little or nothing)."""

    session_id: str
    erased_at: datetime
    events: int
    """Event-log rows deleted."""
    tool_calls: int
    """Tool calls whose arguments, outputs or errors were erased."""
    audit_bodies: int
    """Audit record bodies erased."""
    already: bool
    """The session had been erased before (by another eraser, or an earlier request)."""


async def erase_session_content(
    sessionmaker: async_sessionmaker[AsyncSession],
    audit: AuditTrail,
    session_id: str,
    reason: str,
    actor: str,
    *,
    now: Callable[[], datetime] = utcnow,
) -> Erasure:
    """Erase an ended session's content (see the module docstring); idempotent.

    Args:
        sessionmaker: the broker's database.
        audit: this instance's audit trail (erases the audit bodies, signs the erasure).
        session_id: the session.
        reason: why (``retention``, a person's request), for the audit records.
        actor: who (``Actor.BROKER`` for retention, ``Actor.key(id)`` for the API).
        now: the clock ``erased_at`` is read from.

    Raises:
        NotFoundError: ``session_not_found``.
        ConflictError: ``session_live``: the session has not ended (hang it up first).
    """
    async with sessionmaker() as s:
        row = await queries.get_session_row(s, session_id)
    if row is None:
        raise NotFoundError("session_not_found", "no such session")
    if SessionState(row.state) not in TERMINAL_STATES:
        raise ConflictError(
            "session_live", "the session has not ended: hang it up first, then erase it"
        )
    reason = reason[:REASON_CHARS]
    events = await _delete_events(sessionmaker, session_id)
    async with _routine_write(sessionmaker) as s:
        calls = await erasure_queries.blank_tool_calls(s, session_id)
        await erasure_queries.delete_call_commands(s, session_id)
    if row.erased_at is not None:
        # Marked before: its audit bodies went then. Whatever was left (an event written
        # late) went above; nothing is recorded twice.
        return Erasure(session_id, row.erased_at, events, calls, 0, already=True)
    bodies = await audit.erase_session(session_id, reason, actor)
    when = now()
    async with _routine_write(sessionmaker) as s:
        marked = await erasure_queries.mark_erased(s, session_id, when)
        if marked:
            await trail.add(
                s,
                AuditEntry(
                    AuditKind.SESSION_ERASED,
                    actor,
                    {
                        "reason": reason,
                        "events": events,
                        "tool_calls": calls,
                        "audit_bodies": bodies,
                    },
                    session_id=session_id,
                ),
            )
    if not marked:
        async with sessionmaker() as s:
            row = await queries.get_session_row(s, session_id)
        erased_at = when if row is None or row.erased_at is None else row.erased_at
        return Erasure(session_id, erased_at, events, calls, bodies, already=True)
    logger.info(
        "session content erased session_id=%s reason=%s events=%d tool_calls=%d audit_bodies=%d",
        session_id,
        reason,
        events,
        calls,
        bodies,
    )
    return Erasure(session_id, when, events, calls, bodies, already=False)


async def _delete_events(sessionmaker: async_sessionmaker[AsyncSession], session_id: str) -> int:
    total = 0
    while True:
        async with _routine_write(sessionmaker) as s:
            deleted = await erasure_queries.delete_events(s, session_id, EVENT_BATCH)
        total += deleted
        if deleted < EVENT_BATCH:
            return total


@contextlib.asynccontextmanager
async def _routine_write(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """One short write transaction; on SQLite after the live calls' urgent writes."""
    async with WriteGate.of(sessionmaker).turn(urgent=False), sessionmaker.begin() as s:
        yield s
