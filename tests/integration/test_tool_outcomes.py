"""Tool executors and failure outcomes, through the whole call."""

from __future__ import annotations

import json

from broker.settings import DEFAULT_TOOLS_CONFIG
from tests.conftest import BrokerFactory
from tests.support.broker_server import RunningBroker
from tests.support.flow import ask, connect_browser, says
from tests.support.tool_backend import ToolBackend


async def test_demo_python_tool_runs_in_process(make_broker: BrokerFactory) -> None:
    """The shipped demo tools (python executor) work with no configuration."""
    broker = await make_broker(tools_config=DEFAULT_TOOLS_CONFIG)
    session = await broker.create_session(tools=["lookup_order", "get_time"])
    browser = await connect_browser(broker, session)
    try:
        ask(browser, "please lookup_order 42")
        await browser.wait_for("response.done", says('"order_id":"42"'))
        [row] = (await broker.get_session(session["id"]))["tool_calls"]
        assert row["status"] == "succeeded" and row["path"] == "sideband"
        assert json.loads(row["output"])["order_id"] == "42"
    finally:
        await browser.close()


async def test_failing_tool_backend_gives_the_model_an_error_output(
    broker: RunningBroker, tool_backend: ToolBackend
) -> None:
    """An HTTP 500 from the tool is a failed call with an explainable output, not a crash."""
    session = await broker.create_session(tools=["explode", "lookup_order"])
    browser = await connect_browser(broker, session)
    try:
        ask(browser, "explode")
        await browser.wait_for("response.done", says("tool_http_error"))
        [row] = (await broker.get_session(session["id"]))["tool_calls"]
        assert (row["status"], row["decision"], row["error"]) == (
            "failed",
            "allowed",
            "tool_http_error",
        )
        assert json.loads(row["output"])["error"]["code"] == "tool_http_error"
        assert len(tool_backend.calls_to("explode")) == 1
        # The session and its sideband carry on: the next call works.
        ask(browser, "lookup_order 7")
        await browser.wait_for("response.done", says('"order_id":"7"'))
        assert (await broker.get_session(session["id"]))["sideband"]["state"] == "connected"
    finally:
        await browser.close()


async def test_arguments_failing_the_schema_are_denied(
    broker: RunningBroker, tool_backend: ToolBackend
) -> None:
    """The model's arguments are checked against the tool's JSON schema before anything runs."""
    session = await broker.create_session(tools=["lookup_order"])
    browser = await connect_browser(broker, session)
    try:
        ask(browser, 'lookup_order {"order_id": 42, "admin": true}')
        await browser.wait_for("response.done", says("arguments_invalid"))
        [row] = (await broker.get_session(session["id"]))["tool_calls"]
        assert (row["status"], row["error"]) == ("denied", "arguments_invalid")
        assert tool_backend.calls_to("lookup_order") == []
    finally:
        await browser.close()
