"""The overload signal: when this process stops taking new calls, and sheds what it may.

Three readings, each cheap enough to check on every request:

* **live calls** at the configured ceiling (``BROKER_MAX_LIVE_CALLS``);
* **event-loop lag**: how late a 100 ms timer fires, on average over the last second, past
  ``BROKER_OVERLOAD_LOOP_LAG_S`` (everything this process does waits in that loop; one
  stall, a collector pass say, is not load, a loop that stays late is);
* **the event-log writer's backlog**: half its bound (``BROKER_EVENT_LOG_MAX_PENDING``), or
  its oldest event waiting longer than ``BROKER_OVERLOAD_EVENT_LOG_LAG_S``.

While any holds, new sessions and offers get 503 ``overloaded`` with ``Retry-After``
(:meth:`OverloadGuard.check`), ``/readyz`` fails, and the event log sheds coalescible events
(never kept ones, never usage). Calls already taken go on as before: their tool calls are
never refused for load. A lag or backlog reading holds for :data:`HOLD_S` after it was last
seen, so the signal does not flap at the edge.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from broker.errors import OverloadedError
from broker.metrics import BrokerMetrics
from broker.record.event_log import EventLog

SAMPLE_S: Final = 0.1
WINDOW_SAMPLES: Final = 10
"""The lag reading is the mean of the last second's samples."""
HOLD_S: Final = 2.0


class OverloadReason(enum.StrEnum):
    """What is over (the ``reason`` of a 503 ``overloaded`` and of its metric)."""

    LIVE_CALLS = "live_calls"
    LOOP_LAG = "loop_lag"
    EVENT_BACKLOG = "event_backlog"


@dataclass(frozen=True)
class OverloadLimits:
    max_live_calls: int
    """``0``: no ceiling."""
    max_loop_lag_s: float
    retry_after_s: int
    max_event_log_lag_s: float = 5.0


class OverloadGuard:
    """Reads the overload signal (see the module docstring).

    Args:
        limits: the configured bounds.
        live_calls: how many calls this process supervises now.
        event_log: the app's (its writer's backlog; it sheds while overloaded).
        metrics: the app's.
    """

    def __init__(
        self,
        limits: OverloadLimits,
        live_calls: Callable[[], int],
        event_log: EventLog,
        metrics: BrokerMetrics,
    ) -> None:
        self.limits = limits
        self._live_calls = live_calls
        self._event_log = event_log
        self._metrics = metrics
        self._lags: deque[float] = deque(maxlen=WINDOW_SAMPLES)
        self._strained_until = 0.0
        self._strain: OverloadReason | None = None
        metrics.track_overload(lambda: 1.0 if self.reason() else 0.0, lambda: self.loop_lag_s)

    @property
    def loop_lag_s(self) -> float:
        # Over the whole window: a process that has just started is not judged by a sample.
        return sum(self._lags) / WINDOW_SAMPLES

    def reason(self) -> OverloadReason | None:
        """Why this process is overloaded now, or ``None``."""
        ceiling = self.limits.max_live_calls
        if ceiling and self._live_calls() >= ceiling:
            return OverloadReason.LIVE_CALLS
        strain = self._strained()
        if strain is not None:
            self._strain = strain
            self._strained_until = time.monotonic() + HOLD_S
        elif time.monotonic() >= self._strained_until:
            self._strain = None
        self._event_log.shedding = self._strain is not None
        return self._strain

    def _strained(self) -> OverloadReason | None:
        if self.loop_lag_s > self.limits.max_loop_lag_s:
            return OverloadReason.LOOP_LAG
        log = self._event_log
        if log.pending_events * 2 >= log.max_pending or log.lag_s > self.limits.max_event_log_lag_s:
            return OverloadReason.EVENT_BACKLOG
        return None

    def refusal(self, reason: OverloadReason, what: str) -> OverloadedError:
        """The 503 ``overloaded`` (with ``Retry-After``) that refuses ``what`` for ``reason``."""
        return OverloadedError(
            f"this broker process is at capacity ({reason.value}): {what} is refused; retry later",
            retry_after=self.limits.retry_after_s,
            reason=reason.value,
        )

    def check(self, what: str) -> None:
        """Refuse new work while overloaded.

        Args:
            what: what is refused (``a new session``, ``an offer``), for the message.

        Raises:
            OverloadedError: 503 ``overloaded`` with ``Retry-After``.
        """
        reason = self.reason()
        if reason is None:
            return
        # Logged once, by the problem middleware (a 503).
        self._metrics.overload_refused(reason.value)
        raise self.refusal(reason, what)

    async def run(self) -> None:
        """Sample the event loop's lag until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            await asyncio.sleep(SAMPLE_S)
            self._lags.append(max(0.0, loop.time() - began - SAMPLE_S))
            self.reason()  # keeps the event log's shedding flag current between requests
