"""Failing tools as the model sees them, and the per-tool circuit breaker, through the real stack
(the last test drives the dispatcher on a real database, to reach a budget refusal).

Complements ``test_tool_outcomes.py`` (after a 5xx the session carries on) and
``tests/security/test_tool_policy.py`` (redirects, endless bodies, the recorded timeout
messages): here each failure is checked byte for byte as the model receives it, against the
call's record and the assistant's reply.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker.db.engine import create_engine, make_sessionmaker
from broker.db.models import ToolPath
from broker.tools.breaker import BreakerState, CircuitBreakers, Permit
from broker.tools.dispatch import ToolDispatcher
from broker.tools.registry import load_registry
from tests.conftest import BrokerFactory
from tests.support.broker_server import RunningBroker
from tests.support.browser import FakeBrowser
from tests.support.flow import ask, assistant_text, compact, connect_browser, outputs_received
from tests.support.rows import session_row
from tests.support.servers import RunningEmulator
from tests.support.tool_backend import BROKEN_DETAIL, ToolBackend

IN_PROCESS = {"sleepy", "broken"}
BRIDGE = ToolPath.BRIDGE
COOLDOWN_S = 1.0
"""The breaker test's cool-down: the refused call must land inside it, the trial after it."""


def _error(code: str, message: str) -> str:
    return compact({"error": {"code": code, "message": message}})


async def _turn(browser: FakeBrowser, text: str) -> str:
    """Ask for a tool call; return the assistant's reply quoting the tool's output.

    The reply is the first new ``response.done`` that quotes an output (the one before it
    only carries the function call), so a turn never matches an earlier, identical one.
    """
    before = {id(event) for event in browser.events}
    ask(browser, text)
    done = await browser.wait_for(
        "response.done",
        lambda e: id(e) not in before and "returned:" in assistant_text(e),
    )
    return assistant_text(done)


async def _outputs(
    broker: RunningBroker, emulator: RunningEmulator, session: dict[str, Any]
) -> list[tuple[str, dict[str, Any]]]:
    call = emulator.registry.get((await broker.get_session(session["id"]))["call_id"])
    assert call is not None
    return outputs_received(call)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.parametrize(
    ("tool", "code", "message"),
    [
        pytest.param("sleepy", "tool_timeout", "the tool did not finish in 0.3s", id="timeout"),
        pytest.param("broken", "tool_error", "the tool failed (RuntimeError)", id="raises"),
        pytest.param("explode", "tool_http_error", "the tool backend answered 500", id="http-5xx"),
        pytest.param(
            "malformed",
            "tool_bad_response",
            "the tool backend's answer is not valid JSON, though its Content-Type says JSON",
            id="malformed-json",
        ),
        pytest.param(
            "empty",
            "tool_bad_response",
            "the tool backend answered with an empty body",
            id="empty-body",
        ),
    ],
)
async def test_a_failing_tool_gives_the_model_an_error_it_can_explain(
    broker: RunningBroker,
    emulator: RunningEmulator,
    tool_backend: ToolBackend,
    tool: str,
    code: str,
    message: str,
) -> None:
    """Whatever way a tool fails, the model gets exactly one output over the sideband:
    ``{"error": {code, message}}`` with the stable code and a message that never carries
    the tool's internals (an exception's text, a backend's body); the call is recorded
    failed/allowed with that code, and an HTTP tool was asked once (never retried)."""
    session = await broker.create_session(tools=[tool])
    browser = await connect_browser(broker, session)
    try:
        async with asyncio.timeout(10):
            reply = await _turn(browser, tool)
        expected = _error(code, message)
        [row] = (await broker.get_session(session["id"]))["tool_calls"]
        assert (row["tool"], row["status"], row["decision"], row["error"]) == (
            tool,
            "failed",
            "allowed",
            code,
        )
        assert row["output"] == expected
        assert await _outputs(broker, emulator, session) == [
            (
                "sideband",
                {"type": "function_call_output", "call_id": row["call_id"], "output": expected},
            )
        ]
        assert reply == f"{tool} returned: {expected}"
        assert BROKEN_DETAIL not in reply and "boom" not in reply
        if tool in IN_PROCESS:
            assert tool_backend.requests == []
        else:
            [request] = tool_backend.calls_to(tool)
            assert request.verified
            assert request.headers["Idempotency-Key"] == f"{session['id']}:{row['call_id']}"
    finally:
        await browser.close()


