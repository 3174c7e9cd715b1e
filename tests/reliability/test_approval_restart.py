"""A broker killed (SIGKILL) while an approval-gated call waits: the held call survives.

Real ``broker serve`` processes on one database, a FakeBrowser whose call lives at the
emulator the whole time. The restarted broker resumes the call without running the held call
or answering it again (its pending output was its one output), and an operator's approval
through the new process runs the tool once and tells the model.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.test_approvals import APPROVAL_TOOLS
from tests.support.broker_process import BrokerLauncher
from tests.support.browser import FakeBrowser
from tests.support.flow import ask, assistant_text, outputs_received, says
from tests.support.servers import RunningEmulator
from tests.support.tool_backend import ToolBackend

TEST_BUDGET_S = 45


@pytest.fixture
async def gated_brokers(
    db_url: str, emulator: RunningEmulator, tool_backend: ToolBackend, tmp_path: Path
) -> AsyncIterator[BrokerLauncher]:
    tools = tmp_path / "tools.toml"
    tools.write_text(tool_backend.config_toml() + APPROVAL_TOOLS)
    async with BrokerLauncher(db_url, emulator.base_url, tools, tmp_path) as launcher:
        yield launcher


async def test_a_held_call_survives_a_restart_and_is_approved_through_the_new_process(
    gated_brokers: BrokerLauncher, emulator: RunningEmulator, browser: FakeBrowser
) -> None:
    async with asyncio.timeout(TEST_BUDGET_S):
        first = await gated_brokers.start()
        session = await first.create_session(tools=["refund_order"])
        await first.connect(browser, session)
        ask(browser, "refund_order 42")
        call_id = (await browser.wait_for("response.function_call_arguments.done"))["call_id"]
        await browser.wait_for("response.done", says("pending_approval"))
        await first.wait_tool_call(session["id"], call_id, lambda r: r["injected_at"] is not None)
        await first.kill()

        second = await gated_brokers.start()
        detail = await second.wait_session(session["id"], lambda d: True)
        call = emulator.registry.get(detail["call_id"])
        assert call is not None
        # Resumed by the new process (on PostgreSQL once the dead one's lease ran out).
        while len(call.sideband_attaches) < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await second.wait_session(session["id"], lambda d: d["sideband"]["state"] == "connected")
        listed = (await second.request("GET", "/api/v1/approvals?status=pending")).json()
        [approval] = [a for a in listed["approvals"] if a["call_id"] == call_id]
        reply = await second.request("POST", f"/api/v1/approvals/{approval['id']}/approve")
        assert reply.status == 200, reply.text
        final = await browser.wait_for("response.done", says("(refund_order): approved."), 20)
        detail = await second.wait_session(session["id"], lambda d: True)

    answer = reply.json()
    assert (answer["tool_status"], answer["injected"]) == ("succeeded", True)
    assert "r-7781" in assistant_text(final)
    [row] = detail["tool_calls"]
    assert (row["status"], json.loads(row["output"])["status"]) == ("succeeded", "pending_approval")
    # One output for the call, the pending one, sent by the first process only.
    assert [o["call_id"] for _, o in outputs_received(call)] == [call_id]
