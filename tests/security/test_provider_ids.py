"""Outputs are the broker's by call id and text, not by the id it asked for (issue 14, item 7).

The spec lets a client choose a created item's id; a compatible provider may name items
itself (emulator switch ``provider_item_ids``). A broker that waited for the echo of its own
id before asking for the model's answer left the model silent for ever; a resync that looked
an output up only by that id, or took a missing item only from the error code it guessed
(``item_not_found``, undocumented; switch ``missing_item_error_code``), never delivered an
output computed while the sideband was away. Real stack: emulator, aiortc page, broker, tool
backend on loopback.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from tests.support.broker_server import RunningBroker
from tests.support.flow import (
    LOOKUP_42_OUTPUT,
    ask,
    assistant_text,
    connect_browser,
    outputs_received,
    says,
    session_events,
    wait_events,
    wait_sideband,
)
from tests.support.outages import ALL_PROVIDER_SWITCHES as ALL_SWITCHES
from tests.support.outages import OUTAGE_FAULT, call_of, drop, wait_row
from tests.support.servers import RunningEmulator, set_faults
from tests.support.tool_backend import ToolBackend

PROVIDERS = [
    pytest.param({"provider_item_ids": True}, id="provider-item-ids"),
    pytest.param({"missing_item_error_code": "invalid_value"}, id="other-missing-item-code"),
    pytest.param(ALL_SWITCHES, id="every-switch"),
]


async def test_a_tool_call_is_answered_once_when_the_provider_names_items_itself(
    broker: RunningBroker,
    emulator: RunningEmulator,
    tool_backend: ToolBackend,
    http: aiohttp.ClientSession,
) -> None:
    """The provider ignores the id the broker chose for its output: the broker still
    recognises the echo (call id and text), asks for the answer once, and the model says the
    tool's output. The tool runs once, one output is sent, nothing is taken for tampering."""
    await set_faults(http, emulator, provider_item_ids=True)
    session = await broker.create_session(tools=["lookup_order"])
    browser = await connect_browser(broker, session)
    try:
        call_id = await call_of(broker, session)
        ask(browser, 'lookup_order {"order_id": "42"}')
        fc = await browser.wait_for("response.function_call_arguments.done")
        final = await browser.wait_for("response.done", says(LOOKUP_42_OUTPUT), timeout=10)
        assert assistant_text(final) == f"lookup_order returned: {LOOKUP_42_OUTPUT}"
        row = await wait_row(broker, session["id"], fc["call_id"])
        await wait_events(
            broker,
            session["id"],
            "response.done",
            lambda p: p["response"]["id"] == final["response"]["id"],
        )
    finally:
        await browser.close()

    call = emulator.registry.get(call_id)
    assert call is not None
    assert (row["status"], row["path"]) == ("succeeded", "sideband")
    assert len(tool_backend.calls_for(fc["call_id"])) == 1
    outputs = outputs_received(call)
    assert outputs == [
        (
            "sideband",
            {"type": "function_call_output", "call_id": fc["call_id"], "output": LOOKUP_42_OUTPUT},
        )
    ]
    # The provider gave the output an id of its own, not the one the broker sent.
    [sent] = [
        r.event["item"]
        for r in call.received
        if r.event["type"] == "conversation.item.create"
        and r.event["item"]["type"] == "function_call_output"
    ]
    [stored] = [i for i in call.conversation if i["type"] == "function_call_output"]
    assert stored["id"] != sent.get("id")
    answers = [e for e in call.sent if e["type"] == "response.done" and LOOKUP_42_OUTPUT in str(e)]
    assert len(answers) == 1
    assert await session_events(broker, session["id"], "broker.tamper") == []


