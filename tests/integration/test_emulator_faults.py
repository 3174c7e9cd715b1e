"""Fault injection: every switch of ``/_emulator/faults`` and the per-call admin actions.

Each test shows a switch's effect on a real emulator over loopback.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI
from websockets.exceptions import ConnectionClosedError

from emulator import CallErrorFault, EmulatorSettings, FaultConfig, SessionUpdateErrorFault
from tests.support.broker_server import PROVIDER_KEY
from tests.support.browser import FakeBrowser
from tests.support.servers import (
    CALL_NOT_FOUND,
    RunningEmulator,
    SidebandProbe,
    connect_call,
    open_call,
    post_offer,
    request_json,
    set_faults,
    start_emulator,
)

KEY = PROVIDER_KEY  # the shared `emulator` fixture (tests/conftest.py) uses it
FAULTS_OFF: dict[str, Any] = {
    "create_call_delay_ms": 0,
    "create_call_error": None,
    "hangup_error": None,
    "sideband_attach_error": None,
    "sideband_unavailable_ms": 0,
    "sideband_drop_after_events": None,
    "sideband_event_delay_ms": 0,
    "sideband_drop_event_types": [],
    "sideband_drop_event_count": None,
    "sideband_misses_page_session_updates": False,
    "sideband_misses_page_items": False,
    "provider_item_ids": False,
    "missing_item_error_code": "item_not_found",
    "keep_instructions_on_empty": False,
    "single_sideband": False,
    "hangup_answers_after_close": False,
    "accept_delay_ms": 0,
    "accept_not_found": False,
    "sideband_session_update_error": None,
    "single_active_response": False,
}


SidebandFactory = Callable[[str], Awaitable[SidebandProbe]]


@pytest.fixture
async def sideband_factory(
    http: aiohttp.ClientSession, emulator: RunningEmulator
) -> AsyncIterator[SidebandFactory]:
    """Open sidebands on the shared emulator; all are closed after the test."""
    opened: list[SidebandProbe] = []

    async def factory(call_id: str) -> SidebandProbe:
        probe = await SidebandProbe.connect(http, emulator, call_id)
        opened.append(probe)
        return probe

    yield factory
    for probe in opened:
        await probe.close()


async def get_faults(http: aiohttp.ClientSession, emulator: RunningEmulator) -> dict[str, Any]:
    status, body = await request_json(http, emulator, "GET", "/_emulator/faults")
    assert status == 200
    return dict(body)


async def wait_detached(links: list[Any]) -> None:
    """Wait until the server side of each sideband is gone (detaching is asynchronous)."""
    async with asyncio.timeout(5):
        for link in links:
            await link.detached.wait()


def item_text(event: dict[str, Any]) -> str | None:
    """The text of an item event's first content part, if it has one."""
    content = event.get("item", {}).get("content") or [{}]
    text = content[0].get("text")
    return text if isinstance(text, str) else None


def same_stream(sideband: list[dict[str, Any]], browser: list[dict[str, Any]]) -> bool:
    """The sideband got the browser's events in the same order, up to the last one it read
    (events after ``response.done``, e.g. ``rate_limits.updated``, may still be on the way)."""
    return bool(sideband) and sideband == browser[: len(sideband)]


async def wait_abnormal_close(probe: SidebandProbe) -> None:
    """The server vanished without a close frame: the client reports 1006."""
    closing = await probe.wait_closed()
    assert closing.type is aiohttp.WSMsgType.CLOSED
    assert probe.ws.close_code == 1006


# ---- the switches themselves -----------------------------------------------------------


