"""Rate limits that hold across broker instances: token buckets in the PostgreSQL database.

Several brokers behind one load balancer share a database (issue 17); a client's requests
land on any of them, so a per-process bucket would let it through ``instances`` times faster.
:class:`SharedTokenBucketLimiter` keeps each bucket as a row of ``rate_buckets`` and spends
from it with one atomic statement (:func:`broker.db.queries.take_rate_token`), refilled by
the database's clock, so every instance spends from the same budget.

The price is a statement per limited request: a refusal costs a round trip to the database
instead of nothing. SQLite, one process by construction, keeps the in-memory buckets
(:class:`~broker.auth.ratelimit.LocalRateLimiter`, no I/O); :class:`RateLimits` chooses by
the database the app runs on.

Rows are bounded as the in-memory buckets are: a key is only ever a verified session or API
key, and each limiter now and then deletes its buckets that have refilled
(:data:`PRUNE_EVERY_S`), which hold nothing a missing row does not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.auth.ratelimit import LocalRateLimiter, RateLimiter
from broker.db import queries

logger = logging.getLogger(__name__)

PRUNE_EVERY_S: Final = 60.0
"""How often each limiter (per process) deletes its refilled buckets."""
PRUNE_SLACK_S: Final = 60.0
"""Beyond the refill time, before a bucket counts as refilled (clock reads, a slow take)."""


class SharedTokenBucketLimiter:
    """``rate_per_minute`` per key on average, up to ``burst`` at once, across all instances.

    Args:
        engine: a PostgreSQL engine.
        name: the limiter's own part of each bucket's key (``offer`` → ``offer:<key>``):
            limiters on one table never share a bucket.
        rate_per_minute: the refill rate; ``0`` disables the limiter (no database work).
        burst: the bucket's capacity (at least 1).
        clock: monotonic seconds for the pruning schedule only; tests pass a fake.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        name: str,
        rate_per_minute: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_minute < 0 or burst < 1:
            raise ValueError("rate must be >= 0, burst >= 1")
        if engine.dialect.name != "postgresql":
            raise ValueError(f"shared rate limits need PostgreSQL, not {engine.dialect.name}")
        # Autocommit: the take is one statement, atomic by itself, so no BEGIN/COMMIT round
        # trips around it (the same pool; the option is per connection checkout).
        self._engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._prefix = f"{name}:"
        self._per_second = rate_per_minute / 60.0
        self._burst = float(burst)
        self._clock = clock
        self._next_prune = clock() + PRUNE_EVERY_S

    @property
    def enabled(self) -> bool:
        return self._per_second > 0

    @property
    def idle_s(self) -> float:
        """Untouched this long, a bucket has refilled from empty: it may go."""
        return self._burst / self._per_second + PRUNE_SLACK_S

    async def take(self, key: str) -> float | None:
        """Spend one token of ``key``'s shared bucket (see :meth:`RateLimiter.take`).

        Raises:
            SQLAlchemyError: the database failed; the request fails as any that needs it.
        """
        if not self.enabled:
            return None
        async with self._engine.connect() as conn:
            wait = await queries.take_rate_token(
                conn, self._prefix + key, self._per_second, self._burst
            )
        if self._clock() >= self._next_prune:
            await self._prune_now()
        return wait

    async def prune(self) -> int:
        """Delete this limiter's refilled buckets now; how many."""
        async with self._engine.connect() as conn:
            return await queries.prune_rate_buckets(conn, self._prefix, self.idle_s)

    async def _prune_now(self) -> None:
        # The schedule moves first: a failing delete is tried again a period later, not at
        # every request meanwhile.
        self._next_prune = self._clock() + PRUNE_EVERY_S
        try:
            await self.prune()
        except SQLAlchemyError:
            # Housekeeping: the request already has its answer, and the rows wait for the
            # next prune (any instance's).
            logger.warning("pruning the %s rate buckets failed", self._prefix, exc_info=True)


class RateLimits:
    """Makes the app's :class:`RateLimiter` s; one per app (``app_state.RATE_LIMITS``).

    Args:
        engine: the app's engine when its buckets are shared (PostgreSQL); ``None`` keeps
            them in memory. :meth:`for_engine` decides by the engine's dialect.
    """

    def __init__(self, engine: AsyncEngine | None = None) -> None:
        self._engine = engine

    @classmethod
    def for_engine(cls, engine: AsyncEngine) -> RateLimits:
        return cls(engine if engine.dialect.name == "postgresql" else None)

    @property
    def shared(self) -> bool:
        return self._engine is not None

    def limiter(self, name: str, rate_per_minute: float, burst: int) -> RateLimiter:
        """The limiter called ``name`` (its buckets' key prefix when shared)."""
        if self._engine is None or rate_per_minute == 0:
            return LocalRateLimiter(rate_per_minute, burst)
        return SharedTokenBucketLimiter(self._engine, name, rate_per_minute, burst)