@pytest.mark.parametrize("switches", [pytest.param({}, id="as-the-spec-says"), *PROVIDERS])
async def test_an_output_computed_while_the_sideband_is_away_is_delivered_once(
    reconnecting_broker: RunningBroker,
    emulator: RunningEmulator,
    tool_backend: ToolBackend,
    http: aiohttp.ClientSession,
    switches: dict[str, Any],
) -> None:
    """The sideband drops while ``hold`` runs and stays away until it has finished. On the
    next connection the resync looks the output up (the provider's answer to a look-up of a
    missing item may carry any code), finds it missing, sends it once, recognises its echo
    whatever id the provider gave it, and the model answers it once."""
    broker = reconnecting_broker
    await set_faults(http, emulator, **switches)
    session = await broker.create_session(tools=["hold"])
    browser = await connect_browser(broker, session)
    try:
        call_id = await call_of(broker, session)
        ask(browser, "hold")
        fc = await browser.wait_for("response.function_call_arguments.done")
        await tool_backend.wait_calls_to("hold")
        await set_faults(http, emulator, **OUTAGE_FAULT)
        await drop(http, emulator, call_id)
        await wait_sideband(broker, session["id"], "reconnecting")
        tool_backend.release_holds()
        # Finished and recorded, with nothing to send it on yet.
        row = await wait_row(broker, session["id"], fc["call_id"], injected=False)
        assert row["status"] == "succeeded"
        await set_faults(http, emulator, sideband_attach_error=None)
        final = await browser.wait_for("response.done", says("hold returned"), timeout=15)
        row = await wait_row(broker, session["id"], fc["call_id"])
        await wait_events(
            broker,
            session["id"],
            "response.done",
            lambda p: p["response"]["id"] == final["response"]["id"],
        )
    finally:
        await browser.close()

    call = emulator.registry.get(call_id)
    assert call is not None
    assert [source for source, _ in outputs_received(call)] == ["sideband"]
    assert assistant_text(final) == f"hold returned: {row['output']}"
    answers = [e for e in call.sent if e["type"] == "response.done" and "hold returned" in str(e)]
    assert len(answers) == 1, "the model answered the output twice"
    assert len(tool_backend.calls_for(fc["call_id"])) == 1
    assert len(call.sideband_attaches) == 2
    assert await session_events(broker, session["id"], "broker.tamper") == []


ITEM_ECHOES = ["conversation.item.added", "conversation.item.done", "conversation.item.created"]
ECHO_LOST = [
    pytest.param({"provider_item_ids": True}, id="provider-item-ids"),
    pytest.param({"missing_item_error_code": "invalid_value"}, id="other-missing-item-code"),
    pytest.param(ALL_SWITCHES, id="every-switch"),
]


@pytest.mark.parametrize("switches", ECHO_LOST)
async def test_an_output_whose_echo_was_lost_with_the_socket_is_not_sent_twice(
    reconnecting_broker: RunningBroker,
    emulator: RunningEmulator,
    tool_backend: ToolBackend,
    http: aiohttp.ClientSession,
    switches: dict[str, Any],
) -> None:
    """The output reached the provider but its echo never reached the sideband before the
    socket died. The resync must find it (under the provider's id, not the broker's) and
    not send a second output for the same call; the model answers once."""
    broker = reconnecting_broker
    await set_faults(http, emulator, **switches)
    session = await broker.create_session(tools=["lookup_order"])
    browser = await connect_browser(broker, session)
    try:
        call_id = await call_of(broker, session)
        call = emulator.registry.get(call_id)
        assert call is not None
        await set_faults(http, emulator, sideband_drop_event_types=ITEM_ECHOES)
        ask(browser, 'lookup_order {"order_id": "42"}')
        fc = await browser.wait_for("response.function_call_arguments.done")
        async with asyncio.timeout(10):
            while not outputs_received(call):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        await set_faults(http, emulator, sideband_drop_event_types=None)
        await drop(http, emulator, call_id)
        final = await browser.wait_for("response.done", says(LOOKUP_42_OUTPUT), timeout=15)
        await wait_row(broker, session["id"], fc["call_id"])
        await wait_events(
            broker,
            session["id"],
            "response.done",
            lambda p: p["response"]["id"] == final["response"]["id"],
        )
    finally:
        await browser.close()

    assert [(source, item["call_id"]) for source, item in outputs_received(call)] == [
        ("sideband", fc["call_id"])
    ], "the output was sent twice"
    assert assistant_text(final) == f"lookup_order returned: {LOOKUP_42_OUTPUT}"
    answers = [e for e in call.sent if e["type"] == "response.done" and LOOKUP_42_OUTPUT in str(e)]
    assert len(answers) == 1
    assert len(tool_backend.calls_for(fc["call_id"])) == 1
