"""The whole path: session, SDP via the broker, call_id, sideband, tool, injected result."""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from broker.db.engine import create_engine, make_sessionmaker
from broker.db.models import SessionEvent, SessionRow
from emulator import EmulatorSettings
from tests.conftest import BrokerFactory
from tests.support.broker_server import PROVIDER_KEY, RunningBroker
from tests.support.flow import (
    LOOKUP_42_OUTPUT,
    ask,
    connect_browser,
    outputs_received,
    says,
    sideband_sent,
    stored_events,
    wait_sideband,
)
from tests.support.servers import RunningEmulator, start_emulator
from tests.support.tool_backend import ToolBackend

EXPECTED_OUTPUT = LOOKUP_42_OUTPUT


async def test_tool_call_runs_on_the_sideband_and_the_answer_reaches_the_browser(
    broker: RunningBroker, emulator: RunningEmulator, tool_backend: ToolBackend
) -> None:
    """The browser sends only text; the broker runs the tool server-side and injects the result.

    Invariants: the function_call_output comes from the sideband connection, never the data
    channel; the tool sees X-Session-ID = the session id; the row says succeeded/sideband.
    """
    session = await broker.create_session(tools=["lookup_order"])
    browser = await connect_browser(broker, session)
    try:
        ask(browser, 'lookup_order {"order_id": "42"}')
        call_event = await browser.wait_for("response.function_call_arguments.done")
        final = await browser.wait_for("response.done", says(EXPECTED_OUTPUT))
        assert final["response"]["status"] == "completed"

        detail = await broker.get_session(session["id"])
        assert detail["state"] == "live"
        assert detail["sideband"] == {"enabled": True, "state": "connected"}
        call = emulator.registry.get(detail["call_id"])
        assert call is not None

        # The function call's output came from the sideband, exactly once; the browser sent
        # only its text and response.create.
        assert outputs_received(call) == [
            (
                "sideband",
                {
                    "type": "function_call_output",
                    "call_id": call_event["call_id"],
                    "output": EXPECTED_OUTPUT,
                },
            )
        ]
        browser_types = [r.event["type"] for r in call.received if r.source == "datachannel"]
        assert browser_types == ["conversation.item.create", "response.create"]
        # On attach the broker asserts its own config; then the output, a probe of the
        # session (the provider's own view, checked before the model is asked to go on),
        # and response.create.
        assert sideband_sent(call) == [
            "session.update",
            "conversation.item.create",
            "session.update",
            "response.create",
        ]

        [request] = tool_backend.calls_to("lookup_order")
        assert request.headers["X-Session-ID"] == session["id"]
        assert request.headers["X-Call-ID"] == call_event["call_id"]
        assert request.arguments == {"order_id": "42"}

        [row] = detail["tool_calls"]
        assert row["call_id"] == call_event["call_id"]
        assert row["tool"] == "lookup_order"
        assert row["status"] == "succeeded"
        assert row["path"] == "sideband"
        assert row["output"] == EXPECTED_OUTPUT
        assert row["injected_at"] is not None
    finally:
        await browser.close()

    # Everything the sideband saw and sent is in the session's event log, in order. The log is
    # written in batches off the reader's path, so poll (bounded) until the flow is there.
    wanted = [
        ("broker", "broker.sideband_attached"),
        ("in", "response.function_call_arguments.done"),
        ("broker", "broker.tool_call"),
        ("out", "conversation.item.create"),
        ("out", "response.create"),
    ]
    kinds = {kind for _, kind in wanted}
    async with asyncio.timeout(5):
        while True:
            events = await stored_events(broker, session["id"])
            flow = [(e.direction, e.type) for e in events if e.type in kinds]
            if len(flow) >= len(wanted):
                break
            await asyncio.sleep(0.05)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert flow == wanted


async def test_stored_call_id_matches_location_and_sideband(
    broker: RunningBroker, emulator: RunningEmulator
) -> None:
    """One call id everywhere: the broker's row, the emulator's Location, the sideband's query."""
    session = await broker.create_session()
    browser = await connect_browser(broker, session)
    try:
        await wait_sideband(broker, session["id"])
        detail = await broker.get_session(session["id"])
        call_id = detail["call_id"]
        assert call_id and call_id.startswith("rtc_")
        [call] = emulator.registry.calls.values()
        assert call.call_id == call_id
        assert call.location == f"/v1/realtime/calls/{call_id}"
        assert call.sideband_attaches == [call_id]
    finally:
        await browser.close()


