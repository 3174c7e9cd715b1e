"""The page hangs up through the broker: the call ends at the provider and the session ends
at once, also when no sideband watches the call (bridge-only)."""

from __future__ import annotations

import pytest

from tests.support.broker_server import RunningBroker
from tests.support.flow import connect_browser, session_events, wait_call_ended, wait_session_ended
from tests.support.servers import RunningEmulator


@pytest.mark.parametrize("sideband", [False, True], ids=["bridge-only", "sideband"])
async def test_the_page_ends_its_call_and_the_session_records_it(
    broker: RunningBroker, emulator: RunningEmulator, sideband: bool
) -> None:
    session = await broker.create_session(tools=["lookup_order"], sideband=sideband)
    secret = session["client_secret"]["value"]
    browser = await connect_browser(broker, session)
    try:
        call_id = (await broker.get_session(session["id"]))["call_id"]
        end_url = f"/api/v1/sessions/{session['id']}/end"
        reply = await broker.request("POST", end_url, token=secret)
        assert reply.status == 200, reply.text
        assert reply.json() == {"id": session["id"], "ended": True}
        call = emulator.registry.get(call_id)
        assert call is not None
        await wait_call_ended(call)
        detail = await wait_session_ended(broker, session["id"])
        assert (detail["state"], detail["end_reason"]) == ("ended", "hangup")
        assert await session_events(broker, session["id"], "broker.browser_hangup")
        again = await broker.request("POST", end_url, token=secret)
        assert (again.status, again.json()["ended"]) == (200, False)
    finally:
        await browser.close()


async def test_only_the_offers_secret_may_end_the_call(broker: RunningBroker) -> None:
    session = await broker.create_session(tools=["lookup_order"], sideband=False)
    other = await broker.create_session(tools=["lookup_order"], sideband=False)
    browser = await connect_browser(broker, session)
    try:
        end_url = f"/api/v1/sessions/{session['id']}/end"
        anonymous = await broker.request("POST", end_url, token=None)
        assert anonymous.status == 401
        foreign = await broker.request("POST", end_url, token=other["client_secret"]["value"])
        assert (foreign.status, foreign.code) == (403, "token_session_mismatch")
        api_key = await broker.request("POST", end_url)  # an API key is not a browser's secret
        assert api_key.status == 401
        assert (await broker.get_session(session["id"]))["state"] == "live"
    finally:
        await browser.close()
