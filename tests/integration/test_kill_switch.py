"""The global tool kill switch: an operator switches a tool off for every session at once."""

from __future__ import annotations

import asyncio
import json

from tests.support.broker_server import RunningBroker
from tests.support.flow import LOOKUP_42_OUTPUT, ask, connect_browser, says
from tests.support.tool_backend import ToolBackend


async def test_a_disabled_tool_is_denied_on_a_live_session_and_works_again_once_enabled(
    broker: RunningBroker, tool_backend: ToolBackend
) -> None:
    """Must-show 2: the next call on an already-live session is denied with a clear output,
    without running; re-enabling restores the tool for that same session."""
    session = await broker.create_session(tools=["lookup_order"])
    browser = await connect_browser(broker, session)
    try:
        ask(browser, 'lookup_order {"order_id": "42"}')
        await browser.wait_for("response.done", says(LOOKUP_42_OUTPUT))

        off = await broker.request(
            "POST", "/api/v1/tools/lookup_order/disable", json_body={"reason": "backend incident"}
        )
        assert off.status == 200, off.text
        assert (off.json()["disabled"], off.json()["reason"]) == (True, "backend incident")
        ask(browser, 'lookup_order {"order_id": "43"}')
        denied = await browser.wait_for("response.done", says("tool_disabled"))
        assert "switched off by an operator" in json.dumps(denied)

        on = await broker.request("POST", "/api/v1/tools/lookup_order/enable")
        assert on.status == 200 and on.json() == {"name": "lookup_order", "disabled": False}
        ask(browser, 'lookup_order {"order_id": "44"}')
        await browser.wait_for("response.done", says('"order_id":"44"'))
    finally:
        await browser.close()

    ran = [r.arguments["order_id"] for r in tool_backend.calls_to("lookup_order")]
    assert ran == ["42", "44"]  # the denied call never reached the tool
    rows = (await broker.get_session(session["id"]))["tool_calls"]
    statuses = {json.loads(r["arguments"])["order_id"]: (r["status"], r["error"]) for r in rows}
    assert statuses["43"] == ("denied", "tool_disabled")
    assert statuses["44"][0] == "succeeded"


async def test_the_switch_needs_admin_and_a_known_tool(broker: RunningBroker) -> None:
    listed = await broker.request("GET", "/api/v1/tools")
    assert listed.status == 200
    [entry] = [t for t in listed.json()["tools"] if t["name"] == "lookup_order"]
    assert entry["disabled"] is False and entry["disabled_at"] is None
    unknown = await broker.request("POST", "/api/v1/tools/no_such_tool/disable")
    assert (unknown.status, unknown.code) == (404, "unknown_tool")
    watcher = await broker.new_key("monitor:read")
    refused = await broker.request("POST", "/api/v1/tools/lookup_order/disable", token=watcher)
    assert (refused.status, refused.code) == (403, "insufficient_scope")
    assert (await broker.request("GET", "/api/v1/tools", token=watcher)).status == 200
    assert (await broker.request("GET", "/api/v1/tools", token=None)).status == 401


async def test_operators_switching_a_tool_off_at_once_all_succeed(broker: RunningBroker) -> None:
    """Two dashboards pressing Disable together: one row, every request answered 200."""
    replies = await asyncio.gather(
        *(
            broker.request(
                "POST", "/api/v1/tools/lookup_order/disable", json_body={"reason": f"op {n}"}
            )
            for n in range(6)
        )
    )
    assert [r.status for r in replies] == [200] * 6, [r.text for r in replies]
    listed = (await broker.request("GET", "/api/v1/tools")).json()["tools"]
    assert [t["name"] for t in listed if t["disabled"]] == ["lookup_order"]
