"""``rate_limits.updated``: a per-call sliding window of requests and tokens."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

WINDOW_S: Final = 60.0
REQUEST_LIMIT: Final = 5_000  # [inferred] plausible tier values; nothing is enforced
TOKEN_LIMIT: Final = 800_000


class RateLimits:
    """What the call has used in the last minute, reported after every response."""

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
                "name": "requests",
                "limit": REQUEST_LIMIT,
                "remaining": max(0, REQUEST_LIMIT - len(self._used)),
                "reset_seconds": reset,
            },
            {
                "name": "tokens",
                "limit": TOKEN_LIMIT,
                "remaining": max(0, TOKEN_LIMIT - used_tokens),
                "reset_seconds": reset,
            },
        ]
