"""Token buckets per key (e.g. per API key for session creation), and their interface.

:class:`RateLimiter` is what the routes spend from. :class:`TokenBucketLimiter` keeps the
buckets in this process's memory: right on SQLite, where the broker is one process (and a take
costs no I/O). Several instances on one PostgreSQL database share their buckets through it
instead (:mod:`broker.auth.shared_ratelimit`), so a limit holds across them rather than
becoming ``rate x instances``; ``RateLimits`` there picks one or the other by the database.

Memory is bounded: a bucket that has refilled holds no state worth keeping and is dropped, and
past ``max_keys`` the least recently used bucket goes (that key just starts full again).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

DEFAULT_MAX_KEYS: Final = 10_000


class RateLimiter(Protocol):
    """``rate_per_minute`` requests per key on average, up to ``burst`` at once."""

    @property
    def enabled(self) -> bool:
        """``False``: a zero rate, every request passes."""
        ...

    async def take(self, key: str) -> float | None:
        """Spend one token of ``key``'s bucket.

        Returns:
            ``None`` if allowed; otherwise the seconds (> 0) until a token is available
            (nothing is spent on a refusal, so a client that waits that long gets through).
        """
        ...


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBucketLimiter:
    """``rate_per_minute`` requests per key on average, up to ``burst`` at once.

    Args:
        rate_per_minute: the refill rate; ``0`` disables the limiter (every request passes).
        burst: the bucket's capacity (at least 1).
        max_keys: most buckets kept at once.
        clock: monotonic seconds; tests pass a fake.

    Not thread-safe; it lives on the event loop, and :meth:`take` never awaits.
    """

    def __init__(
        self,
        rate_per_minute: float,
        burst: int,
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_minute < 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate must be >= 0, burst and max_keys >= 1")
        self._per_second = rate_per_minute / 60.0
        self._burst = float(burst)
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self._per_second > 0

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float | None:
        """Spend one token of ``key``'s bucket.

        Returns:
            ``None`` if allowed; otherwise the seconds until a token is available (nothing
            is spent on a refusal, so a client that waits that long gets through).
        """
        if not self.enabled:
            return None
        now = self._clock()
        self._evict_idle(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(tokens=self._burst, updated=now)
            self._buckets[key] = bucket
            while len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._refill(bucket, now)
            self._buckets.move_to_end(key)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return (1.0 - bucket.tokens) / self._per_second

    def _refill(self, bucket: _Bucket, now: float) -> None:
        elapsed = max(0.0, now - bucket.updated)
        bucket.tokens = min(self._burst, bucket.tokens + elapsed * self._per_second)
        bucket.updated = now

    def _evict_idle(self, now: float) -> None:
        # The front of the LRU order is the longest idle: once it has refilled it is the same
        # as no bucket at all. Stops at the first one still draining, so this is amortised O(1).
        while self._buckets:
            key, oldest = next(iter(self._buckets.items()))
            self._refill(oldest, now)
            if oldest.tokens < self._burst:
                return
            del self._buckets[key]


class LocalRateLimiter:
    """A :class:`TokenBucketLimiter` as a :class:`RateLimiter`: this process's buckets only."""

    def __init__(self, rate_per_minute: float, burst: int) -> None:
        self._buckets = TokenBucketLimiter(rate_per_minute, burst)

    @property
    def enabled(self) -> bool:
        return self._buckets.enabled

    async def take(self, key: str) -> float | None:
        # Never awaits: a refusal costs no I/O.
        return self._buckets.take(key)
