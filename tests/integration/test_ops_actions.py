"""Ops actions on a live call: hang it up (reason kept), change its instructions (audited).

Changing instructions is the ``/config`` path's alias (tests/integration/test_reconfiguration.py
covers who may, since the session's own key may too).
"""

from __future__ import annotations

import asyncio
from typing import Any

from tests.support.broker_server import RunningBroker
from tests.support.browser import FakeBrowser
from tests.support.flow import (
    connect_browser,
    session_events,
    wait_call_ended,
    wait_events,
    wait_session_ended,
)
from tests.support.servers import RunningEmulator


async def live_session(broker: RunningBroker) -> tuple[dict[str, Any], FakeBrowser, str]:
    """A session in a call: the session, its browser (to close) and the call id."""
    session = await broker.create_session(tools=["lookup_order"])
    browser = await connect_browser(broker, session)
    return session, browser, (await broker.get_session(session["id"]))["call_id"]


async def test_an_operator_hangs_up_a_live_call(
    broker: RunningBroker, emulator: RunningEmulator
) -> None:
    session, browser, call_id = await live_session(broker)
    try:
        reply = await broker.request(
            "POST", f"/api/v1/sessions/{session['id']}/hangup", json_body={"reason": "abuse"}
        )
        assert reply.status == 200, reply.text
        assert reply.json() == {"id": session["id"], "hung_up": True}
        call = emulator.registry.get(call_id)
        assert call is not None
        await wait_call_ended(call)
        assert call.end_reason == "hangup"
        detail = await wait_session_ended(broker, session["id"])
        assert (detail["state"], detail["end_reason"]) == ("ended", "ops_hangup")
        [event] = await wait_events(broker, session["id"], "broker.ops_hangup")
        assert event["payload"] == {"type": "broker.ops_hangup", "reason": "abuse", "by": "admin"}
        again = await broker.request("POST", f"/api/v1/sessions/{session['id']}/hangup")
        assert (again.status, again.code) == (409, "session_not_live")
    finally:
        await browser.close()


async def test_hangup_needs_admin_and_a_known_session(broker: RunningBroker) -> None:
    unknown = await broker.request("POST", "/api/v1/sessions/sess_nope/hangup")
    assert (unknown.status, unknown.code) == (404, "session_not_found")
    watcher = await broker.new_key("monitor:read")
    session = await broker.create_session(tools=["lookup_order"])
    refused = await broker.request(
        "POST", f"/api/v1/sessions/{session['id']}/hangup", token=watcher
    )
    assert (refused.status, refused.code) == (403, "insufficient_scope")
    bad = await broker.request(
        "POST", f"/api/v1/sessions/{session['id']}/hangup", json_body={"reason": ""}
    )
    assert bad.status == 422, bad.text


async def test_an_operator_changes_a_live_calls_instructions_without_a_tamper_report(
    broker: RunningBroker, emulator: RunningEmulator
) -> None:
    session, browser, call_id = await live_session(broker)
    try:
        reply = await broker.request(
            "POST",
            f"/api/v1/sessions/{session['id']}/instructions",
            json_body={"instructions": "Answer in one short sentence."},
        )
        assert reply.status == 200, reply.text
        call = emulator.registry.get(call_id)
        assert call is not None
        async with asyncio.timeout(5):
            while call.session.get("instructions") != "Answer in one short sentence.":  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        [event] = await wait_events(broker, session["id"], "broker.config_updated")
        assert event["payload"]["by"] == "admin"
        await asyncio.sleep(0.3)  # a tamper revert, were the echo taken for one, comes now
        assert call.session.get("instructions") == "Answer in one short sentence."
        assert await session_events(broker, session["id"], "broker.tamper") == []
    finally:
        await browser.close()


async def test_instructions_need_a_live_call_with_a_connected_sideband(
    broker: RunningBroker,
) -> None:
    session = await broker.create_session(tools=["lookup_order"])
    reply = await broker.request(
        "POST", f"/api/v1/sessions/{session['id']}/instructions", json_body={"instructions": "x"}
    )
    assert (reply.status, reply.code) == (409, "session_not_live")
    unwatched = await broker.create_session(tools=[], sideband=False)
    browser = await connect_browser(broker, unwatched)
    try:
        reply = await broker.request(
            "POST",
            f"/api/v1/sessions/{unwatched['id']}/instructions",
            json_body={"instructions": "x"},
        )
        assert (reply.status, reply.code) == (409, "sideband_not_connected")
    finally:
        await browser.close()
    empty = await broker.request(
        "POST", f"/api/v1/sessions/{session['id']}/instructions", json_body={"instructions": ""}
    )
    assert empty.status == 422
