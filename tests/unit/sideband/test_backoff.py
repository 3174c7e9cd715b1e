"""The one jittered exponential backoff (sideband/backoff.py), as both its users set it."""

from __future__ import annotations

from itertools import islice

import pytest

from sideband.backoff import backoff_delay, backoff_delays


def test_the_wait_doubles_from_the_first_up_to_the_cap() -> None:
    top = lambda: 1.0  # noqa: E731 - the jitter pinned at its high end: the nominal wait
    assert [backoff_delay(n, 0.1, 2.0, jitter=0.25, rand=top) for n in range(1, 8)] == [
        pytest.approx(x) for x in (0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0)
    ]


@pytest.mark.parametrize("jitter", [0.0, 0.25, 0.5, 1.0])
def test_the_jitter_takes_off_at_most_its_share(jitter: float) -> None:
    low = backoff_delay(4, 1.0, 100.0, jitter=jitter, rand=lambda: 0.0)
    high = backoff_delay(4, 1.0, 100.0, jitter=jitter, rand=lambda: 1.0)
    assert (low, high) == (pytest.approx(8.0 * (1 - jitter)), 8.0)
    assert low <= backoff_delay(4, 1.0, 100.0, jitter=jitter, rand=lambda: 0.5) <= high


def test_a_long_run_of_failures_stays_at_the_cap() -> None:
    assert backoff_delay(10_000, 1.0, 10.0, jitter=0.5, rand=lambda: 0.5) == 7.5


def test_the_series_is_the_delay_after_each_attempt_in_turn() -> None:
    draws = iter([1.0, 0.0, 1.0, 0.0, 1.0])
    series = list(islice(backoff_delays(0.1, 2.0, jitter=0.25, rand=lambda: next(draws)), 5))
    assert series == [pytest.approx(x) for x in (0.1, 0.2 * 0.75, 0.4, 0.8 * 0.75, 1.6)]


def test_real_randomness_stays_within_the_bounds() -> None:
    for delay in islice(backoff_delays(0.1, 2.0, jitter=0.25), 200):
        assert 0.075 <= delay <= 2.0
