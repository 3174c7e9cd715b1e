"""The browser-bridge fallback, and that no call ever runs twice whichever path comes first."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import web

from tests.conftest import BrokerFactory
from tests.support.broker_server import RunningBroker
from tests.support.browser import FakeBrowser
from tests.support.flow import (
    LOOKUP_42_OUTPUT,
    ask,
    connect_browser,
    outputs_received,
    says,
    wait_events,
    wait_sideband,
)
from tests.support.servers import RunningEmulator, serving
from tests.support.tool_backend import ToolBackend

EXPECTED_OUTPUT = LOOKUP_42_OUTPUT


async def test_bridge_runs_the_tool_when_the_sideband_is_off(
    broker: RunningBroker, emulator: RunningEmulator, tool_backend: ToolBackend
) -> None:
    """A bridge-only session: the browser relays the call, the broker runs it once."""
    session = await broker.create_session(tools=["lookup_order"], sideband=False)
    assert session["sideband"] is False
    browser = await connect_browser(broker, session)
    try:
        ask(browser, "lookup_order 42")
        call = await browser.wait_for("response.function_call_arguments.done")
        reply = await broker.bridge(session, call["name"], call["call_id"], call["arguments"])
        assert reply.status == 200, reply.text
        assert reply.json() == {
            "call_id": call["call_id"],
            "status": "succeeded",
            "output": EXPECTED_OUTPUT,
            "handled_by": "bridge",
        }
        # The page injects the output itself on this path, as a bridge client does.
        browser.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "function_call_output",
                    "call_id": call["call_id"],
                    "output": reply.json()["output"],
                },
            }
        )
        browser.send({"type": "response.create"})
        await browser.wait_for("response.done", says(EXPECTED_OUTPUT))

        [request] = tool_backend.calls_to("lookup_order")
        assert request.headers["X-Session-ID"] == session["id"]
        detail = await broker.get_session(session["id"])
        assert detail["sideband"] == {"enabled": False, "state": "disabled"}
        [row] = detail["tool_calls"]
        assert (row["status"], row["path"], row["output"]) == (
            "succeeded",
            "bridge",
            EXPECTED_OUTPUT,
        )
        emu_call = emulator.registry.get(detail["call_id"])
        assert emu_call is not None and emu_call.sideband_attaches == []
        assert [source for source, _ in outputs_received(emu_call)] == ["datachannel"]

        again = await broker.bridge(session, call["name"], call["call_id"], call["arguments"])
        assert again.json()["handled_by"] == "bridge"
        assert len(tool_backend.calls_to("lookup_order")) == 1
    finally:
        await browser.close()


async def test_bridge_after_the_sideband_returns_the_stored_result(
    broker: RunningBroker, emulator: RunningEmulator, tool_backend: ToolBackend
) -> None:
    """The sideband ran the call; a later bridge POST gets that result and runs nothing."""
    session = await broker.create_session(tools=["lookup_order"])
    browser = await connect_browser(broker, session)
    try:
        ask(browser, "lookup_order 42")
        call = await browser.wait_for("response.function_call_arguments.done")
        await browser.wait_for("response.done", says(EXPECTED_OUTPUT))

        reply = await broker.bridge(session, "lookup_order", call["call_id"], call["arguments"])
        assert reply.status == 200, reply.text
        assert reply.json() == {
            "call_id": call["call_id"],
            "status": "succeeded",
            "output": EXPECTED_OUTPUT,
            "handled_by": "sideband",
        }
        assert len(tool_backend.calls_to("lookup_order")) == 1
        emu_call = emulator.registry.get((await broker.get_session(session["id"]))["call_id"])
        assert emu_call is not None
        assert [source for source, _ in outputs_received(emu_call)] == ["sideband"]
    finally:
        await browser.close()


async def test_bridge_racing_the_sideband_waits_for_it(
    broker: RunningBroker, emulator: RunningEmulator, tool_backend: ToolBackend
) -> None:
    """A bridge POST sent the moment the browser sees the call (before response.done).

    While the sideband is connected it is the only executor: the bridge waits and returns the
    sideband's result. The tool runs once and the model gets exactly one output.
    """
    tool_backend.delay = 0.3
    session = await broker.create_session(tools=["lookup_order"])
    browser = await connect_browser(broker, session)
    try:
        ask(browser, "lookup_order 42")
        call = await browser.wait_for("response.function_call_arguments.done")
        reply = await broker.bridge(session, "lookup_order", call["call_id"], call["arguments"])
        assert reply.status == 200, reply.text
        assert reply.json()["handled_by"] == "sideband"
        assert reply.json()["output"] == EXPECTED_OUTPUT
        await browser.wait_for("response.done", says(EXPECTED_OUTPUT))
        assert len(tool_backend.calls_to("lookup_order")) == 1
        emu_call = emulator.registry.get((await broker.get_session(session["id"]))["call_id"])
        assert emu_call is not None
        assert len(outputs_received(emu_call)) == 1
    finally:
        await browser.close()


async def test_bridge_cannot_invent_a_call_while_the_sideband_is_connected(
    make_broker: BrokerFactory, tool_backend: ToolBackend
) -> None:
    """A forged call_id the model never emitted runs nothing: 404 call_not_found."""
    broker = await make_broker(bridge_wait_timeout=0.3)
    session = await broker.create_session(tools=["lookup_order"])
    browser = await connect_browser(broker, session)
    try:
        reply = await broker.bridge(session, "lookup_order", "call_forged", {"order_id": "1"})
        assert (reply.status, reply.code) == (404, "call_not_found")
        assert tool_backend.calls_to("lookup_order") == []
    finally:
        await browser.close()


async def test_bridge_with_other_arguments_for_a_recorded_call_is_refused(
    broker: RunningBroker, tool_backend: ToolBackend
) -> None:
    """The recorded tool and arguments are the ones that count; a swap is a 409."""
    session = await broker.create_session(tools=["lookup_order"])
    browser = await connect_browser(broker, session)
    try:
        ask(browser, "lookup_order 42")
        call = await browser.wait_for("response.function_call_arguments.done")
        await browser.wait_for("response.done", says(EXPECTED_OUTPUT))
        reply = await broker.bridge(session, "lookup_order", call["call_id"], {"order_id": "7"})
        assert (reply.status, reply.code) == (409, "call_arguments_mismatch")
        assert len(tool_backend.calls_to("lookup_order")) == 1
    finally:
        await browser.close()


async def test_bridge_cannot_run_calls_while_the_sideband_is_still_connecting(
    make_broker: BrokerFactory, late_emulator: RunningEmulator, tool_backend: ToolBackend
) -> None:
    """The window before the sideband attaches is not a loophole: the bridge only waits."""
    broker = await make_broker(provider_base_url=late_emulator.base_url, bridge_wait_timeout=0.3)
    session = await broker.create_session(tools=["lookup_order"])
    browser = FakeBrowser()
    try:
        reply = await broker.offer(session, await browser.create_offer())
        assert reply.status == 201
        await wait_sideband(broker, session["id"], "connecting")
        forged = await broker.bridge(session, "lookup_order", "call_x", {"order_id": "1"})
        assert (forged.status, forged.code) == (404, "call_not_found")
        assert tool_backend.calls_to("lookup_order") == []
    finally:
        await browser.close()


async def test_call_unknown_to_the_sideband_degrades_the_session_to_the_bridge(
    make_broker: BrokerFactory, late_emulator: RunningEmulator, tool_backend: ToolBackend
) -> None:
    """A sideband that keeps getting 404 for its whole attach bound never attaches: the call
    goes on, the session is ``degraded`` (recorded as an event), and the bridge runs tools,
    with the same allowlist, schema and once-only rules as a bridge-only session."""
    broker = await make_broker(
        provider_base_url=late_emulator.base_url, sideband_attach_timeout=0.3
    )
    session = await broker.create_session(tools=["lookup_order"])
    browser = FakeBrowser()
    try:
        reply = await broker.offer(session, await browser.create_offer())
        assert reply.status == 201
        await wait_sideband(broker, session["id"], "failed")
        detail = await broker.get_session(session["id"])
        assert detail["state"] == "degraded"
        assert detail["end_reason"] is None
        [degraded] = await wait_events(broker, session["id"], "broker.degraded")
        assert "404" in degraded["payload"]["reason"]
        bridged = await broker.bridge(session, "lookup_order", "call_1", {"order_id": "1"})
        assert bridged.status == 200, bridged.text
        assert bridged.json()["handled_by"] == "bridge"
        assert len(tool_backend.calls_to("lookup_order")) == 1
        refused = await broker.bridge(session, "delete_account", "call_2", {})
        assert (refused.status, refused.code) == (403, "tool_not_allowed")
    finally:
        await browser.close()


@asynccontextmanager
async def sideband_down_proxy(emulator: RunningEmulator) -> AsyncIterator[str]:
    """A provider whose call endpoint works but whose sideband endpoint answers 503."""
    http = aiohttp.ClientSession()

    async def calls(request: web.Request) -> web.Response:
        async with http.post(
            emulator.base_url + "/realtime/calls",
            data=await request.read(),
            headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
        ) as upstream:
            return web.Response(
                status=upstream.status,
                body=await upstream.read(),
                headers={
                    k: v
                    for k, v in upstream.headers.items()
                    if k.lower() in ("content-type", "location")
                },
            )

    async def sideband(request: web.Request) -> web.Response:
        return web.Response(status=503, text="upstream unavailable")

    app = web.Application()
    app.router.add_post("/v1/realtime/calls", calls)
    app.router.add_get("/v1/realtime", sideband)
    try:
        async with serving(app) as root:
            yield root + "/v1"
    finally:
        await http.close()


async def test_bridge_takes_over_when_the_sideband_endpoint_is_down(
    make_broker: BrokerFactory, emulator: RunningEmulator, tool_backend: ToolBackend
) -> None:
    """The sideband cannot attach (provider 503, retried for the attach bound); the call goes
    on, the session is degraded to the bridge, which runs the call once."""
    async with sideband_down_proxy(emulator) as base_url:
        broker = await make_broker(provider_base_url=base_url, sideband_attach_timeout=0.5)
        session = await broker.create_session(tools=["lookup_order"])
        browser = FakeBrowser()
        try:
            reply = await broker.offer(session, await browser.create_offer())
            assert reply.status == 201, reply.text
            await browser.accept_answer(reply.text)
            await browser.wait_open()
            await wait_sideband(broker, session["id"], "failed")
            ask(browser, "lookup_order 42")
            call = await browser.wait_for("response.function_call_arguments.done")
            bridged = await broker.bridge(
                session, "lookup_order", call["call_id"], call["arguments"]
            )
            assert bridged.status == 200, bridged.text
            assert bridged.json()["handled_by"] == "bridge"
            assert bridged.json()["output"] == EXPECTED_OUTPUT
            assert len(tool_backend.calls_to("lookup_order")) == 1
            assert (await broker.get_session(session["id"]))["state"] == "degraded"
        finally:
            await browser.close()
