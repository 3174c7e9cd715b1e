"""A call's own input can never pause a tool for every session (issue 14, item 2).

A ``call_id`` holding CR/LF or non-ASCII characters cannot go into a tool backend's
``X-Call-ID`` header. Before the fix, the HTTP request failed (httpx refused the header, or
encoding it failed), the per-tool circuit breaker counted that as the tool failing, and with
enough such calls it paused the tool for every tenant (``tool_circuit_open``). Now such a call
is denied ``call_id_invalid`` in the dispatcher before anything is sent, recorded under a safe
stand-in id, and answered; and any failure of a call's own input before a request reaches the
backend (``tool_request_invalid``) gives the breaker no verdict.

Everything runs for real: the dispatcher on a database, the session's tool handler (the
sideband's way in), the HTTP tool backend on loopback.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.db import queries
from broker.db.engine import create_engine, make_sessionmaker
from broker.db.models import ToolCallStatus, ToolPath
from broker.record.event_log import EventRecorder
from broker.tools.breaker import BreakerState, CircuitBreakers
from broker.tools.call_ids import MAX_CALL_ID, is_valid_call_id
from broker.tools.dispatch import ToolDispatcher
from broker.tools.registry import load_registry
from broker.tools.sideband_handler import SessionToolHandler
from sideband import FunctionCall
from tests.conftest import BrokerFactory
from tests.support.flow import LOOKUP_42_OUTPUT, ask, connect_browser, says, wait_events
from tests.support.rows import session_row
from tests.support.tool_backend import ToolBackend

ATTACKER = "sess_attacker"
VICTIM = "sess_victim"
LOOKUP = "lookup_order"
ARGS_42 = json.dumps({"order_id": "42"})
BAD_CALL_IDS = [
    pytest.param("a\r\nX-Evil: 1", id="crlf-header-injection"),
    pytest.param("caf\u00e9", id="non-ascii"),
]


class _Events(EventRecorder):
    """The handler's event recorder, keeping what it is given instead of writing it."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], session_id: str) -> None:
        super().__init__(sessionmaker, session_id)
        self.events: list[dict[str, Any]] = []

    def record(self, direction: str, event: dict[str, Any], *more: Any, **named: Any) -> None:
        # Whatever else the recorder takes (an event class, say), only the event matters here.
        self.events.append(event)


@dataclass
class _Stack:
    dispatcher: ToolDispatcher
    breakers: CircuitBreakers
    sessionmaker: async_sessionmaker[AsyncSession]

    def handler(self, session_id: str) -> tuple[SessionToolHandler, _Events]:
        events = _Events(self.sessionmaker, session_id)
        return SessionToolHandler(self.dispatcher, session_id, [LOOKUP], events), events


@asynccontextmanager
async def _stack(db_url: str, tmp_path: Path, tool_backend: ToolBackend) -> AsyncIterator[_Stack]:
    """Two sessions allowed ``lookup_order`` (an HTTP tool), a breaker that opens at the
    first failure: one counted failure would pause the tool for both."""
    tools = tmp_path / "tools.toml"
    tools.write_text(tool_backend.config_toml())
    breakers = CircuitBreakers(failure_threshold=1, cooldown=60.0)
    engine = create_engine(db_url)
    try:
        sessionmaker = make_sessionmaker(engine)
        async with sessionmaker.begin() as s:
            s.add(session_row(ATTACKER, tools=[LOOKUP]))
            s.add(session_row(VICTIM, tools=[LOOKUP]))
        async with httpx.AsyncClient() as http:
            dispatcher = ToolDispatcher(sessionmaker, load_registry(tools, http), breakers)
            yield _Stack(dispatcher, breakers, sessionmaker)
            await dispatcher.drain()
    finally:
        await engine.dispose()


def _call(call_id: str, item_id: str = "item_1") -> FunctionCall:
    return FunctionCall(
        call_id=call_id, name=LOOKUP, arguments=ARGS_42, response_id="resp_1", item_id=item_id
    )


