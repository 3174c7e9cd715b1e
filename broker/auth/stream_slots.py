"""How many event streams each API key may hold open at once in this process.

Every open stream holds a connection, a handler and a watch on a session's log; without a
cap one ``monitor:read`` key could open thousands and starve the broker (issue 14, item 9).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from typing import Final

from broker.errors import RateLimitedError

RETRY_AFTER_S: Final = 10.0
"""What a refused client is told to wait: a slot frees only when one of its streams ends."""


class StreamSlots:
    """Counts open streams per API key; one per app (``keys.STREAM_SLOTS``).

    Args:
        per_key: the most streams one key may hold open (``0``: no cap).
    """

    def __init__(self, per_key: int) -> None:
        self.per_key = per_key
        self._open: Counter[str] = Counter()

    def open_for(self, key_id: str) -> int:
        return self._open[key_id]

    @contextlib.contextmanager
    def hold(self, key_id: str) -> Iterator[None]:
        """Hold one of ``key_id``'s slots while the block runs.

        Raises:
            RateLimitedError: ``too_many_streams``, the key already holds ``per_key``.
        """
        if self.per_key and self._open[key_id] >= self.per_key:
            raise RateLimitedError(
                "too_many_streams",
                f"this API key already has {self.per_key} event streams open;"
                " close one or retry later",
                retry_after=RETRY_AFTER_S,
                limit=self.per_key,
            )
        self._open[key_id] += 1
        try:
            yield
        finally:
            self._open[key_id] -= 1
            if self._open[key_id] <= 0:
                del self._open[key_id]