async def test_fault_routes_get_merge_reset_and_validate(http: aiohttp.ClientSession) -> None:
    """GET shows the switches, POST merges and answers the new state, DELETE restores the
    constructor's values; bad input is a 400 that changes nothing; the standard key is needed."""
    initial = FaultConfig(create_call_delay_ms=5, sideband_drop_event_types=("error",))
    emulator = await start_emulator(EmulatorSettings(api_key=KEY, faults=initial))
    try:
        expected = {**FAULTS_OFF, "create_call_delay_ms": 5, "sideband_drop_event_types": ["error"]}
        assert await get_faults(http, emulator) == expected
        merged = await set_faults(
            http,
            emulator,
            sideband_event_delay_ms=20,
            create_call_error={"status": 503},
            sideband_drop_event_types=None,
        )
        after_merge = {
            **expected,
            "sideband_event_delay_ms": 20,
            "create_call_error": {"status": 503, "count": 1},
            "sideband_drop_event_types": [],
        }
        assert merged == after_merge
        assert await get_faults(http, emulator) == after_merge

        bad: list[tuple[Any, str, str | None]] = [
            ({"nope": 1}, "unknown_parameter", "nope"),
            ({"create_call_delay_ms": -1}, "invalid_value", "create_call_delay_ms"),
            ({"create_call_delay_ms": "5"}, "invalid_type", "create_call_delay_ms"),
            ({"create_call_delay_ms": 1.5}, "invalid_type", "create_call_delay_ms"),
            ({"sideband_event_delay_ms": 600_001}, "invalid_value", "sideband_event_delay_ms"),
            ({"create_call_error": {"status": 404}}, "invalid_value", "create_call_error.status"),
            (
                {"create_call_error": {"status": 500, "count": 0}},
                "invalid_value",
                "create_call_error.count",
            ),
            (
                {"create_call_error": {"status": 500, "x": 1}},
                "unknown_parameter",
                "create_call_error.x",
            ),
            (
                {"create_call_error": {"count": 1}},
                "missing_required_parameter",
                "create_call_error.status",
            ),
            ({"create_call_error": 503}, "invalid_type", "create_call_error"),
            ({"sideband_drop_after_events": True}, "invalid_type", "sideband_drop_after_events"),
            ({"sideband_drop_after_events": -1}, "invalid_value", "sideband_drop_after_events"),
            ({"sideband_drop_event_types": "error"}, "invalid_type", "sideband_drop_event_types"),
            ({"sideband_drop_event_types": [""]}, "invalid_type", "sideband_drop_event_types[0]"),
            ({"sideband_drop_event_count": 0}, "invalid_value", "sideband_drop_event_count"),
            ({"provider_item_ids": 1}, "invalid_type", "provider_item_ids"),
            ({"missing_item_error_code": ""}, "invalid_type", "missing_item_error_code"),
            (
                {"sideband_session_update_error": {"code": ""}},
                "invalid_type",
                "sideband_session_update_error.code",
            ),
            (
                {"sideband_session_update_error": {"count": 0}},
                "invalid_value",
                "sideband_session_update_error.count",
            ),
            (
                {"sideband_session_update_error": {"status": 500}},
                "unknown_parameter",
                "sideband_session_update_error.status",
            ),
            (
                {"sideband_session_update_error": True},
                "invalid_type",
                "sideband_session_update_error",
            ),
            # One bad switch spoils the whole request: the good one is not applied either.
            (
                {"create_call_delay_ms": 9, "sideband_unavailable_ms": -5},
                "invalid_value",
                "sideband_unavailable_ms",
            ),
            ([1], "invalid_json", None),
        ]
        for body, code, param in bad:
            status, reply = await request_json(http, emulator, "POST", "/_emulator/faults", body)
            assert status == 400, body
            assert set(reply["error"]) == {"message", "type", "code", "param"}
            assert (reply["error"]["code"], reply["error"]["param"]) == (code, param), body
        assert await get_faults(http, emulator) == after_merge

        status, reset = await request_json(http, emulator, "DELETE", "/_emulator/faults")
        assert (status, reset) == (200, expected)
        assert emulator.faults.current == initial

        for headers in ({}, {"Authorization": "Bearer sk-wrong"}):
            for method in ("GET", "POST", "DELETE"):
                status, reply = await request_json(
                    http, emulator, method, "/_emulator/faults", {}, headers=headers
                )
                assert (status, reply["error"]["code"]) == (401, "invalid_api_key")
    finally:
        await emulator.close()


def test_fault_config_validates_in_code() -> None:
    """FaultConfig and CallErrorFault refuse bad values with a ValueError; lists become tuples."""
    for bad in (
        {"create_call_delay_ms": -1},
        {"sideband_drop_after_events": -1},
        {"sideband_drop_event_types": "error"},
        {"sideband_drop_event_count": 0},
    ):
        with pytest.raises(ValueError):
            FaultConfig(**bad)
    with pytest.raises(ValueError):
        CallErrorFault(status=429)
    for refusal in ({"code": ""}, {"count": 0}, {"code": "x" * 65}):
        with pytest.raises(ValueError):
            SessionUpdateErrorFault(**refusal)  # type: ignore[arg-type]
    config = FaultConfig(sideband_drop_event_types=["error"])  # type: ignore[arg-type]
    assert config.sideband_drop_event_types == ("error",)
    assert FaultConfig() == EmulatorSettings(api_key="k").faults


