"""A circuit breaker per tool: a tool that keeps failing is paused, not called again and again.

States, per tool name and per broker process (processes do not share them)::

    closed ──failure_threshold consecutive failures──▶ open
    open ──the first call after `cooldown` seconds──▶ half_open (that call is the trial)
    half_open ──the trial succeeds──▶ closed
    half_open ──the trial fails──▶ open (for another cooldown)

* **closed**: calls run. Each failure adds one to a streak; any healthy answer resets it.
* **open**: calls are refused at once, nothing runs (the dispatcher denies them
  ``tool_circuit_open``, costing no budget, with an output that says when the tool will be
  tried again). There is no timer: the move to half-open happens at the first call after the
  cool-down.
* **half_open**: exactly one call (the trial) runs; calls arriving while it runs are refused.
  A trial that never ran after all (e.g. the session's budget refused it) frees the slot for
  the next call without a verdict.

What counts (:func:`counts_as_failure`): every way a call that *ran* can fail because of the
tool or the way to it — ``tool_timeout``, ``tool_unreachable``, ``tool_http_error`` for a 5xx
(and 408/429: the backend says it is overloaded, and backing off is what it asks for) or an
unreadable answer, ``tool_redirect_refused``, ``tool_response_too_large``,
``tool_bad_response``, ``output_too_large``, ``tool_error`` and ``outcome_unknown`` (the call
was cut off: for a half-open trial, no news is treated as bad news). What does not: policy
denials (they never reach the breaker: the tool was not called) and other 4xx answers, which
are about this call (its arguments, its authorization), not the tool's health. A 4xx is a
healthy answer: it resets the streak and closes a half-open breaker. Nor does a call that
failed on its own input before any request reached the backend (``tool_request_invalid``: a
call id or value no header can carry): it gives no verdict at all (:func:`verdict_of`), as
if it never ran, so a page cannot pause a tool for every session by sending calls that
cannot be sent.

A verdict is applied only in the state its call was admitted in: a call admitted while closed
that finishes after the breaker opened (or closed again) is ignored, so a slow straggler
neither re-opens a recovered tool nor closes a failing one.

Everything runs on the event loop without awaiting, so admit-and-mark is atomic; nothing here
is thread-safe.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from broker.tools.codes import ToolErrorCode

logger = logging.getLogger(__name__)

DEFAULT_FAILURE_THRESHOLD: Final = 5
DEFAULT_COOLDOWN_S: Final = 30.0

_FAILURES: Final = frozenset(
    {
        ToolErrorCode.TOOL_TIMEOUT,
        ToolErrorCode.TOOL_UNREACHABLE,
        ToolErrorCode.TOOL_HTTP_ERROR,
        ToolErrorCode.TOOL_REDIRECT_REFUSED,
        ToolErrorCode.TOOL_RESPONSE_TOO_LARGE,
        ToolErrorCode.TOOL_BAD_RESPONSE,
        ToolErrorCode.OUTPUT_TOO_LARGE,
        ToolErrorCode.TOOL_ERROR,
        ToolErrorCode.OUTCOME_UNKNOWN,
    }
)
"""Codes of calls that ran and failed through the tool's fault (denials are not here)."""
_NO_VERDICT: Final = frozenset({ToolErrorCode.TOOL_REQUEST_INVALID})
"""Codes of calls that failed on their own input before any request reached the backend."""
_BACKEND_BUSY: Final = frozenset({408, 429})
"""4xx statuses that speak of the backend's state rather than of the call."""


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


OnChange = Callable[[str, BreakerState, BreakerState], None]
"""``on_change(tool, old_state, new_state)``, called after each transition."""
Clock = Callable[[], float]


def counts_as_failure(code: str, http_status: int | None = None) -> bool:
    """Whether a call that ended with ``code`` counts against its tool's breaker.

    Args:
        code: the call's error code.
        http_status: the tool backend's status, when it answered one that is not a success.
    """
    if code not in _FAILURES:
        return False
    if code == ToolErrorCode.TOOL_HTTP_ERROR and http_status is not None:
        # A 4xx is the caller's fault (arguments, authorization), not the tool's health.
        return not 400 <= http_status < 500 or http_status in _BACKEND_BUSY
    return True


def verdict_of(code: str, http_status: int | None = None) -> bool | None:
    """What a failed call tells its tool's breaker.

    ``False``: a failure; ``True``: a healthy answer (a 4xx); ``None``: nothing, the call
    never reached the backend (:meth:`Permit.release`).

    Args:
        code: the call's error code.
        http_status: the tool backend's status, when it answered one that is not a success.
    """
    if code in _NO_VERDICT:
        return None
    return not counts_as_failure(code, http_status)


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


@dataclass(frozen=True)
class Refusal:
    """A call the breaker refused; nothing ran.

    Attributes:
        retry_in: seconds until a trial call is let through; ``None`` while a trial runs.
    """

    tool: str
    retry_in: float | None

    @property
    def message(self) -> str:
        """What the model is told (safe to show: only the tool's registered name)."""
        paused = f"the tool '{self.tool}' is failing and has been paused"
        if self.retry_in is None:
            return f"{paused}; a trial call is checking it now, try again in a few seconds"
        seconds = max(1, math.ceil(self.retry_in))
        return f"{paused}; it will be tried again in {seconds}s"


