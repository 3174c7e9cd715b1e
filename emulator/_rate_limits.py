"""``rate_limits.updated``: a per-call sliding window of tokens."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

WINDOW_S: Final = 60.0
TOKEN_LIMIT: Final = 15_000_000  # the value in recorded traffic; nothing is enforced


class RateLimits:
    """The tokens the call has used in the last minute, reported after every response.

    Recorded traffic lists only ``tokens`` (no ``requests`` entry, docs/protocol.md §0).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._used: deque[tuple[float, int]] = deque()

    def record(self, tokens: int) -> list[dict[str, Any]]:
        """Count one response of ``tokens``; return the ``rate_limits`` array to send."""
        now = self._clock()
        self._used.append((now, max(0, tokens)))
        while self._used and now - self._used[0][0] >= WINDOW_S:
            self._used.popleft()
        reset = round(max(0.0, WINDOW_S - (now - self._used[0][0])), 3)
        used_tokens = sum(tokens for _, tokens in self._used)
        return [
            {
                "name": "tokens",
                "limit": TOKEN_LIMIT,
                "remaining": max(0, TOKEN_LIMIT - used_tokens),
                "reset_seconds": reset,
            },
        ]