# ---- /calls ------------------------------------------------------------------------------


async def test_create_call_delay_slows_the_answer(
    emulator: RunningEmulator, http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    """create_call_delay_ms holds the /calls answer; the delayed answer still works. A client
    that gives up during the delay leaves no call behind."""
    spare = FakeBrowser()
    try:
        start = time.monotonic()
        status, _, _ = await post_offer(http, emulator, await spare.create_offer())
        undelayed = time.monotonic() - start
        assert status == 201

        await set_faults(http, emulator, create_call_delay_ms=600)
        start = time.monotonic()
        status, answer, _ = await post_offer(http, emulator, await browser.create_offer())
        delayed = time.monotonic() - start
        assert status == 201
        assert delayed >= 0.6
        assert delayed > undelayed + 0.3
        await connect_call(browser, answer, timeout=5)

        calls_before = len(emulator.registry.calls)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await post_offer(http, emulator, await spare.create_offer())
        await asyncio.sleep(0.8)  # past the delay: the handler has decided by now
        assert len(emulator.registry.calls) == calls_before
    finally:
        await spare.close()


async def test_create_call_error_fails_n_requests_then_recovers(
    emulator: RunningEmulator, http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    """create_call_error answers the next N valid /calls with that 5xx (server_error envelope),
    counting down; refused requests (401) do not count; then calls succeed again."""
    await set_faults(http, emulator, create_call_error={"status": 503, "count": 2})
    offer = await browser.create_offer()
    status, _, _ = await post_offer(http, emulator, offer, bearer="sk-wrong")
    assert status == 401
    for remaining in (1, None):
        status, body, location = await post_offer(http, emulator, offer)
        assert (status, location) == (503, None)
        error = json.loads(body)["error"]
        assert set(error) == {"message", "type", "code", "param"}
        assert (error["type"], error["code"], error["param"]) == (
            "server_error",
            "server_error",
            None,
        )
        faults = await get_faults(http, emulator)
        left = faults["create_call_error"]
        assert (left and left["count"]) == remaining
    status, answer, _ = await post_offer(http, emulator, offer)
    assert status == 201
    await connect_call(browser, answer, timeout=5)
    assert len(emulator.registry.calls) == 1

    await set_faults(http, emulator, create_call_error={"status": 500})
    spare = FakeBrowser()
    try:
        async with AsyncOpenAI(api_key=KEY, base_url=emulator.base_url, max_retries=0) as sdk:
            with pytest.raises(openai.InternalServerError) as info:
                async with asyncio.timeout(5):
                    await sdk.realtime.calls.create(sdp=await spare.create_offer())
    finally:
        await spare.close()
    assert (info.value.status_code, info.value.type) == (500, "server_error")


# ---- the sideband handshake --------------------------------------------------------------


async def test_sideband_unavailable_window(
    emulator: RunningEmulator, http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    """sideband_unavailable_ms: the handshake gets the exact 404 call_id_not_found body for
    that long after the call's creation, and succeeds afterwards."""
    await set_faults(http, emulator, sideband_unavailable_ms=700)
    call_id = await open_call(http, emulator, browser)
    call = emulator.registry.get(call_id)
    assert call is not None
    async with asyncio.timeout(5):
        response = await http.get(
            f"{emulator.base_url}/realtime", params={"call_id": call_id}, headers=emulator.auth()
        )
        assert response.status == 404
        assert await response.json() == CALL_NOT_FOUND
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(f"{emulator.ws_url}?call_id={call_id}", headers=emulator.auth())
    assert info.value.status == 404
    assert call.sideband_attaches == []
    assert time.monotonic() - call.created_at < 0.7
    await asyncio.sleep(max(0.0, call.created_at + 0.75 - time.monotonic()))
    sideband = await SidebandProbe.connect(http, emulator, call_id)
    assert call.sideband_attaches == [call_id]
    await sideband.close()


async def test_sideband_attach_error_fails_n_handshakes_then_recovers(
    emulator: RunningEmulator, http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    """sideband_attach_error: the next N handshakes answer that 5xx (server_error envelope)
    without upgrading; the call goes on, and the next handshake attaches."""
    call_id = await open_call(http, emulator, browser)
    call = emulator.registry.get(call_id)
    assert call is not None
    await set_faults(http, emulator, sideband_attach_error={"status": 503, "count": 2})
    async with asyncio.timeout(5):
        response = await http.get(
            f"{emulator.base_url}/realtime", params={"call_id": call_id}, headers=emulator.auth()
        )
        assert response.status == 503
        assert (await response.json())["error"]["code"] == "server_error"
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(f"{emulator.ws_url}?call_id={call_id}", headers=emulator.auth())
    assert info.value.status == 503
    assert call.sideband_attaches == [] and call.end_reason is None
    assert (await get_faults(http, emulator))["sideband_attach_error"] is None
    sideband = await SidebandProbe.connect(http, emulator, call_id)
    assert call.sideband_attaches == [call_id]
    await sideband.close()


# ---- what sidebands receive --------------------------------------------------------------


async def test_drop_after_n_events_aborts_sidebands_attached_while_set(
    emulator: RunningEmulator,
    http: aiohttp.ClientSession,
    browser: FakeBrowser,
    sideband_factory: SidebandFactory,
) -> None:
    """sideband_drop_after_events=N: a sideband attached while it is set is cut (abnormal
    closure, 1006) after exactly N events; one attached before keeps going; N=0 cuts at once;
    the call and the browser are unaffected."""
    call_id = await open_call(http, emulator, browser)
    steady = await sideband_factory(call_id)
    await set_faults(http, emulator, sideband_drop_after_events=3)
    doomed = await sideband_factory(call_id)
    await set_faults(http, emulator, sideband_drop_after_events=0)
    instant = await sideband_factory(call_id)
    await wait_abnormal_close(instant)
    assert instant.events == []

    browser.send_user_text("hello there")
    browser.send({"type": "response.create"})
    await wait_abnormal_close(doomed)
    done = await steady.wait_for("response.done")
    await browser.wait_for("response.done", timeout=5)
    assert len(doomed.events) == 3
    assert doomed.events == steady.events[:3]
    assert same_stream(steady.events, browser.events[1:])
    assert done["response"]["status"] == "completed"
    call = emulator.registry.get(call_id)
    assert call is not None
    assert not call.ended


async def test_event_delay_delays_each_event_and_keeps_order(
    emulator: RunningEmulator,
    http: aiohttp.ClientSession,
    browser: FakeBrowser,
    sideband_factory: SidebandFactory,
) -> None:
    """sideband_event_delay_ms: each event reaches the sideband that much after the call made
    it (the browser has it long before), in the same order; clearing it applies at once."""
    call_id = await open_call(http, emulator, browser)
    sideband = await sideband_factory(call_id)
    await set_faults(http, emulator, sideband_event_delay_ms=300)
    start = time.monotonic()
    browser.send_user_text("what is the delay")
    browser.send({"type": "response.create"})
    async with asyncio.timeout(5):
        first = await sideband.next_event()
    assert time.monotonic() - start >= 0.3
    assert first["type"] == "conversation.item.added"
    assert "conversation.item.added" in [e["type"] for e in browser.events]
    await sideband.wait_for("response.done")
    await browser.wait_for("response.done", timeout=5)
    assert same_stream(sideband.events, browser.events[1:])

    await set_faults(http, emulator, sideband_event_delay_ms=0)
    start = time.monotonic()
    browser.send_user_text("and now")
    await sideband.wait_for("conversation.item.added", lambda e: item_text(e) == "and now")
    assert time.monotonic() - start < 0.3


async def test_a_held_back_event_does_not_hold_up_hangup(
    emulator: RunningEmulator,
    http: aiohttp.ClientSession,
    browser: FakeBrowser,
    sideband_factory: SidebandFactory,
) -> None:
    """Closing cuts the delay short: hangup returns at once, the delayed events still reach
    the sideband before its close frame, and no sideband outlives the call."""
    call_id = await open_call(http, emulator, browser)
    sideband = await sideband_factory(call_id)
    await set_faults(http, emulator, sideband_event_delay_ms=8000)
    browser.send_user_text("held back")
    await browser.wait_for("conversation.item.done", timeout=5)
    start = time.monotonic()
    status, _ = await request_json(
        http, emulator, "POST", f"/v1/realtime/calls/{call_id}/hangup", None
    )
    assert status == 200
    assert time.monotonic() - start < 1.5
    closed = await sideband.wait_closed(timeout=2)
    assert closed.type is aiohttp.WSMsgType.CLOSE
    assert [e["type"] for e in sideband.events] == [
        "conversation.item.added",
        "conversation.item.done",
    ]
    call = emulator.registry.get(call_id)
    assert call is not None and call.ended
    # The 200 comes as termination begins; each sideband detaches once its close is done.
    async with asyncio.timeout(5):
        for link in call.sidebands:
            await link.detached.wait()
    assert call.sidebands == []


async def test_dropped_event_types_skip_sidebands_only(
    emulator: RunningEmulator,
    http: aiohttp.ClientSession,
    browser: FakeBrowser,
    sideband_factory: SidebandFactory,
) -> None:
    """sideband_drop_event_types: those events never reach a sideband but do reach the data
    channel; with a count, only that many deliveries are dropped, then the switch turns off."""
    call_id = await open_call(http, emulator, browser)
    sideband = await sideband_factory(call_id)
    await set_faults(
        http, emulator, sideband_drop_event_types=["conversation.item.added", "response.created"]
    )
    browser.send_user_text("drop some")
    browser.send({"type": "response.create"})
    await sideband.wait_for("response.done")
    await browser.wait_for("response.done", timeout=5)
    seen = [e["type"] for e in sideband.events]
    assert "conversation.item.added" not in seen and "response.created" not in seen
    assert "conversation.item.done" in seen
    browser_types = [e["type"] for e in browser.events]
    assert "conversation.item.added" in browser_types and "response.created" in browser_types
    dropped = {"conversation.item.added", "response.created"}
    assert same_stream(sideband.events, [e for e in browser.events[1:] if e["type"] not in dropped])

    await set_faults(
        http,
        emulator,
        sideband_drop_event_types=["conversation.item.done"],
        sideband_drop_event_count=1,
    )
    sideband.events.clear()
    browser.send_user_text("first")
    browser.send_user_text("second")
    second = await browser.wait_for("conversation.item.done", lambda e: item_text(e) == "second")
    delivered = await sideband.wait_for("conversation.item.done")
    assert delivered["item"]["id"] == second["item"]["id"]
    assert [e["type"] for e in sideband.events].count("conversation.item.added") == 2
    assert [e["type"] for e in sideband.events].count("conversation.item.done") == 1
    faults = await get_faults(http, emulator)
    assert (faults["sideband_drop_event_types"], faults["sideband_drop_event_count"]) == ([], None)


def tool_names(session: dict[str, Any]) -> list[str]:
    return [tool["name"] for tool in session.get("tools") or []]


async def test_sideband_session_update_error_refuses_n_updates_unapplied(
    emulator: RunningEmulator,
    http: aiohttp.ClientSession,
    browser: FakeBrowser,
    sideband_factory: SidebandFactory,
) -> None:
    """sideband_session_update_error: the next N valid sideband ``session.update`` events are
    answered (to the sender only) with an ``error`` naming their ``event_id`` and change
    nothing; an invalid update keeps the count; the page is never refused; then the switch is
    off and updates apply again. ``count: null`` refuses every one."""
    call_id = await open_call(http, emulator, browser)
    call = emulator.registry.get(call_id)
    assert call is not None
    sideband = await sideband_factory(call_id)
    before = json.loads(json.dumps(call.session))
    faults = await set_faults(
        http, emulator, sideband_session_update_error={"code": "invalid_value", "count": 2}
    )
    assert faults["sideband_session_update_error"] == {"code": "invalid_value", "count": 2}
    weather = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}

    def update(event_id: str, **session: Any) -> dict[str, Any]:
        return {
            "type": "session.update",
            "event_id": event_id,
            "session": {"type": "realtime", **session},
        }

    # An invalid update gets its own error and does not use up the count.
    await sideband.send(update("evt_bad", tool_choice=7))
    bad = await sideband.wait_for("error", lambda e: e["error"]["event_id"] == "evt_bad")
    assert bad["error"]["code"] == "invalid_type"
    for event_id in ("evt_one", "evt_two"):
        await sideband.send(update(event_id, instructions="Refused.", tools=[weather]))
        refused = await sideband.wait_for(
            "error", lambda e, i=event_id: e["error"]["event_id"] == i
        )
        assert refused["error"] == {
            "type": "invalid_request_error",
            "code": "invalid_value",
            "message": "The session update could not be applied.",
            "param": "session",
            "event_id": event_id,
        }
        assert call.session == before
    # The page's own update is never refused, and the count is used up: off now.
    browser.send(update("evt_page", instructions="From the page."))
    await browser.wait_for(
        "session.updated", lambda e: e["session"]["instructions"] == "From the page."
    )
    assert (await get_faults(http, emulator))["sideband_session_update_error"] is None
    await sideband.send(update("evt_three", tools=[weather]))
    applied = await sideband.wait_for(
        "session.updated", lambda e: tool_names(e["session"]) == ["get_weather"]
    )
    assert applied["session"]["instructions"] == "From the page."
    errors = [e["error"]["event_id"] for e in sideband.events if e["type"] == "error"]
    assert errors == ["evt_bad", "evt_one", "evt_two"]
    # The refusals went to their sender alone, and no session ever held the refused config.
    assert not [e for e in browser.events if e["type"] == "error"]
    assert "Refused." not in [e["session"]["instructions"] for e in call.sent if "session" in e]

    # count: null refuses every update until switched off.
    await set_faults(
        http, emulator, sideband_session_update_error={"code": "not_allowed", "count": None}
    )
    for event_id in ("evt_four", "evt_five", "evt_six"):
        await sideband.send(update(event_id, tools=[]))
        refused = await sideband.wait_for(
            "error", lambda e, i=event_id: e["error"]["event_id"] == i
        )
        assert refused["error"]["code"] == "not_allowed"
    assert tool_names(call.session) == ["get_weather"]
    faults = await get_faults(http, emulator)
    assert faults["sideband_session_update_error"] == {"code": "not_allowed", "count": None}
    await set_faults(http, emulator, sideband_session_update_error=None)
    await sideband.send(update("evt_seven", tools=[]))
    await sideband.wait_for("session.updated", lambda e: tool_names(e["session"]) == [])


# ---- per-call actions ----------------------------------------------------------------------


async def test_drop_sidebands_abort_or_close(
    emulator: RunningEmulator,
    http: aiohttp.ClientSession,
    browser: FakeBrowser,
    sideband_factory: SidebandFactory,
) -> None:
    """drop-sidebands: "abort" cuts the transport (aiohttp sees 1006, the SDK's websockets a
    closure without a close frame); "close" sends the given code. The call goes on."""
    call_id = await open_call(http, emulator, browser)
    call = emulator.registry.get(call_id)
    assert call is not None
    path = f"/_emulator/calls/{call_id}/drop-sidebands"
    first, second = await sideband_factory(call_id), await sideband_factory(call_id)
    async with AsyncOpenAI(api_key=KEY, base_url=emulator.base_url, max_retries=0) as sdk:
        async with asyncio.timeout(5):
            conn = await sdk.realtime.connect(call_id=call_id).enter()
        try:
            links = call.sidebands
            status, body = await request_json(http, emulator, "POST", path, {"mode": "abort"})
            assert (status, body) == (200, {"call_id": call_id, "dropped": 3})
            await wait_abnormal_close(first)
            await wait_abnormal_close(second)
            with pytest.raises(ConnectionClosedError) as info:
                async with asyncio.timeout(5):
                    await conn.recv_bytes()
            assert info.value.rcvd is None  # no close frame arrived: an abnormal closure
        finally:
            async with asyncio.timeout(5):
                await conn.close()
    await wait_detached(links)

    closing = await sideband_factory(call_id)
    links = call.sidebands
    status, body = await request_json(http, emulator, "POST", path, {"mode": "close", "code": 1011})
    assert (status, body) == (200, {"call_id": call_id, "dropped": 1})
    message = await closing.wait_closed()
    assert (message.type, message.data) == (aiohttp.WSMsgType.CLOSE, 1011)
    await wait_detached(links)
    assert not call.ended
    fresh = await sideband_factory(call_id)
    browser.send_user_text("still alive")
    await fresh.wait_for("conversation.item.added")

    bad: list[tuple[dict[str, Any], str, str]] = [
        ({}, "missing_required_parameter", "mode"),
        ({"mode": "kick"}, "invalid_value", "mode"),
        ({"mode": "close", "code": 1006}, "invalid_value", "code"),
        ({"mode": "close", "code": "1000"}, "invalid_type", "code"),
        ({"mode": "abort", "code": 1000}, "invalid_value", "code"),
        ({"mode": "abort", "why": 1}, "unknown_parameter", "why"),
    ]
    for body_in, code, param in bad:
        status, reply = await request_json(http, emulator, "POST", path, body_in)
        assert (status, reply["error"]["code"], reply["error"]["param"]) == (400, code, param)
    status, reply = await request_json(
        http, emulator, "POST", "/_emulator/calls/rtc_u1_nope/drop-sidebands", {"mode": "abort"}
    )
    assert (status, reply["error"]["code"]) == (404, "call_id_not_found")


async def test_end_call_like_the_provider(
    emulator: RunningEmulator,
    http: aiohttp.ClientSession,
    browser: FakeBrowser,
    sideband_factory: SidebandFactory,
) -> None:
    """end: sidebands get the given close code, the call ends with the reason, the browser's
    peer closes; afterwards the sideband handshake and hangup get 404 call_id_not_found."""
    call_id = await open_call(http, emulator, browser)
    sideband = await sideband_factory(call_id)
    path = f"/_emulator/calls/{call_id}/end"
    for body_in, code, param in (
        ({"close_code": 1006}, "invalid_value", "close_code"),
        ({"reason": ""}, "invalid_value", "reason"),
        ({"reason": "x", "extra": True}, "unknown_parameter", "extra"),
    ):
        status, reply = await request_json(http, emulator, "POST", path, body_in)
        assert (status, reply["error"]["code"], reply["error"]["param"]) == (400, code, param)

    status, body = await request_json(
        http, emulator, "POST", path, {"reason": "max_duration", "close_code": 1001}
    )
    assert (status, body) == (
        200,
        {"call_id": call_id, "ended": True, "end_reason": "max_duration"},
    )
    message = await sideband.wait_closed()
    assert (message.type, message.data) == (aiohttp.WSMsgType.CLOSE, 1001)
    await browser.wait_connection_state("closed", timeout=10)
    status, snapshot = await request_json(http, emulator, "GET", f"/_emulator/calls/{call_id}")
    assert (status, snapshot["ended"], snapshot["end_reason"]) == (200, True, "max_duration")

    async with asyncio.timeout(5):
        response = await http.get(
            f"{emulator.base_url}/realtime", params={"call_id": call_id}, headers=emulator.auth()
        )
        assert (response.status, await response.json()) == (404, CALL_NOT_FOUND)
    status, reply = await request_json(
        http, emulator, "POST", f"/v1/realtime/calls/{call_id}/hangup", None
    )
    assert (status, reply["error"]["code"]) == (404, "call_id_not_found")

    status, again = await request_json(http, emulator, "POST", path, {"reason": "other"})
    assert (status, again["end_reason"]) == (200, "max_duration")  # ending twice: no change
    status, reply = await request_json(http, emulator, "POST", "/_emulator/calls/rtc_u1_x/end", {})
    assert (status, reply["error"]["code"]) == (404, "call_id_not_found")


async def test_hangup_error_fails_n_hangups_then_the_call_ends(
    emulator: RunningEmulator, http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    """hangup_error: the next N hangups answer that 5xx and the call goes on; then it ends."""
    call_id = await open_call(http, emulator, browser)
    await set_faults(http, emulator, hangup_error={"status": 503, "count": 2})
    path = f"/v1/realtime/calls/{call_id}/hangup"
    for _ in range(2):
        status, body = await request_json(http, emulator, "POST", path, None)
        assert (status, body["error"]["type"]) == (503, "server_error")
        call = emulator.registry.get(call_id)
        assert call is not None and not call.ended
    status, _ = await request_json(http, emulator, "POST", path, None)
    assert status == 200
    assert call.ended and call.end_reason == "hangup"
    state = await set_faults(http, emulator)
    assert state["hangup_error"] is None