@pytest.mark.parametrize("bad_call_id", BAD_CALL_IDS)
async def test_a_call_id_no_header_can_carry_is_denied_and_never_pauses_the_tool(
    db_url: str,
    tmp_path: Path,
    tool_backend: ToolBackend,
    caplog: pytest.LogCaptureFixture,
    bad_call_id: str,
) -> None:
    """Invariants: a call whose id is not 1-128 of ``A-Za-z0-9_.-`` never reaches the tool
    backend; the model gets one ``call_id_invalid`` error output (a replay of the same call
    gets none); the call is recorded denied under a printable stand-in id with no output item
    (a restarted broker never re-sends it); no log line carries the raw id; and the tool's
    breaker is untouched, so the next good call from another session runs."""
    async with _stack(db_url, tmp_path, tool_backend) as stack:
        attacker, attacker_events = stack.handler(ATTACKER)
        with caplog.at_level(logging.DEBUG, logger="broker"):
            await attacker.call_seen(_call(bad_call_id))
            result = await attacker.execute(_call(bad_call_id))
            replay = await attacker.execute(_call(bad_call_id))

        assert result.inject
        assert json.loads(result.output)["error"]["code"] == "call_id_invalid"
        assert bad_call_id not in result.output
        assert not replay.inject  # answered once
        assert tool_backend.calls_to(LOOKUP) == []
        assert stack.breakers.state(LOOKUP) is BreakerState.CLOSED

        async with stack.sessionmaker() as s:
            [row] = await queries.list_tool_calls(s, ATTACKER)
        assert row.call_id.startswith("invalid:") and not is_valid_call_id(row.call_id)
        assert row.call_id.isascii() and row.call_id.isprintable()
        assert len(row.call_id) <= MAX_CALL_ID
        assert (row.status, row.decision, row.error) == ("denied", "denied", "call_id_invalid")
        assert row.output == result.output and row.output_item_id is None
        assert (await stack.dispatcher.unfinished(ATTACKER)) == ([], [])
        assert [e["call_id"] for e in attacker_events.events] == [row.call_id] * 2
        for record in caplog.records:
            message = record.getMessage()
            assert bad_call_id not in message
            assert "\r" not in message and "\n" not in message.strip()

        victim, _ = stack.handler(VICTIM)
        good = await victim.execute(_call("call_good", item_id="item_2"))
        assert (good.inject, good.output) == (True, LOOKUP_42_OUTPUT)
        [request] = tool_backend.calls_to(LOOKUP)
        assert request.headers["X-Call-ID"] == "call_good"
        assert "X-Evil" not in request.headers


async def test_a_failure_of_the_calls_own_input_gives_the_breaker_no_verdict(
    db_url: str, tmp_path: Path, tool_backend: ToolBackend
) -> None:
    """Invariant: a call that fails before its request reaches the tool backend, because of
    what the call itself carries (here: the session id, which no header can carry; the
    broker never makes such ids, the dispatcher must not care), fails alone with
    ``tool_request_invalid``; nothing is sent and the breaker, opening at the first counted
    failure, stays closed for every other session."""
    odd_session = "sess_caf\u00e9"
    async with _stack(db_url, tmp_path, tool_backend) as stack:
        async with stack.sessionmaker.begin() as s:
            s.add(session_row(odd_session, tools=[LOOKUP]))
        outcome = await stack.dispatcher.run(
            odd_session, [LOOKUP], "call_1", LOOKUP, ARGS_42, ToolPath.BRIDGE
        )
        assert outcome.status is ToolCallStatus.FAILED
        assert outcome.output is not None
        assert json.loads(outcome.output)["error"]["code"] == "tool_request_invalid"
        assert tool_backend.calls_to(LOOKUP) == []
        assert stack.breakers.state(LOOKUP) is BreakerState.CLOSED

        good = await stack.dispatcher.run(
            VICTIM, [LOOKUP], "call_2", LOOKUP, ARGS_42, ToolPath.BRIDGE
        )
        assert (good.status, good.output) == (ToolCallStatus.SUCCEEDED, LOOKUP_42_OUTPUT)


async def test_a_page_sending_calls_with_bad_ids_cannot_pause_a_tool_for_another_session(
    make_broker: BrokerFactory, tool_backend: ToolBackend
) -> None:
    """End to end (emulator, aiortc pages, broker, HTTP tool backend), with a breaker that
    opens at the first counted failure: one page plants function calls whose ids carry
    CR/LF or non-ASCII characters and asks the bridge to run them too; nothing reaches the
    tool backend, the bridge refuses the ids with the same rule, and another session's
    real call to the same tool runs."""
    broker = await make_broker(tool_breaker_failures=1)
    attacker = await broker.create_session(tools=[LOOKUP])
    page = await connect_browser(broker, attacker)
    try:
        for index, param in enumerate(BAD_CALL_IDS):
            [bad_call_id] = param.values
            item = {
                "id": f"item_bad_{index}",
                "type": "function_call",
                "call_id": bad_call_id,
                "name": LOOKUP,
                "arguments": ARGS_42,
            }
            page.send({"type": "conversation.item.create", "item": item})
            refused = await broker.bridge(attacker, LOOKUP, str(bad_call_id), ARGS_42)
            assert refused.status == 422, refused.text
        page.send({"type": "response.create"})
        await wait_events(broker, attacker["id"], "broker.tamper", count=len(BAD_CALL_IDS))
    finally:
        await page.close()

    victim = await broker.create_session(tools=[LOOKUP])
    browser = await connect_browser(broker, victim)
    try:
        ask(browser, 'lookup_order {"order_id": "42"}')
        await browser.wait_for("response.done", says(LOOKUP_42_OUTPUT))
    finally:
        await browser.close()
    assert [r.headers["X-Call-ID"] for r in tool_backend.calls_to(LOOKUP)] == [
        (await broker.get_session(victim["id"]))["tool_calls"][0]["call_id"]
    ]
