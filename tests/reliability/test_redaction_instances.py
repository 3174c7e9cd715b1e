"""A redacting tool's call relayed between two instances sharing PostgreSQL.

The page asks the instance that does not own its call; the owner runs it. The arguments and
the output cross in a ``call_commands`` row, which holds them sealed: the database keeps the
redacted field in clear nowhere, while the tool and the page (which must hand the output to
the model) get the real value.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import pytest
from sqlalchemy import text

from broker.db.engine import create_engine, make_sessionmaker
from tests.reliability.test_instances import TEST_BUDGET_S, close_all, instance_id
from tests.support.broker_process import BrokerLauncher, BrokerProcess
from tests.support.browser import FakeBrowser
from tests.support.tool_backend import ToolBackend

pytestmark = pytest.mark.postgres

ORDER: Final = "ORD-SECRET-7731"


@pytest.fixture
def redacting_tools(
    pg_brokers: BrokerLauncher, tool_backend: ToolBackend, tmp_path: Path
) -> BrokerLauncher:
    """The launcher, its tools file rewritten (before any broker starts and reads it) with
    ``lookup_order`` redacting ``order_id`` (its backend echoes the order id)."""
    config = tool_backend.config_toml().replace(
        "[tools.lookup_order]\n", '[tools.lookup_order]\nredact = ["order_id"]\n', 1
    )
    assert 'redact = ["order_id"]' in config
    (tmp_path / "tools.toml").write_text(config + tool_backend.hold_tools_toml())
    return pg_brokers


@pytest.fixture
async def database(pg_url: str) -> AsyncIterator[Any]:
    engine = create_engine(pg_url)
    yield make_sessionmaker(engine)
    await engine.dispose()


async def test_a_redacting_call_crosses_instances_sealed(
    redacting_tools: BrokerLauncher, tool_backend: ToolBackend, database: Any
) -> None:
    pg_brokers = redacting_tools
    calls: list[tuple[BrokerProcess, FakeBrowser, dict[str, Any]]] = []
    try:
        async with asyncio.timeout(TEST_BUDGET_S):
            a = await pg_brokers.start()
            b = await pg_brokers.start()
            await instance_id(b)
            session = await b.create_session(tools=["lookup_order"], sideband=False)
            browser = FakeBrowser()
            calls.append((b, browser, session))
            reply = await b.offer(session, await browser.create_offer())
            assert reply.status == 201, reply.text
            bridged = await a.request(
                "POST",
                f"/api/v1/sessions/{session['id']}/tools/lookup_order",
                token=session["client_secret"]["value"],
                json_body={"call_id": "call_sealed_1", "arguments": {"order_id": ORDER}},
            )
            detail = await a.request("GET", f"/api/v1/sessions/{session['id']}")
    finally:
        await close_all(calls)

    assert bridged.status == 200, bridged.text
    # The page hands the output to the model: it gets the real one.
    assert json.loads(bridged.json()["output"])["order_id"] == ORDER
    [request] = tool_backend.calls_for("call_sealed_1")
    assert request.arguments == {"order_id": ORDER}
    assert ORDER not in detail.text
    async with database() as s:
        commands = (await s.execute(text("SELECT payload, result FROM call_commands"))).all()
        [row] = (
            await s.execute(
                text("SELECT arguments, output FROM tool_calls WHERE call_id = 'call_sealed_1'")
            )
        ).all()
    assert commands, "the call was run at its owner, through a command row"
    assert ORDER not in json.dumps([list(c) for c in commands], default=str)
    assert ORDER not in row.arguments + row.output
    assert "hmac-sha256:" in row.arguments