async def test_the_circuit_opens_after_repeated_failures_and_closes_after_the_cooldown(
    make_broker: BrokerFactory, emulator: RunningEmulator, tool_backend: ToolBackend
) -> None:
    """Invariants: ``tool_breaker_failures`` consecutive failures open the tool's circuit;
    the next call is denied ``tool_circuit_open`` at once (the backend never sees it, no
    budget is spent: its decision is ``denied``) with an output saying when the tool will be
    tried again; after the cool-down one call runs and, succeeding, closes the circuit."""
    broker = await make_broker(tool_breaker_failures=2, tool_breaker_cooldown_s=COOLDOWN_S)
    tool_backend.flaky_failures = 2
    session = await broker.create_session(tools=["flaky"])
    browser = await connect_browser(broker, session)
    unavailable = _error("tool_http_error", "the tool backend answered 503")
    try:
        async with asyncio.timeout(15):
            assert await _turn(browser, "flaky") == f"flaky returned: {unavailable}"
            assert await _turn(browser, "flaky") == f"flaky returned: {unavailable}"
            # Open now. Had the cool-down passed already, the next call would run (and
            # succeed): a turn takes ~0.1 s, a tenth of the cool-down.
            refusal = _error(
                "tool_circuit_open",
                "the tool 'flaky' is failing and has been paused; it will be tried again in 1s",
            )
            assert await _turn(browser, "flaky") == f"flaky returned: {refusal}"
            assert len(tool_backend.calls_to("flaky")) == 2

            await asyncio.sleep(COOLDOWN_S)
            recovered = compact({"ok": True, "tool": "flaky"})
            assert await _turn(browser, "flaky") == f"flaky returned: {recovered}"
            # Closed again: calls flow without waiting for anything.
            assert await _turn(browser, "flaky") == f"flaky returned: {recovered}"
        assert len(tool_backend.calls_to("flaky")) == 4

        rows = (await broker.get_session(session["id"]))["tool_calls"]
        assert [(r["status"], r["decision"], r["error"]) for r in rows] == [
            ("failed", "allowed", "tool_http_error"),
            ("failed", "allowed", "tool_http_error"),
            ("denied", "denied", "tool_circuit_open"),
            ("succeeded", "allowed", None),
            ("succeeded", "allowed", None),
        ]
        outputs = [item["output"] for _, item in await _outputs(broker, emulator, session)]
        assert outputs == [unavailable, unavailable, refusal, recovered, recovered]
    finally:
        await browser.close()


async def test_a_trial_refused_by_the_budget_frees_the_slot(db_url: str, tmp_path: Path) -> None:
    """Invariants: a call the open breaker refuses costs no budget (its decision is
    ``denied``); a half-open trial that the budget then refuses never ran, so it gives no
    verdict and the breaker lets the next call be the trial (it is not wedged half-open)."""
    tools = tmp_path / "tools.toml"
    tools.write_text('[tools.broken]\npython = "tests.support.tool_backend:broken"\n')
    clock = FakeClock()
    breakers = CircuitBreakers(failure_threshold=1, cooldown=5.0, clock=clock)
    engine = create_engine(db_url)
    try:
        sessionmaker = make_sessionmaker(engine)
        async with sessionmaker.begin() as s:
            s.add(session_row("sess_breaker", tools=["broken"], max_tool_calls=1))
        async with httpx.AsyncClient() as http:
            dispatcher = ToolDispatcher(sessionmaker, load_registry(tools, http), breakers)

            async def call(call_id: str) -> tuple[str, str | None, str | None]:
                await dispatcher.run("sess_breaker", ["broken"], call_id, "broken", "{}", BRIDGE)
                row = await dispatcher.get_record("sess_breaker", call_id)
                assert row is not None
                return row.status, row.decision, row.error

            assert await call("c1") == ("failed", "allowed", "tool_error")
            assert await call("c2") == ("denied", "denied", "tool_circuit_open")
            clock.advance(5.0)
            assert await call("c3") == ("denied", "denied", "tool_budget_exhausted")
            await dispatcher.drain()
        assert breakers.state("broken") is BreakerState.HALF_OPEN
        trial = breakers.admit("broken")
        assert isinstance(trial, Permit) and trial.trial
    finally:
        await engine.dispose()
