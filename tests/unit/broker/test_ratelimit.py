"""The token bucket: burst, refill, the wait it reports, and bounded memory."""

from __future__ import annotations

import pytest

from broker.auth.ratelimit import TokenBucketLimiter
from broker.errors import RateLimitedError


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refill_at_the_rate() -> None:
    clock = FakeClock()
    limiter = TokenBucketLimiter(60, burst=3, clock=clock)  # one token a second
    assert [limiter.take("k") for _ in range(3)] == [None, None, None]
    assert limiter.take("k") == pytest.approx(1.0)
    clock.now += 0.5
    assert limiter.take("k") == pytest.approx(0.5)  # a refusal spends nothing
    clock.now += 0.5
    assert limiter.take("k") is None
    assert limiter.take("k") == pytest.approx(1.0)


def test_refill_never_exceeds_the_burst() -> None:
    clock = FakeClock()
    limiter = TokenBucketLimiter(60, burst=2, clock=clock)
    limiter.take("k")
    clock.now += 3600
    assert [limiter.take("k") for _ in range(3)][:2] == [None, None]
    assert limiter.take("k") is not None


def test_keys_have_their_own_buckets() -> None:
    limiter = TokenBucketLimiter(1, burst=1, clock=FakeClock())
    assert limiter.take("a") is None and limiter.take("b") is None
    assert limiter.take("a") == pytest.approx(60.0)


def test_zero_rate_disables() -> None:
    limiter = TokenBucketLimiter(0, burst=1, clock=FakeClock())
    assert not limiter.enabled
    assert all(limiter.take("k") is None for _ in range(1000))
    assert len(limiter) == 0


def test_refilled_buckets_are_dropped() -> None:
    """A bucket that has refilled is the same as none: idle keys cost no memory."""
    clock = FakeClock()
    limiter = TokenBucketLimiter(60, burst=2, clock=clock)
    for key in ("a", "b", "c"):
        limiter.take(key)
    assert len(limiter) == 3
    clock.now += 1.0  # each bucket is back to its burst of 2
    limiter.take("d")
    assert len(limiter) == 1


def test_memory_is_capped_least_recently_used_first() -> None:
    clock = FakeClock()
    limiter = TokenBucketLimiter(1, burst=1, max_keys=100, clock=clock)
    for i in range(1000):
        limiter.take(f"key{i}")
    assert len(limiter) == 100
    assert limiter.take("key999") is not None  # recent: still limited
    assert limiter.take("key0") is None  # evicted long ago: starts full again


@pytest.mark.parametrize(("rate", "burst"), [(-1, 1), (1, 0)])
def test_bad_parameters(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucketLimiter(rate, burst)


@pytest.mark.parametrize(("wait", "header"), [(0.01, "1"), (1.0, "1"), (1.2, "2"), (59.9, "60")])
def test_retry_after_is_whole_seconds_rounded_up(wait: float, header: str) -> None:
    error = RateLimitedError("rate_limited", "slow down", retry_after=wait)
    assert error.headers == {"Retry-After": header}
    assert error.extensions["retry_after"] == int(header)
