"""Queries over ``rate_buckets``: token buckets every broker instance spends from (PostgreSQL).

A take is one statement, atomic however many processes take at once: an upsert that refills
the bucket from the time elapsed on the database's clock and spends a token only if a whole
one is there. Its row lock orders concurrent takes of one key, and each sees the level the
one before it left, so a burst of ``N`` grants ``N`` across all instances together.

PostgreSQL only (``ON CONFLICT … DO UPDATE … WHERE``, ``least``/``greatest``,
``clock_timestamp()``): SQLite is one process, whose buckets stay in memory
(:class:`broker.auth.ratelimit.TokenBucketLimiter`).
"""

from __future__ import annotations

from typing import Any, Final
from typing import cast as typed

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    Float,
    Table,
    bindparam,
    cast,
    delete,
    func,
    select,
)
from sqlalchemy.dialects import postgresql

from broker.db.models import RateBucket
from broker.db.queries._common import Executor

RATE_BUCKETS: Final = typed(Table, RateBucket.__table__)

MIN_WAIT_S: Final = 0.001
"""The wait reported for a refusal whose bucket refilled (or went) before it was read back."""

_NOW: Final = cast(func.extract("epoch", func.clock_timestamp()), Float)
"""The database's clock when read, not the transaction's start (``now()``): every instance
refills by the same clock, whatever its host's says."""
_RATE: Final = bindparam("b_rate", type_=Float)
"""Tokens per second."""
_BURST: Final = bindparam("b_burst", type_=Float)


def _refilled(now: ColumnElement[float]) -> ColumnElement[float]:
    """The stored level refilled up to ``now``.

    Never past the burst, and never drained by a clock that reads earlier than the last write
    (a take that waited for the row's lock, a database clock stepped back).
    """
    elapsed = func.greatest(0.0, now - RATE_BUCKETS.c.updated_at, type_=Float)
    return func.least(_BURST, RATE_BUCKETS.c.tokens + elapsed * _RATE, type_=Float)


def _take_statement() -> Any:
    insert = postgresql.insert(RATE_BUCKETS).values(
        key=bindparam("b_key"), tokens=_BURST - 1.0, updated_at=_NOW
    )
    # ``excluded.updated_at`` is the statement's one reading of the clock.
    now = insert.excluded.updated_at
    refilled = _refilled(now)
    return insert.on_conflict_do_update(
        index_elements=[RATE_BUCKETS.c.key],
        set_={
            "tokens": refilled - 1.0,
            # Never backwards: a take that read the clock before another took the row's lock
            # must not hand the next one the refill of that interval a second time.
            "updated_at": func.greatest(RATE_BUCKETS.c.updated_at, now, type_=Float),
        },
        # No whole token: no write at all. The stored level and time still say everything,
        # refill included, and a refused flood leaves no dead row versions behind.
        where=refilled >= 1.0,
    ).returning(RATE_BUCKETS.c.tokens)


_TAKE: Final = _take_statement()
"""Built once: a row back means a token was spent (a new key starts full, less this one)."""
_LEVEL: Final = select(_refilled(_NOW)).where(RATE_BUCKETS.c.key == bindparam("b_key"))


async def take_rate_token(s: Executor, key: str, per_second: float, burst: float) -> float | None:
    """Spend one token of ``key``'s bucket (``burst`` at most, ``per_second`` refill).

    Returns:
        ``None`` if a token was spent; otherwise the seconds until one is there (nothing is
        spent on a refusal). The wait is read back in a second statement: it only advises
        the client, while the decision is the upsert's alone.
    """
    params = {"b_key": key, "b_rate": per_second, "b_burst": burst}
    if (await s.execute(_TAKE, params)).first() is not None:
        return None
    level = (await s.execute(_LEVEL, params)).scalar_one_or_none()
    if level is None:
        return MIN_WAIT_S
    return max((1.0 - level) / per_second, MIN_WAIT_S)


async def prune_rate_buckets(s: Executor, prefix: str, idle_s: float) -> int:
    """Delete the buckets under ``prefix`` untouched for ``idle_s`` seconds; how many.

    A bucket left alone for as long as it takes to refill from empty is full, the same as
    no row at all: its key starts full again on its next take.
    """
    result = await s.execute(
        delete(RATE_BUCKETS).where(
            RATE_BUCKETS.c.key.startswith(prefix, autoescape=True),
            RATE_BUCKETS.c.updated_at < _NOW - idle_s,
        )
    )
    assert isinstance(result, CursorResult)
    return result.rowcount
