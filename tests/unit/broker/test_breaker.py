"""The per-tool circuit breaker's state machine, on a fake clock (no sleeping)."""

from __future__ import annotations

import logging

import pytest

from broker.tools.breaker import (
    BreakerState,
    CircuitBreaker,
    CircuitBreakers,
    Permit,
    Refusal,
    counts_as_failure,
    verdict_of,
)
from broker.tools.codes import ToolErrorCode

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


Change = tuple[str, BreakerState, BreakerState]


def make(
    threshold: int = 3, cooldown: float = 30.0
) -> tuple[CircuitBreaker, FakeClock, list[Change]]:
    clock, changes = FakeClock(), []
    breaker = CircuitBreaker(
        "lookup",
        failure_threshold=threshold,
        cooldown=cooldown,
        clock=clock,
        on_change=lambda *change: changes.append(change),
    )
    return breaker, clock, changes


def permit(breaker: CircuitBreaker) -> Permit:
    admitted = breaker.admit()
    assert isinstance(admitted, Permit), admitted
    return admitted


def refusal(breaker: CircuitBreaker) -> Refusal:
    admitted = breaker.admit()
    assert isinstance(admitted, Refusal), admitted
    return admitted


def fail_times(breaker: CircuitBreaker, count: int) -> None:
    for _ in range(count):
        permit(breaker).failed()


def test_opens_after_the_threshold_of_consecutive_failures() -> None:
    breaker, _, changes = make(threshold=3)
    fail_times(breaker, 2)
    assert (breaker.state, breaker.failures) == (CLOSED, 2)
    fail_times(breaker, 1)
    assert breaker.state is OPEN
    assert changes == [("lookup", CLOSED, OPEN)]


def test_a_success_resets_the_streak() -> None:
    """Only *consecutive* failures open it: a healthy answer in between starts over."""
    breaker, _, _ = make(threshold=3)
    fail_times(breaker, 2)
    permit(breaker).succeeded()
    fail_times(breaker, 2)
    assert (breaker.state, breaker.failures) == (CLOSED, 2)


def test_open_refuses_at_once_and_says_when_it_will_try_again() -> None:
    breaker, clock, _ = make(threshold=1, cooldown=30.0)
    fail_times(breaker, 1)
    clock.advance(10.2)
    refused = refusal(breaker)
    assert refused.retry_in == pytest.approx(19.8)
    assert refused.message == (
        "the tool 'lookup' is failing and has been paused; it will be tried again in 20s"
    )
    clock.advance(19.7)  # 0.1 s left: never "0s"
    assert refusal(breaker).message.endswith("it will be tried again in 1s")
    assert breaker.state is OPEN


def test_after_the_cooldown_exactly_one_trial_runs() -> None:
    """Half-open lets one call through; callers arriving while it runs are refused."""
    breaker, clock, changes = make(threshold=1, cooldown=30.0)
    fail_times(breaker, 1)
    clock.advance(30.0)
    trial = permit(breaker)
    assert trial.trial and breaker.state is HALF_OPEN
    for _ in range(3):
        waiting = refusal(breaker)
        assert waiting.retry_in is None
        assert waiting.message == (
            "the tool 'lookup' is failing and has been paused;"
            " a trial call is checking it now, try again in a few seconds"
        )
    assert changes[-1] == ("lookup", OPEN, HALF_OPEN)


def test_a_successful_trial_closes_it() -> None:
    breaker, clock, changes = make(threshold=2, cooldown=5.0)
    fail_times(breaker, 2)
    clock.advance(5.0)
    permit(breaker).succeeded()
    assert (breaker.state, breaker.failures) == (CLOSED, 0)
    assert not permit(breaker).trial
    assert [new for _, _, new in changes] == [OPEN, HALF_OPEN, CLOSED]
    # Closed with a fresh streak: it takes the full threshold to open it again.
    fail_times(breaker, 1)
    assert breaker.state is CLOSED


def test_a_failed_trial_reopens_it_for_another_full_cooldown() -> None:
    breaker, clock, changes = make(threshold=2, cooldown=5.0)
    fail_times(breaker, 2)
    clock.advance(7.0)
    permit(breaker).failed()
    assert breaker.state is OPEN
    assert refusal(breaker).retry_in == pytest.approx(5.0)
    clock.advance(5.0)
    assert permit(breaker).trial
    assert [new for _, _, new in changes] == [OPEN, HALF_OPEN, OPEN, HALF_OPEN]


def test_a_trial_that_never_ran_frees_the_slot_without_a_verdict() -> None:
    """E.g. the session's budget refused it after the breaker admitted it."""
    breaker, clock, _ = make(threshold=1, cooldown=5.0)
    fail_times(breaker, 1)
    clock.advance(5.0)
    permit(breaker).release()
    assert breaker.state is HALF_OPEN
    next_trial = permit(breaker)
    assert next_trial.trial
    next_trial.succeeded()
    assert breaker.state is CLOSED


def test_a_released_call_does_not_count() -> None:
    breaker, _, _ = make(threshold=2)
    permit(breaker).failed()
    for _ in range(5):
        permit(breaker).release()
    assert (breaker.state, breaker.failures) == (CLOSED, 1)


def test_a_permit_reports_once() -> None:
    breaker, _, _ = make(threshold=2)
    admitted = permit(breaker)
    admitted.failed()
    admitted.failed()
    admitted.succeeded()
    assert (breaker.state, breaker.failures) == (CLOSED, 1)


