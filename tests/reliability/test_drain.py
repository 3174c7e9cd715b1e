"""SIGTERM drains: a stopping broker finishes what it can within its grace, and leaves the rest
recorded for the next process, while the call itself goes on at the provider.

Real ``broker serve`` processes (tests/support/broker_process.py) stop through aiohttp's
graceful exit, as on a deploy. After a process exits its database is read directly: no broker
may be running then, or it would take the call up again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

from broker.db import queries
from broker.db.engine import create_engine, make_sessionmaker
from broker.db.models import SessionRow, ToolCall
from tests.support.broker_process import BrokerLauncher
from tests.support.browser import FakeBrowser
from tests.support.flow import ask, assistant_text, outputs_received, says
from tests.support.servers import RunningEmulator
from tests.support.tool_backend import ToolBackend

TEST_BUDGET_S = 45
HOLD_OUTPUT = '{"ok":true,"tool":"hold"}'
"""What the backend's ``hold`` tool answers, byte for byte."""


async def stored(database_url: str, session_id: str) -> tuple[SessionRow, Sequence[ToolCall]]:
    """The session row and its tool calls, read straight from the database."""
    engine = create_engine(database_url)
    try:
        async with make_sessionmaker(engine)() as s:
            row = await queries.get_session_row(s, session_id)
            calls = await queries.list_tool_calls(s, session_id)
    finally:
        await engine.dispose()
    assert row is not None
    return row, calls


def session_call_id(row: SessionRow) -> str:
    """The provider's call id the session row recorded."""
    assert row.call_id is not None
    return row.call_id


async def test_sigterm_lets_a_running_tool_finish_and_delivers_its_output_before_exit(
    brokers: BrokerLauncher,
    emulator: RunningEmulator,
    tool_backend: ToolBackend,
    browser: FakeBrowser,
    db_url: str,
) -> None:
    """SIGTERM while a ~1 s tool runs, with a 5 s grace: the process waits for the tool, sends
    its output (and the response.create) on the sideband, and exits 0 well within the grace.
    The row is ``succeeded`` and marked injected; the tool ran once; the session is still
    ``live`` with its sideband ``closed`` (released, not failed), and the model answers the
    browser after the broker is gone: the call was never the broker's to end."""
    grace = 5.0
    tool_backend.hold_seconds = 1.0
    async with asyncio.timeout(TEST_BUDGET_S):
        broker = await brokers.start(BROKER_SHUTDOWN_GRACE_S=str(grace))
        session = await broker.create_session(tools=["hold"])
        await broker.connect(browser, session)
        ask(browser, "hold")
        call_id = (await browser.wait_for("response.function_call_arguments.done"))["call_id"]
        await tool_backend.wait_calls_to("hold")
        code, took = await broker.terminate(timeout=grace + 10)
        final = await browser.wait_for("response.done", says(HOLD_OUTPUT))
        row, calls = await stored(db_url, session["id"])

    assert code == 0, broker.log_tail()
    assert took < grace, f"exit took {took:.1f}s, longer than the {grace}s grace"
    [call_row] = calls
    assert (call_row.call_id, call_row.status, call_row.output) == (
        call_id,
        "succeeded",
        HOLD_OUTPUT,
    )
    assert (row.state, row.sideband_state) == ("live", "closed")
    assert len(tool_backend.calls_for(call_id)) == 1
    call = emulator.registry.get(session_call_id(row))
    assert call is not None and not call.ended
    assert outputs_received(call) == [
        ("sideband", {"type": "function_call_output", "call_id": call_id, "output": HOLD_OUTPUT})
    ]
    assert assistant_text(final) == f"hold returned: {HOLD_OUTPUT}"
    assert "sideband stopped" in broker.log_text()
    # Last, so every other invariant is checked first: the output went out and the model
    # answered, but the drain must also wait (within the grace) for the provider to confirm
    # it, or the next broker has to ask the provider whether it arrived.
    assert call_row.injected_at is not None, (
        "the output was sent before exit but never recorded as delivered (injected_at is "
        "NULL): the drain closed the sideband before the provider's echo confirmed it"
    )


async def test_a_tool_that_outlives_the_grace_is_cut_off_and_its_output_delivered_on_restart(
    brokers: BrokerLauncher,
    emulator: RunningEmulator,
    tool_backend: ToolBackend,
    browser: FakeBrowser,
    db_url: str,
) -> None:
    """SIGTERM with a 1 s grace while a 5 s tool runs: the broker does not wait for the tool.
    It exits 0 with the call settled ``failed``/``outcome_unknown`` (cut off: it may have
    acted) and nothing sent to the model; the next broker delivers that output exactly once
    and never runs the (non-idempotent) tool again."""
    grace = 1.0
    tool_backend.hold_seconds = 5.0
    async with asyncio.timeout(TEST_BUDGET_S):
        first = await brokers.start(BROKER_SHUTDOWN_GRACE_S=str(grace))
        session = await first.create_session(tools=["hold"])
        await first.connect(browser, session)
        ask(browser, "hold")
        call_id = (await browser.wait_for("response.function_call_arguments.done"))["call_id"]
        await tool_backend.wait_calls_to("hold")
        code, took = await first.terminate(timeout=grace + 10)
        row, calls = await stored(db_url, session["id"])
        call = emulator.registry.get(session_call_id(row))
        assert call is not None
        delivered_before_restart = outputs_received(call)

        second = await brokers.start()
        final = await browser.wait_for("response.done", says("outcome_unknown"), timeout=20)
        after = await second.wait_tool_call(
            session["id"], call_id, lambda r: r["injected_at"] is not None
        )

    assert code == 0, first.log_tail()
    assert took < tool_backend.hold_seconds, f"exit took {took:.1f}s: it waited for the tool"
    [cut_off] = calls
    assert (cut_off.status, cut_off.error, cut_off.injected_at) == (
        "failed",
        "outcome_unknown",
        None,
    )
    assert cut_off.output is not None
    assert json.loads(cut_off.output)["error"]["code"] == "outcome_unknown"
    assert (row.state, row.sideband_state) == ("live", "closed")
    assert delivered_before_restart == []

    assert (after["status"], after["error"], after["output"]) == (
        "failed",
        "outcome_unknown",
        cut_off.output,
    )
    assert assistant_text(final) == f"hold returned: {cut_off.output}"
    assert outputs_received(call) == [
        ("sideband", {"type": "function_call_output", "call_id": call_id, "output": cut_off.output})
    ]
    assert len(tool_backend.calls_for(call_id)) == 1, "a non-idempotent tool ran again"
