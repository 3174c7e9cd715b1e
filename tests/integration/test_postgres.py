"""The same stack on PostgreSQL: migrations apply and the whole tool path works.

Skips without a server on 127.0.0.1:5432, except in CI (CI=true), where it fails instead.
"""

from __future__ import annotations

import pytest

from tests.conftest import BrokerFactory
from tests.support.flow import ask, compact, connect_browser, says
from tests.support.tool_backend import ToolBackend


@pytest.mark.postgres
async def test_sideband_tool_call_on_postgres(
    pg_url: str, make_broker: BrokerFactory, tool_backend: ToolBackend
) -> None:
    """Migrations, session rows, the once-only claim and the event log all work on PostgreSQL."""
    broker = await make_broker(database_url=pg_url)
    session = await broker.create_session(tools=["lookup_order"])
    browser = await connect_browser(broker, session)
    try:
        ask(browser, "lookup_order 42")
        call = await browser.wait_for("response.function_call_arguments.done")
        expected = compact({"order_id": "42", "status": "shipped"})
        await browser.wait_for("response.done", says(expected))
        bridged = await broker.bridge(session, "lookup_order", call["call_id"], call["arguments"])
        assert bridged.json()["handled_by"] == "sideband"
        detail = await broker.get_session(session["id"])
        [row] = detail["tool_calls"]
        assert (row["status"], row["path"], row["output"]) == ("succeeded", "sideband", expected)
        assert len(tool_backend.calls_to("lookup_order")) == 1
    finally:
        await browser.close()
