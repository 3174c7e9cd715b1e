"""The ops dashboard in Chromium: a pending approval is listed, and its Approve button works.

The call is made by the aiortc stand-in browser against the broker and the emulator on
loopback; the model calls an approval-gated tool (``tests/integration/test_approvals.py``'s
``refund_order``) and is answered pending. Chromium runs only the dashboard at ``/ops/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import screenshot
from tests.e2e.test_ops_dashboard import assert_no_page_errors, sign_in, wait_visible
from tests.integration import test_approvals as gate
from tests.support.broker_server import BrokerFactory, RunningBroker
from tests.support.flow import assistant_text, says
from tests.support.servers import RunningEmulator
from tests.support.tool_backend import ToolBackend


@pytest.fixture
async def gated(make_broker: BrokerFactory, tool_backend: ToolBackend, tmp_path: Path) -> Any:
    tools = tmp_path / "approval-tools.toml"
    tools.write_text(tool_backend.config_toml() + gate.APPROVAL_TOOLS)
    gate.RAN.clear()
    return await make_broker(tools_config=tools)


async def test_an_operator_approves_a_held_tool_call_from_the_dashboard(
    gated: RunningBroker, emulator: RunningEmulator, page: Any
) -> None:
    broker = gated
    key = await broker.new_key("monitor:read", "admin", name="ops approvals")
    session, browser, approval = await gate.held_call(broker)
    try:
        await sign_in(page, broker, key)
        row = await wait_visible(page, f'#approvals tr[data-approval-id="{approval["id"]}"]')
        assert await row.get_attribute("data-tool") == "refund_order"
        assert await row.get_attribute("data-session-id") == session["id"]
        assert approval["call_id"] in (await row.text_content() or "")
        assert "in " in (await row.locator("td.expires").text_content() or "")
        # The session's page shows the held call as pending approval.
        await page.click(f'#approvals a[href="#/sessions/{session["id"]}"]')
        held = await wait_visible(page, f'#tool-calls li[data-call-id="{approval["call_id"]}"]')
        assert await held.get_attribute("data-status") == "held"
        assert "pending approval" in (await held.text_content() or "")
        await page.click(".back")
        row = await wait_visible(page, f'#approvals tr[data-approval-id="{approval["id"]}"]')
        await screenshot(page, "ops-approval-pending")
        await row.locator("button.approve").click()
        # The row leaves the list once decided; the tool ran once; the model quotes its result.
        await row.wait_for(state="detached", timeout=20_000)
        done = await browser.wait_for("response.done", says("(refund_order): approved."))
        assert "r-7781" in assistant_text(done)
        assert len(gate.RAN) == 1
        got = await broker.request("GET", f"/api/v1/approvals/{approval['id']}")
        assert got.json()["status"] == "approved"
        assert got.json()["reason"] == "approved from the ops dashboard"
        await page.locator("#approvals-card").wait_for(state="hidden", timeout=20_000)
        assert_no_page_errors(page)
    finally:
        await browser.close()


async def test_a_watch_only_key_sees_the_approval_but_may_not_decide_it(
    gated: RunningBroker, emulator: RunningEmulator, page: Any
) -> None:
    broker = gated
    key = await broker.new_key("monitor:read", name="ops watcher")
    _, browser, approval = await gate.held_call(broker)
    try:
        await sign_in(page, broker, key)
        row = await wait_visible(page, f'#approvals tr[data-approval-id="{approval["id"]}"]')
        await row.locator("button.deny").click()
        banner = await wait_visible(page, '#approval-error[data-code="insufficient_scope"]')
        assert "may not do that" in (await banner.text_content() or "")
        # Still pending, and still listed with its buttons usable again.
        got = await broker.request("GET", f"/api/v1/approvals/{approval['id']}")
        assert got.json()["status"] == "pending"
        assert await row.locator("button.deny").is_enabled()
        assert gate.RAN == []
        assert_no_page_errors(page)
    finally:
        await browser.close()
