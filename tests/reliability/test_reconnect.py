"""A lost sideband is re-attached and resynced: one path at a time, against the emulator.

The chaos test (test_chaos.py) shows the invariants hold under random drops; these tests pin
each resync path down deterministically: a function call the model finishes while the
sideband is away, and a call that ends while it is away. A tool that finishes while it is away
is in tests/security/test_provider_ids.py, under every provider variant.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from tests.support.broker_server import RunningBroker
from tests.support.browser import FakeBrowser
from tests.support.flow import (
    LOOKUP_42_OUTPUT,
    ask,
    assistant_text,
    connect_browser,
    outputs_received,
    says,
    wait_events,
    wait_sideband,
)
from tests.support.outages import OUTAGE_FAULT, call_of, clear_faults, drop, wait_row
from tests.support.servers import RunningEmulator, request_json, set_faults
from tests.support.tool_backend import ToolBackend

UNVERIFIED = "call_unverified"


async def assert_retried_not_run(
    broker: RunningBroker,
    emulator: RunningEmulator,
    tool_backend: ToolBackend,
    session_id: str,
    call_id: str,
    unseen: dict[str, Any],
    final: dict[str, Any],
) -> None:
    """The call no sideband saw never ran; it was answered ``call_unverified`` and recorded
    as an unproven call; the model called again, watched, and that call ran once."""
    assert assistant_text(final) == f"lookup_order returned: {LOOKUP_42_OUTPUT}"
    assert tool_backend.calls_for(unseen["call_id"]) == []
    [request] = tool_backend.calls_to("lookup_order")
    retry_id = request.headers["X-Call-ID"]
    assert retry_id != unseen["call_id"]
    row = await wait_row(broker, session_id, retry_id)
    assert (row["status"], row["path"]) == ("succeeded", "sideband")
    call = emulator.registry.get(call_id)
    assert call is not None
    outputs = outputs_received(call)
    assert [(source, item["call_id"]) for source, item in outputs] == [
        ("sideband", unseen["call_id"]),
        ("sideband", retry_id),
    ]
    assert json.loads(outputs[0][1]["output"])["error"]["code"] == UNVERIFIED
    assert outputs[1][1]["output"] == LOOKUP_42_OUTPUT
    [tamper] = await wait_events(
        broker, session_id, "broker.tamper", lambda p: p["kind"] == "unproven_call"
    )
    assert tamper["payload"]["call_id"] == unseen["call_id"]
    assert tamper["payload"]["reason"] == "unseen"


async def test_a_call_the_model_finished_while_the_sideband_was_away_is_not_run_unproven(
    reconnecting_broker: RunningBroker,
    emulator: RunningEmulator,
    tool_backend: ToolBackend,
    http: aiohttp.ClientSession,
) -> None:
    """The broker never sees the function call's events: the resync's tail probe finds it,
    but nothing proves the model made it (a page can plant the same item), so it is not run:
    the model gets ``call_unverified``, calls again while watched, and that call runs once."""
    broker = reconnecting_broker
    session = await broker.create_session(tools=["lookup_order"])
    browser = await connect_browser(broker, session)
    try:
        call_id = await call_of(broker, session)
        await set_faults(http, emulator, **OUTAGE_FAULT)
        await drop(http, emulator, call_id)
        await wait_sideband(broker, session["id"], "reconnecting")
        ask(browser, 'lookup_order {"order_id": "42"}')
        fc = await browser.wait_for("response.function_call_arguments.done")
        await browser.wait_for("response.done")
        assert tool_backend.calls_to("lookup_order") == []  # nobody ran it yet
        await clear_faults(http, emulator)
        final = await browser.wait_for("response.done", says(LOOKUP_42_OUTPUT), timeout=15)
    finally:
        await browser.close()
    await assert_retried_not_run(broker, emulator, tool_backend, session["id"], call_id, fc, final)


async def test_a_call_the_model_finished_before_the_first_attach_is_not_run_unproven(
    reconnecting_broker: RunningBroker,
    emulator: RunningEmulator,
    tool_backend: ToolBackend,
    http: aiohttp.ClientSession,
) -> None:
    """The provider refuses the new call's sideband past the answer's wait (as after a 404
    race or a provider restart); meanwhile the browser connects and the model finishes a
    function call no broker saw. The answer went out first, so the first attach resyncs under
    the provenance rule: the call is not run, the model is told so and calls again, watched."""
    broker = reconnecting_broker
    await set_faults(http, emulator, **OUTAGE_FAULT)
    session = await broker.create_session(tools=["lookup_order"])
    browser = FakeBrowser()
    try:
        reply = await broker.offer(session, await browser.create_offer())
        assert reply.status == 201, reply.text
        await browser.accept_answer(reply.text)
        await browser.wait_open()
        ask(browser, 'lookup_order {"order_id": "42"}')
        fc = await browser.wait_for("response.function_call_arguments.done")
        await browser.wait_for("response.done")
        detail = await broker.get_session(session["id"])
        assert detail["sideband"]["state"] == "connecting"
        assert tool_backend.calls_to("lookup_order") == []  # nobody ran it yet
        await clear_faults(http, emulator)
        final = await browser.wait_for("response.done", says(LOOKUP_42_OUTPUT), timeout=15)
        call_id = await call_of(broker, session)
    finally:
        await browser.close()
    await assert_retried_not_run(broker, emulator, tool_backend, session["id"], call_id, fc, final)


async def test_a_call_that_ends_while_the_sideband_is_away_ends_the_session(
    reconnecting_broker: RunningBroker,
    emulator: RunningEmulator,
    http: aiohttp.ClientSession,
) -> None:
    """Re-attaching to a call the provider has ended gets 404: the session is ``ended`` (the
    call is gone), not ``failed`` nor ``degraded``."""
    broker = reconnecting_broker
    session = await broker.create_session(tools=["lookup_order"])
    browser: FakeBrowser = await connect_browser(broker, session)
    try:
        call_id = await call_of(broker, session)
        await set_faults(http, emulator, **OUTAGE_FAULT)
        await drop(http, emulator, call_id)
        await wait_sideband(broker, session["id"], "reconnecting")
        status, body = await request_json(
            http, emulator, "POST", f"/_emulator/calls/{call_id}/end", {}
        )
        assert status == 200, body
        await clear_faults(http, emulator)
        async with asyncio.timeout(15):
            while (detail := await broker.get_session(session["id"]))["state"] == "live":  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    finally:
        await browser.close()
    assert detail["state"] == "ended", detail
    assert detail["end_reason"] == "call_gone", detail
