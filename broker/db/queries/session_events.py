"""Queries over ``session_events``: the event log's rows."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, cast

from sqlalchemy import Table, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from broker.db.models import SessionEvent, utcnow
from broker.db.queries.session_counters import (
    LogTally,
    event_count_params,
    fold_event_counts,
    fold_many_event_counts,
)
from broker.db.usage import Usage

_INSERT_EVENTS: Final = insert(cast(Table, SessionEvent.__table__))


async def next_event_seq(s: AsyncSession, session_id: str) -> int:
    current = await s.scalar(
        select(func.max(SessionEvent.seq)).where(SessionEvent.session_id == session_id)
    )
    return (current or 0) + 1


async def add_events(
    s: AsyncSession,
    rows: Sequence[dict[str, Any]],
    *,
    usage: Usage | None = None,
    tally: LogTally | None = None,
) -> None:
    """Store event-log rows and fold them into their sessions' counters and usage totals.

    In the caller's transaction, each session of ``rows`` gets ``events_stored``,
    ``events_errors`` (provider ``error`` events) and ``last_event_at`` added, and with
    ``usage`` its token totals (one UPDATE per session). Counters and usage ride on the event
    log's batched writes: no write of their own per event, and they always equal the sum over
    the stored events (a batch that is rolled back and retried is folded in once). The writer
    reads the usage out of the provider's ``response.done`` rows
    (:func:`broker.record.usage.usage_of_events`): parsing provider events is not the
    database's job.

    Args:
        s: the caller's session (its transaction).
        rows: ``session_events`` rows, ``seq`` given.
        usage: the token usage the rows report; the rows must then be of one session.
        tally: the writer's coalescible counts; the rows must then be of one session.

    Raises:
        ValueError: ``usage`` or ``tally`` with rows of several sessions.
    """
    if not rows:
        return
    by_session: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_session[row["session_id"]].append(row)
    if (tally is not None or usage is not None) and len(by_session) > 1:
        raise ValueError("a tally or a usage belongs to one session's rows")
    # The session row first, as before this write folded counters: its lock is taken in the
    # same order as every other writer of the row (the dispatcher's session lock).
    for session_id, session_rows in by_session.items():
        await fold_event_counts(
            s,
            session_id,
            stored=len(session_rows),
            errors=sum(1 for r in session_rows if r["type"] == "error" and r["direction"] == "in"),
            last_at=max(r["at"] for r in session_rows),
            usage=usage or Usage(),
            tally=tally or LogTally(),
        )
    await s.execute(_INSERT_EVENTS, list(rows))


@dataclass(frozen=True)
class EventCounts:
    """What one session's counters and usage totals gain: :func:`fold_event_counts`'s terms."""

    stored: int = 0
    errors: int = 0
    last_at: datetime | None = None
    usage: Usage = field(default_factory=Usage)
    tally: LogTally = field(default_factory=LogTally)


@dataclass(frozen=True)
class SessionFold:
    """One session's share of a group commit: its rows, and what its counters gain."""

    session_id: str
    rows: Sequence[dict[str, Any]]
    """``session_events`` rows of this session, ``seq`` given (may be empty: counts only)."""
    counts: EventCounts | None
    """``None``: the rows only; their counts are folded by a later write of the writer's."""


async def store_event_batch(s: AsyncSession, folds: Sequence[SessionFold]) -> None:
    """Store several sessions' event-log rows and fold counts into their session rows.

    The event log's group commit (:mod:`broker.record.event_writer`): one ``UPDATE`` batch
    for the session rows that gain counts (locked in id order, before the rows, as every
    other writer of a session row does), then one ``INSERT`` of every row, in the caller's
    transaction.
    """
    params = [
        event_count_params(
            fold.session_id,
            stored=fold.counts.stored,
            errors=fold.counts.errors,
            last_at=fold.counts.last_at,
            usage=fold.counts.usage,
            tally=fold.counts.tally,
        )
        for fold in folds
        if fold.counts is not None
    ]
    await fold_many_event_counts(s, params)
    rows = [row for fold in folds for row in fold.rows]
    if rows:
        await s.execute(_INSERT_EVENTS, rows)


async def last_event_seqs(s: AsyncSession, session_ids: Sequence[str]) -> dict[str, int]:
    """The last stored ``seq`` of each of these sessions (absent: none stored)."""
    result = await s.execute(
        select(SessionEvent.session_id, func.max(SessionEvent.seq))
        .where(SessionEvent.session_id.in_(set(session_ids)))
        .group_by(SessionEvent.session_id)
    )
    return {session_id: int(seq) for session_id, seq in result}


async def add_broker_event(
    s: AsyncSession,
    session_id: str,
    event: dict[str, Any],
    *,
    tally: LogTally | None = None,
) -> None:
    """Store one broker event as the session's next row, in the caller's transaction.

    Two writers numbering the same ``seq`` clash on the primary key (``IntegrityError``):
    the caller retries with a fresh transaction.
    """
    row = {
        "session_id": session_id,
        "seq": await next_event_seq(s, session_id),
        "direction": "broker",
        "type": str(event["type"]),
        "payload": event,
        "at": utcnow(),
    }
    await add_events(s, [row], tally=tally)


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


async def handed_over_at(s: AsyncSession, session_id: str) -> str | None:
    """The ``last_event_id`` of the session's latest handoff event (``None``: none)."""
    payload = await s.scalar(
        select(SessionEvent.payload)
        .where(
            SessionEvent.session_id == session_id,
            SessionEvent.direction == "broker",
            SessionEvent.type == "broker.sideband_handed_over",
        )
        .order_by(SessionEvent.seq.desc())
        .limit(1)
    )
    if not isinstance(payload, dict):
        return None
    value = payload.get("last_event_id")
    return value if isinstance(value, str) else None
