"""The ops dashboard in Chromium: a phone call is shown as one, and Transfer sends the refer.

The phone call is one the emulator rang and the broker answered from the signed webhook
(``tests/integration/test_sip_ops.py``'s :func:`incoming_call`, a line ``keypad``). The list
marks it (a phone badge, its line, its caller); its page shows the line and caller and a
**Transfer** button, whose prompt takes the target URI: the emulator records the ``refer``
and the session ends ``transferred``. A browser call has neither mark nor button.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker.settings.secret import Secret
from tests.e2e.conftest import screenshot
from tests.e2e.test_ops_dashboard import assert_no_page_errors, sign_in, wait_visible
from tests.integration.test_sip_ops import (
    CALLER,
    KEYPAD_LINE,
    KEYPAD_LINES,
    SIP_SECRET,
    TARGET,
    incoming_call,
    keyed_tools_toml,
)
from tests.support.broker_server import BrokerFactory, RunningBroker
from tests.support.flow import connect_browser, wait_events, wait_session_ended
from tests.support.servers import RunningEmulator
from tests.support.tool_backend import ToolBackend


@pytest.fixture
async def phone_broker(
    make_broker: BrokerFactory, tool_backend: ToolBackend, tmp_path: Path
) -> RunningBroker:
    tools = tmp_path / "keyed-tools.toml"
    tools.write_text(keyed_tools_toml(tool_backend))
    lines = tmp_path / "lines.toml"
    lines.write_text(KEYPAD_LINES)
    return await make_broker(
        tools_config=tools, sip_webhook_secret=Secret(SIP_SECRET), sip_lines=lines
    )


def answer_prompts(page: Any, answer: str, seen: list[str]) -> None:
    """Answer every prompt() with ``answer`` (and every confirm() with OK), keeping each message."""

    async def reply(dialog: Any) -> None:
        seen.append(dialog.message)
        await dialog.accept(answer if dialog.type == "prompt" else None)

    page.on("dialog", reply)


async def test_a_phone_call_is_shown_as_one_and_transferred_from_its_page(
    phone_broker: RunningBroker, emulator: RunningEmulator, page: Any
) -> None:
    broker = phone_broker
    key = await broker.new_key("monitor:read", "admin", name="ops phone")
    session_id, call_id = await incoming_call(broker, emulator, KEYPAD_LINE)
    web = await broker.create_session(tools=["lookup_order"])
    browser = await connect_browser(broker, web)
    try:
        await sign_in(page, broker, key)
        row = await wait_visible(page, f'#sessions tr[data-session-id="{session_id}"]')
        assert await row.get_attribute("data-connection") == "sip"
        mark = row.locator(".phone-call")
        assert await mark.get_attribute("data-line") == "keypad"
        assert "phone" in (await mark.locator(".badge.phone").text_content() or "")
        assert await mark.locator(".caller").text_content() == CALLER
        other = await wait_visible(page, f'#sessions tr[data-session-id="{web["id"]}"]')
        assert await other.get_attribute("data-connection") == "webrtc"
        assert await other.locator(".phone-call").count() == 0
        # Its page: the phone badge, line and caller, and Transfer beside Hang up.
        await page.click(f'#sessions a[href="#/sessions/{session_id}"]')
        await wait_visible(page, "#session-phone")
        await wait_visible(page, "#session-line", has_text="keypad")
        await wait_visible(page, "#session-caller", has_text=CALLER)
        transfer = await wait_visible(page, "#transfer:not([disabled])")
        assert not await page.locator("#hangup").is_disabled()
        await screenshot(page, "ops-phone-call")
        dialogs: list[str] = []
        answer_prompts(page, TARGET, dialogs)
        await transfer.click()
        ended = await wait_session_ended(broker, session_id, timeout=15)
        assert ended["end_reason"] == "transferred"
        call = emulator.registry.get(call_id)
        assert call is not None and getattr(call, "referred_to", None) == TARGET
        assert len(dialogs) == 1 and session_id in dialogs[0]
        [event] = await wait_events(broker, session_id, "broker.transfer")
        assert event["payload"]["target_uri"] == TARGET
        await wait_visible(page, '#session-state[data-state="ended"]')
        await wait_visible(page, "#session-end-reason", has_text="transferred")
        await wait_visible(page, '#timeline li[data-event-type="broker.transfer"]')
        assert await page.locator("#transfer").is_disabled()
        # A browser call's page has no Transfer.
        await page.click(".back")
        await page.click(f'#sessions a[href="#/sessions/{web["id"]}"]')
        await wait_visible(page, "#session-state", has_text="live")
        assert await page.locator("#transfer").is_hidden()
        assert await page.locator("#session-phone").is_hidden()
        assert_no_page_errors(page)
    finally:
        await browser.close()
