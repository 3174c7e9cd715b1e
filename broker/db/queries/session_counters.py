"""The ``sessions`` row's event-log counters and token-usage totals.

Both are increments folded in by the transaction that stores the events
(:func:`broker.db.queries.session_events.add_events`), so concurrent writers add up and the
session list never scans ``session_events``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import BigInteger, DateTime, bindparam, case, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from broker.db.models import SessionRow
from broker.db.queries._common import SESSIONS
from broker.db.usage import USAGE_FIELDS, Usage, column


@dataclass(frozen=True)
class LogTally:
    """What an event-log writer adds to a session's coalescible counters with one write."""

    coalescible: int = 0
    """Coalescible events among the rows written."""
    coalescible_bytes: int = 0
    """Their payloads' size (compact JSON)."""
    dropped: int = 0
    """Coalescible events dropped at the session's cap since the writer's last write."""


_ADD_USAGE: Final = (
    update(SESSIONS)
    .where(SESSIONS.c.id == bindparam("b_session_id"))
    .values(
        {
            column(name): SESSIONS.c[column(name)] + bindparam(f"b_{name}", type_=BigInteger)
            for name in USAGE_FIELDS
        }
    )
)
"""Built once: the increments are bind parameters, not a new expression per flush."""

_LOG_COUNTERS: Final = (
    "events_stored",
    "events_errors",
    "events_coalescible",
    "events_coalescible_bytes",
    "events_dropped",
)
_LAST_AT: Final = bindparam("b_last_at", type_=DateTime(timezone=True))
_FOLD_EVENTS: Final = (
    update(SESSIONS)
    .where(SESSIONS.c.id == bindparam("b_session_id"))
    .values(
        {
            **{
                name: SESSIONS.c[name] + bindparam(f"b_{name}", type_=BigInteger)
                for name in _LOG_COUNTERS
            },
            **{
                column(name): SESSIONS.c[column(name)] + bindparam(f"b_{name}", type_=BigInteger)
                for name in USAGE_FIELDS
            },
            # Never backwards: two writers (the recorder, a broker event) may commit out of
            # order. A NULL ``b_last_at`` (a write of counts only) keeps the stored time.
            "last_event_at": case(
                (
                    or_(
                        SESSIONS.c.last_event_at.is_(None),
                        SESSIONS.c.last_event_at < _LAST_AT,
                    ),
                    _LAST_AT,
                ),
                else_=SESSIONS.c.last_event_at,
            ),
        }
    )
)
"""The counters and the usage of one write in one statement, built once."""


def event_count_params(
    session_id: str,
    *,
    stored: int = 0,
    errors: int = 0,
    last_at: datetime | None = None,
    usage: Usage | None = None,
    tally: LogTally | None = None,
) -> dict[str, Any]:
    """The parameters of one session's fold (:func:`fold_event_counts`)."""
    tally = tally or LogTally()
    usage = usage or Usage()
    params: dict[str, Any] = {f"b_{name}": getattr(usage, name) for name in USAGE_FIELDS}
    params.update(
        b_session_id=session_id,
        b_events_stored=stored,
        b_events_errors=errors,
        b_events_coalescible=tally.coalescible,
        b_events_coalescible_bytes=tally.coalescible_bytes,
        b_events_dropped=tally.dropped,
        b_last_at=last_at,
    )
    return params


async def fold_event_counts(
    s: AsyncSession,
    session_id: str,
    *,
    stored: int = 0,
    errors: int = 0,
    last_at: datetime | None = None,
    usage: Usage | None = None,
    tally: LogTally | None = None,
) -> None:
    """Add one write's events to the session's counters and usage.

    Increments: concurrent writers add up.
    """
    params = event_count_params(
        session_id, stored=stored, errors=errors, last_at=last_at, usage=usage, tally=tally
    )
    await s.execute(_FOLD_EVENTS, params)


async def fold_many_event_counts(s: AsyncSession, params: Sequence[dict[str, Any]]) -> None:
    """:func:`fold_event_counts` for several sessions in one batch (:func:`event_count_params`).

    Sorted by session id: two transactions folding overlapping sessions lock their rows in
    the same order, so they cannot deadlock each other.
    """
    if params:
        await s.execute(_FOLD_EVENTS, sorted(params, key=lambda p: str(p["b_session_id"])))


async def coalescible_spent(s: AsyncSession, session_id: str) -> tuple[int, int]:
    """The session's coalescible events stored so far: ``(count, bytes)`` (0s if no row)."""
    row = (
        await s.execute(
            select(SessionRow.events_coalescible, SessionRow.events_coalescible_bytes).where(
                SessionRow.id == session_id
            )
        )
    ).first()
    return (int(row[0]), int(row[1])) if row is not None else (0, 0)


async def add_session_usage(s: AsyncSession, session_id: str, usage: Usage) -> None:
    """Add ``usage`` to the session's totals (an increment: concurrent writers add up)."""
    params: dict[str, Any] = {f"b_{name}": getattr(usage, name) for name in USAGE_FIELDS}
    params["b_session_id"] = session_id
    await s.execute(_ADD_USAGE, params)


async def usage_by_key(s: AsyncSession) -> dict[str, Usage]:
    """Every API key's usage: the sum over its sessions, live ones included."""
    sums = [func.coalesce(func.sum(getattr(SessionRow, column(n))), 0) for n in USAGE_FIELDS]
    result = await s.execute(
        select(SessionRow.owner_key_id, *sums).group_by(SessionRow.owner_key_id)
    )
    return {
        key_id: Usage(**dict(zip(USAGE_FIELDS, (int(v) for v in values), strict=True)))
        for key_id, *values in result
    }
