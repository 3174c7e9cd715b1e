"""Jittered exponential backoff: the one rule for every retry loop that waits between tries.

Here, not in ``broker``, because the sideband's reconnect uses it and ``sideband`` never
imports ``broker``; the broker's own retries (webhook deliveries) import it from here.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator


def backoff_delay(
    attempt: int,
    first: float,
    cap: float,
    *,
    jitter: float,
    rand: Callable[[], float] = random.random,
) -> float:
    """The wait after failed attempt ``attempt`` (1-based).

    ``first·2^(attempt-1)``, capped at ``cap``, then cut by a random share of up to
    ``jitter`` of it (0.5: anywhere from half to all of it), so that many retriers that
    failed together spread out.

    Args:
        attempt: how many attempts have failed so far (1 or more).
        first: the nominal wait after the first failure.
        cap: the longest nominal wait.
        jitter: the largest share of the wait taken off, in [0, 1].
        rand: a source of floats in [0, 1) (tests pin it).
    """
    # The exponent is bounded so that a long run of failures never overflows the float.
    ceiling = min(cap, first * 2.0 ** min(attempt - 1, 32))
    low = ceiling * (1.0 - jitter)
    return low + rand() * (ceiling - low)


def backoff_delays(
    first: float, cap: float, *, jitter: float, rand: Callable[[], float] = random.random
) -> Iterator[float]:
    """:func:`backoff_delay` after attempt 1, 2, 3, …: an endless series of waits."""
    attempt = 1
    while True:
        yield backoff_delay(attempt, first, cap, jitter=jitter, rand=rand)
        attempt += 1
