"""The session detail carries the live transcript, projected from the event log."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.support.broker_server import RunningBroker
from tests.support.flow import LOOKUP_42_OUTPUT, ask, connect_browser, says


async def test_the_detail_shows_turns_and_the_tool_call_inline(broker: RunningBroker) -> None:
    session = await broker.create_session(tools=["lookup_order"])
    browser = await connect_browser(broker, session)
    try:
        ask(browser, 'lookup_order {"order_id": "42"}')
        await browser.wait_for("response.done", says(LOOKUP_42_OUTPUT))
        lines: list[dict[str, Any]] = []
        async with asyncio.timeout(5):  # the event log is written in batches
            while len(lines) < 3:
                lines = (await broker.get_session(session["id"]))["transcript"]
                await asyncio.sleep(0.05)
    finally:
        await browser.close()
    assert lines[0] == {"type": "turn", "role": "user", "text": 'lookup_order {"order_id": "42"}'}
    assert {k: lines[1][k] for k in ("type", "name", "arguments", "output")} == {
        "type": "tool_call",
        "name": "lookup_order",
        "arguments": '{"order_id":"42"}',
        "output": LOOKUP_42_OUTPUT,
    }
    assert lines[2] == {
        "type": "turn",
        "role": "assistant",
        "text": f"lookup_order returned: {LOOKUP_42_OUTPUT}",
    }
