"""The server-side leash: limits on the session row end a live call through the provider.

Each limit ends the call with the provider's hangup (the emulator records ``hangup``), writes
a ``broker.leash`` event naming the limit, and sets the session's end reason to it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from emulator import Call
from tests.support.broker_server import RunningBroker
from tests.support.browser import FakeBrowser
from tests.support.flow import (
    LOOKUP_42_OUTPUT,
    ask,
    connect_browser,
    says,
    session_events,
    wait_call_ended,
    wait_events,
    wait_session_ended,
    wait_sideband,
)
from tests.support.servers import RunningEmulator, request_json
from tests.support.tool_backend import ToolBackend


async def live_call(
    broker: RunningBroker, emulator: RunningEmulator, limits: dict[str, Any]
) -> tuple[dict[str, Any], FakeBrowser, Call]:
    session = await broker.create_session(tools=["lookup_order"], limits=limits)
    browser = await connect_browser(broker, session)
    detail = await broker.get_session(session["id"])
    call = emulator.registry.get(detail["call_id"])
    assert call is not None
    return session, browser, call


async def assert_ended_by_leash(
    broker: RunningBroker, session_id: str, call: Call, limit: str, value: int
) -> None:
    detail = await wait_session_ended(broker, session_id)
    assert (detail["state"], detail["end_reason"]) == ("ended", limit)
    assert detail["sideband"]["state"] == "closed"
    await wait_call_ended(call)
    assert call.end_reason == "hangup"
    [event] = await wait_events(broker, session_id, "broker.leash")
    assert event["direction"] == "broker"
    assert event["payload"] == {"type": "broker.leash", "limit": limit, "value": value}


async def test_max_duration_ends_a_busy_call(
    broker: RunningBroker, emulator: RunningEmulator
) -> None:
    """The duration counts from live_at, and the user's activity does not extend it."""
    started = time.monotonic()
    session, browser, call = await live_call(
        broker, emulator, {"max_duration_s": 2, "idle_timeout_s": 60}
    )
    try:
        await asyncio.sleep(max(0.0, started + 1.0 - time.monotonic()))
        ask(browser, "still here")
        await wait_call_ended(call, timeout=3)
        # started is taken before the session went live, so at least 2 s have passed.
        assert 2.0 <= time.monotonic() - started < 3.5
        await assert_ended_by_leash(broker, session["id"], call, "max_duration", 2)
    finally:
        await browser.close()


async def test_idle_timeout_ends_a_silent_call_and_user_text_postpones_it(
    broker: RunningBroker, emulator: RunningEmulator
) -> None:
    """The idle clock restarts on user input, not on the model's speech: the call ends about
    idle_timeout_s after the user's last message, not after the model's answer to it."""
    # 3 s, with the message at 1.2 s: a slow machine's set-up after the call went live must
    # not eat the whole idle period before the message is sent.
    session, browser, call = await live_call(broker, emulator, {"idle_timeout_s": 3})
    try:
        await asyncio.sleep(1.2)
        ask(browser, "hello there")
        asked = time.monotonic()
        await browser.wait_for("response.done", says("You said: hello there"), timeout=3)
        await wait_call_ended(call, timeout=4)
        silent_for = time.monotonic() - asked
        # Without the postponement it would have ended ~1.8 s after the message; had the
        # model's answer counted as activity, well after 3 s plus the answer's length.
        assert 2.8 <= silent_for <= 3.8, silent_for
        await assert_ended_by_leash(broker, session["id"], call, "idle_timeout", 3)
    finally:
        await browser.close()


async def test_spent_tool_budget_ends_the_call(
    broker: RunningBroker, emulator: RunningEmulator, tool_backend: ToolBackend
) -> None:
    """With max_tool_calls = 1 the second call is denied (tool_budget_exhausted); the model
    gets to say so, then the leash hangs up. The tool ran once."""
    session, browser, call = await live_call(broker, emulator, {"max_tool_calls": 1})
    try:
        ask(browser, "lookup_order 42")
        await browser.wait_for("response.done", says(LOOKUP_42_OUTPUT), timeout=5)
        assert not call.ended
        ask(browser, "lookup_order 43")
        await browser.wait_for("response.done", says("tool_budget_exhausted"), timeout=5)
        await assert_ended_by_leash(broker, session["id"], call, "tool_budget", 1)
        assert [r.arguments for r in tool_backend.calls_to("lookup_order")] == [{"order_id": "42"}]
        detail = await broker.get_session(session["id"])
        assert [(c["status"], c["error"]) for c in detail["tool_calls"]] == [
            ("succeeded", None),
            ("denied", "tool_budget_exhausted"),
        ]
    finally:
        await browser.close()


async def test_a_call_within_its_limits_is_left_alone(
    broker: RunningBroker, emulator: RunningEmulator
) -> None:
    """Ending the call for another reason (the browser leaves) cancels the leash: the end
    reason is the provider's, and no leash event is written."""
    session, browser, call = await live_call(
        broker, emulator, {"max_duration_s": 60, "idle_timeout_s": 60}
    )
    await browser.close()
    detail = await wait_session_ended(broker, session["id"])
    assert detail["end_reason"] == "provider_closed:1000"
    assert call.end_reason == "peer_closed"
    await asyncio.sleep(0.2)
    assert await session_events(broker, session["id"], "broker.leash") == []


async def test_a_bridge_only_call_ends_at_its_max_duration(
    broker: RunningBroker, emulator: RunningEmulator
) -> None:
    """No sideband, no leash: the deadline backstop still hangs up at the limit, and the
    offer's client secret stops working on the bridge with it."""
    session = await broker.create_session(
        tools=["lookup_order"], sideband=False, limits={"max_duration_s": 1}
    )
    browser = await connect_browser(broker, session)
    try:
        call = emulator.registry.get((await broker.get_session(session["id"]))["call_id"])
        assert call is not None
        await wait_call_ended(call, timeout=5)
        assert call.end_reason == "hangup"
        detail = await wait_session_ended(broker, session["id"])
        assert (detail["state"], detail["end_reason"]) == ("ended", "max_duration")
        [event] = await wait_events(broker, session["id"], "broker.leash")
        assert event["payload"]["enforced_by"] == "deadline"
        reply = await broker.bridge(session, "lookup_order", "call_late", {"order_id": "1"})
        assert reply.status in (401, 409), reply.text
    finally:
        await browser.close()


async def test_a_call_whose_sideband_was_lost_still_ends_at_its_max_duration(
    broker: RunningBroker, emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    """Losing the sideband for good (dropped, and every re-attach refused until the session
    degrades) must not free the call from its limit: the duration backstop ends it."""
    # Longer than the reconnect bound (2 s in tests), so the sideband degrades first.
    session, browser, call = await live_call(broker, emulator, {"max_duration_s": 4})
    try:
        emulator.faults.update({"sideband_attach_error": {"status": 503, "count": 1000}})
        status, _ = await request_json(
            http,
            emulator,
            "POST",
            f"/_emulator/calls/{call.call_id}/drop-sidebands",
            {"mode": "abort"},
        )
        assert status == 200
        await wait_sideband(broker, session["id"], "failed")
        assert (await broker.get_session(session["id"]))["state"] == "degraded"
        await wait_call_ended(call, timeout=8)
        detail = await wait_session_ended(broker, session["id"])
        assert (detail["state"], detail["end_reason"]) == ("ended", "max_duration")
    finally:
        await browser.close()