def test_verdicts_from_an_earlier_state_are_ignored() -> None:
    """A slow call admitted while closed neither re-opens a recovered tool nor closes a
    failing one when it finally answers."""
    breaker, clock, _ = make(threshold=2, cooldown=5.0)
    straggler_ok, straggler_bad = permit(breaker), permit(breaker)
    fail_times(breaker, 2)
    assert breaker.state is OPEN
    straggler_ok.succeeded()
    assert breaker.state is OPEN
    clock.advance(5.0)
    permit(breaker).succeeded()
    straggler_bad.failed()
    assert (breaker.state, breaker.failures) == (CLOSED, 0)


def test_a_threshold_of_zero_never_opens() -> None:
    breaker, _, changes = make(threshold=0)
    fail_times(breaker, 100)
    assert breaker.state is CLOSED and changes == []


@pytest.mark.parametrize(
    ("code", "status", "counts"),
    [
        (ToolErrorCode.TOOL_TIMEOUT, None, True),
        (ToolErrorCode.TOOL_UNREACHABLE, None, True),
        (ToolErrorCode.TOOL_HTTP_ERROR, 500, True),
        (ToolErrorCode.TOOL_HTTP_ERROR, 503, True),
        (ToolErrorCode.TOOL_HTTP_ERROR, 429, True),
        (ToolErrorCode.TOOL_HTTP_ERROR, 408, True),
        (ToolErrorCode.TOOL_HTTP_ERROR, None, True),  # a compressed body: the backend's fault
        (ToolErrorCode.TOOL_HTTP_ERROR, 400, False),
        (ToolErrorCode.TOOL_HTTP_ERROR, 401, False),
        (ToolErrorCode.TOOL_HTTP_ERROR, 404, False),
        (ToolErrorCode.TOOL_HTTP_ERROR, 422, False),
        (ToolErrorCode.TOOL_REDIRECT_REFUSED, None, True),
        (ToolErrorCode.TOOL_RESPONSE_TOO_LARGE, None, True),
        (ToolErrorCode.TOOL_BAD_RESPONSE, None, True),
        (ToolErrorCode.OUTPUT_TOO_LARGE, None, True),
        (ToolErrorCode.TOOL_ERROR, None, True),
        (ToolErrorCode.OUTCOME_UNKNOWN, None, True),
        # Denials: the tool was never called, so they say nothing about its health.
        (ToolErrorCode.TOOL_NOT_ALLOWED, None, False),
        (ToolErrorCode.ARGUMENTS_INVALID, None, False),
        (ToolErrorCode.TOOL_MISCONFIGURED, None, False),
        (ToolErrorCode.TOOL_BUDGET_EXHAUSTED, None, False),
        (ToolErrorCode.TOO_MANY_CONCURRENT_TOOLS, None, False),
        (ToolErrorCode.TOOL_CIRCUIT_OPEN, None, False),
    ],
)
def test_what_counts_as_a_failure(code: ToolErrorCode, status: int | None, counts: bool) -> None:
    assert counts_as_failure(code, status) is counts


def test_a_call_that_failed_on_its_own_input_gives_no_verdict() -> None:
    """``tool_request_invalid`` (nothing reached the backend) neither counts as a failure nor
    as a healthy answer: a half-open trial with such input frees the slot, no more."""
    assert verdict_of(ToolErrorCode.TOOL_REQUEST_INVALID) is None
    assert verdict_of(ToolErrorCode.TOOL_UNREACHABLE) is False
    assert verdict_of(ToolErrorCode.TOOL_HTTP_ERROR, 404) is True
    assert verdict_of(ToolErrorCode.TOOL_HTTP_ERROR, 503) is False


def test_transitions_are_logged_once_each(caplog: pytest.LogCaptureFixture) -> None:
    breaker, clock, _ = make(threshold=2, cooldown=5.0)
    with caplog.at_level(logging.INFO, logger="broker.tools.breaker"):
        fail_times(breaker, 2)
        refusal(breaker)
        clock.advance(5.0)
        permit(breaker).succeeded()
    records = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert records == [
        ("WARNING", "tool circuit opened tool=lookup cause='2 failures' cooldown_s=5"),
        ("INFO", "tool circuit half-open tool=lookup: one trial call may run"),
        ("INFO", "tool circuit closed tool=lookup: the trial call succeeded"),
    ]


def test_a_failing_on_change_hook_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    def hook(tool: str, old: BreakerState, new: BreakerState) -> None:
        raise RuntimeError("metrics down")

    breaker = CircuitBreaker("lookup", failure_threshold=1, clock=FakeClock(), on_change=hook)
    permit(breaker).failed()
    assert breaker.state is OPEN
    assert "breaker on_change hook failed tool=lookup" in caplog.text


def test_breakers_are_per_tool() -> None:
    clock = FakeClock()
    breakers = CircuitBreakers(failure_threshold=1, cooldown=5.0, clock=clock)
    admitted = breakers.admit("a")
    assert isinstance(admitted, Permit)
    admitted.failed()
    assert isinstance(breakers.admit("a"), Refusal)
    assert isinstance(breakers.admit("b"), Permit)
    assert (breakers.state("a"), breakers.state("b")) == (OPEN, CLOSED)
    assert breakers.state("never-called") is CLOSED
    assert breakers.get("a") is breakers.get("a")


@pytest.mark.parametrize(("threshold", "cooldown"), [(-1, 5.0), (1, 0.0), (1, -2.0)])
def test_a_bad_configuration_fails_at_construction(threshold: int, cooldown: float) -> None:
    with pytest.raises(ValueError):
        CircuitBreakers(failure_threshold=threshold, cooldown=cooldown)
    with pytest.raises(ValueError):
        CircuitBreaker("t", failure_threshold=threshold, cooldown=cooldown)


async def test_the_default_clock_is_the_running_loop() -> None:
    breaker = CircuitBreaker("lookup", failure_threshold=1, cooldown=60.0)
    permit(breaker).failed()
    assert refusal(breaker).retry_in == pytest.approx(60.0, abs=1.0)