class Permit:
    """Leave to run one call. Report how it went exactly once; later reports are ignored."""

    __slots__ = ("_breaker", "_done", "_generation", "trial")

    def __init__(self, breaker: CircuitBreaker, generation: int, trial: bool) -> None:
        self._breaker = breaker
        self._generation = generation
        self._done = False
        self.trial = trial
        """This call is the half-open trial: its verdict closes or re-opens the breaker."""

    def succeeded(self) -> None:
        """The tool answered healthily (including a 4xx: see the module docstring)."""
        self._report(True)

    def failed(self) -> None:
        """The call failed in a way :func:`counts_as_failure` counts, or was cut off."""
        self._report(False)

    def release(self) -> None:
        """The call did not run after all (e.g. the budget refused it): no verdict."""
        self._report(None)

    def _report(self, healthy: bool | None) -> None:
        if not self._done:
            self._done = True
            self._breaker._report(self._generation, self.trial, healthy)


def _check_settings(failure_threshold: int, cooldown: float) -> None:
    if failure_threshold < 0:
        raise ValueError("failure_threshold must not be negative")
    if not cooldown > 0:
        raise ValueError("cooldown must be positive")


class CircuitBreaker:
    """One tool's breaker; see the module docstring for the states and what counts.

    Args:
        failure_threshold: consecutive failures that open it; 0 never opens it.
        cooldown: seconds an open breaker refuses calls before it lets a trial through.
        clock: monotonic seconds (default: the running loop's ``time()``).
        on_change: called after each transition (e.g. metrics); its errors are logged only.
    """

    def __init__(
        self,
        tool: str,
        *,
        failure_threshold: int = DEFAULT_FAILURE_THRESHOLD,
        cooldown: float = DEFAULT_COOLDOWN_S,
        clock: Clock | None = None,
        on_change: OnChange | None = None,
    ) -> None:
        _check_settings(failure_threshold, cooldown)
        self.tool = tool
        self._threshold = failure_threshold
        self._cooldown = cooldown
        self._clock = clock or _loop_time
        self._on_change = on_change
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_running = False
        # Bumped on every transition: a permit's verdict only counts in its own generation.
        self._generation = 0

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.tool!r}, state={self._state}, failures={self._failures})"

    @property
    def state(self) -> BreakerState:
        """The state after the last transition (open until a call arrives past the cool-down)."""
        return self._state

    @property
    def failures(self) -> int:
        """The current streak of consecutive failures (0 unless closed)."""
        return self._failures

    def admit(self) -> Permit | Refusal:
        """A permit to run one call now, or a refusal saying when to try again."""
        if self._state is BreakerState.OPEN:
            remaining = self._opened_at + self._cooldown - self._clock()
            if remaining > 0:
                return Refusal(self.tool, remaining)
            self._transition(BreakerState.HALF_OPEN)
        if self._state is BreakerState.HALF_OPEN:
            if self._trial_running:
                return Refusal(self.tool, None)
            self._trial_running = True
            return Permit(self, self._generation, trial=True)
        return Permit(self, self._generation, trial=False)

    def _report(self, generation: int, trial: bool, healthy: bool | None) -> None:
        if generation != self._generation:
            return  # admitted under an earlier state: see the module docstring
        if trial:
            self._trial_running = False
            if healthy is not None:
                self._transition(BreakerState.CLOSED if healthy else BreakerState.OPEN)
        elif healthy is True:
            self._failures = 0
        elif healthy is False:
            self._failures += 1
            if self._threshold and self._failures >= self._threshold:
                self._transition(BreakerState.OPEN)

    def _transition(self, new: BreakerState) -> None:
        old, self._state = self._state, new
        self._generation += 1
        streak, self._failures = self._failures, 0
        self._trial_running = False
        if new is BreakerState.OPEN:
            self._opened_at = self._clock()
            cause = "trial call failed" if old is BreakerState.HALF_OPEN else f"{streak} failures"
            logger.warning(
                "tool circuit opened tool=%s cause=%r cooldown_s=%g",
                self.tool,
                cause,
                self._cooldown,
            )
        elif new is BreakerState.HALF_OPEN:
            logger.info("tool circuit half-open tool=%s: one trial call may run", self.tool)
        else:
            logger.info("tool circuit closed tool=%s: the trial call succeeded", self.tool)
        if self._on_change is not None:
            try:
                self._on_change(self.tool, old, new)
            except Exception:
                # A metrics hook must not turn into a failed tool call; it is a bug to fix.
                logger.exception("breaker on_change hook failed tool=%s", self.tool)


class CircuitBreakers:
    """One :class:`CircuitBreaker` per tool name, made on first use, all with one configuration.

    Only tools that passed policy (so registered ones) reach a breaker, which bounds the map.
    """

    def __init__(
        self,
        failure_threshold: int = DEFAULT_FAILURE_THRESHOLD,
        cooldown: float = DEFAULT_COOLDOWN_S,
        *,
        clock: Clock | None = None,
        on_change: OnChange | None = None,
    ) -> None:
        # Checked here too so a bad configuration fails at start, not at the first call.
        _check_settings(failure_threshold, cooldown)
        self._threshold = failure_threshold
        self._cooldown = cooldown
        self._clock = clock
        self._on_change = on_change
        self._breakers: dict[str, CircuitBreaker] = {}

    def __repr__(self) -> str:
        return f"CircuitBreakers(failure_threshold={self._threshold}, cooldown={self._cooldown:g})"

    def get(self, tool: str) -> CircuitBreaker:
        breaker = self._breakers.get(tool)
        if breaker is None:
            breaker = self._breakers[tool] = CircuitBreaker(
                tool,
                failure_threshold=self._threshold,
                cooldown=self._cooldown,
                clock=self._clock,
                on_change=self._on_change,
            )
        return breaker

    def admit(self, tool: str) -> Permit | Refusal:
        """:meth:`CircuitBreaker.admit` on ``tool``'s breaker."""
        return self.get(tool).admit()

    def state(self, tool: str) -> BreakerState:
        """``tool``'s state; closed for a tool never called (without making it a breaker)."""
        breaker = self._breakers.get(tool)
        return BreakerState.CLOSED if breaker is None else breaker.state