async def test_sideband_404_right_after_call_creation_is_retried(
    make_broker: BrokerFactory, tool_backend: ToolBackend
) -> None:
    """The provider may not know a new call for a moment; the broker retries the attach."""
    slow = await start_emulator(EmulatorSettings(api_key=PROVIDER_KEY, sideband_ready_delay=0.6))
    try:
        broker = await make_broker(provider_base_url=slow.base_url)
        session = await broker.create_session()
        browser = await connect_browser(broker, session)
        try:
            await wait_sideband(broker, session["id"])
            ask(browser, "please lookup_order 42")
            await browser.wait_for("response.done", says(EXPECTED_OUTPUT))
            [call] = slow.registry.calls.values()
            assert [source for source, _ in outputs_received(call)] == ["sideband"]
            assert len(tool_backend.calls_to("lookup_order")) == 1
        finally:
            await browser.close()
    finally:
        await slow.close()


async def test_call_to_a_tool_outside_the_allowlist_is_denied_not_run(
    broker: RunningBroker, emulator: RunningEmulator, tool_backend: ToolBackend
) -> None:
    """A browser that adds a tool with session.update still cannot make the broker run it.

    The broker reverts the browser's tools at once (tests/security/test_malicious_browser.py),
    so the model is made to call delete_account anyway (``tool:``); the broker records a
    denied call, never contacts the tool, and gives the model an error output.
    """
    session = await broker.create_session(tools=["lookup_order"])
    browser = await connect_browser(broker, session)
    try:
        browser.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "tools": [
                        {
                            "type": "function",
                            "name": "delete_account",
                            "description": "x",
                            "parameters": {"type": "object", "properties": {}},
                        }
                    ],
                },
            }
        )
        await browser.wait_for("session.updated")
        ask(browser, "tool:delete_account")
        await browser.wait_for("response.done", says("tool_not_allowed"))
        assert tool_backend.calls_to("delete_account") == []
        detail = await broker.get_session(session["id"])
        [row] = detail["tool_calls"]
        assert (row["tool"], row["status"], row["decision"], row["path"]) == (
            "delete_account",
            "denied",
            "denied",
            "sideband",
        )
        call = emulator.registry.get(detail["call_id"])
        assert call is not None
        [(source, item)] = outputs_received(call)
        assert source == "sideband" and "tool_not_allowed" in item["output"]
    finally:
        await browser.close()


async def test_session_ends_when_the_browser_leaves(
    broker: RunningBroker, emulator: RunningEmulator
) -> None:
    """The browser closes its peer; the provider ends the call and closes the sideband (1000);
    the session is recorded as ended, not failed, and the sideband as closed."""
    session = await broker.create_session()
    browser = await connect_browser(broker, session)
    await browser.close()
    async with asyncio.timeout(15):
        while (detail := await broker.get_session(session["id"]))["state"] == "live":  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert detail["state"] == "ended"
    assert detail["end_reason"] == "provider_closed:1000"
    assert detail["sideband"]["state"] == "closed"
    call = emulator.registry.get(detail["call_id"])
    assert call is not None and call.ended


async def test_broker_shutdown_records_the_sideband_end_and_keeps_the_events(
    make_broker: BrokerFactory, emulator: RunningEmulator
) -> None:
    """Stopping the broker mid-call: the row says the sideband closed, the session is still
    live (the call goes on at the provider), and the buffered events are written."""
    broker = await make_broker()
    session = await broker.create_session()
    browser = await connect_browser(broker, session)
    try:
        ask(browser, "hello there")
        await browser.wait_for("response.done", says("You said: hello there"))
        await broker.close()
        engine = create_engine(broker.settings.database_url)
        try:
            async with make_sessionmaker(engine)() as s:
                row = await s.get(SessionRow, session["id"])
                types = (
                    await s.scalars(
                        select(SessionEvent.type).where(SessionEvent.session_id == session["id"])
                    )
                ).all()
        finally:
            await engine.dispose()
        assert row is not None
        assert (row.state, row.sideband_state) == ("live", "closed")
        assert "broker.sideband_attached" in types and "response.done" in types
    finally:
        await browser.close()
