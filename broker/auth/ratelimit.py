"""An in-memory token bucket per key (e.g. per API key for session creation).

Per process: with several broker replicas each enforces its own budget, so the effective
limit is ``rate x replicas`` (acceptable for an abuse brake; a shared store is not worth it here).
Memory is bounded: a bucket that has refilled holds no state worth keeping and is dropped, and
past ``max_keys`` the least recently used bucket goes (that key just starts full again).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

DEFAULT_MAX_KEYS: Final = 10_000


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
