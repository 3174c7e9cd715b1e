"""Token usage: every ``response.done`` of a call summed per session, per API key, in metrics.

A scripted call on loopback (aiortc browser, emulator, the broker's sideband) makes several
responses; the browser receives the same ``response.done`` events on its data channel, so
their usage, summed by the test, is what the broker must report everywhere.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from broker import app_state
from broker.db import queries
from broker.record.usage import Usage, usage_of_response_done
from sideband.events import parse_observed_event
from tests.conftest import BrokerFactory
from tests.support.broker_server import RunningBroker
from tests.support.browser import FakeBrowser
from tests.support.flow import LOOKUP_42_OUTPUT, ask, connect_browser, says, wait_session_ended
from tests.support.metrics import moved, scrape
from tests.support.tool_backend import ToolBackend


def usage_seen(browser: FakeBrowser) -> Usage:
    """The summed usage of every ``response.done`` the browser received."""
    total = Usage()
    for event in browser.events:
        if (usage := usage_of_response_done(parse_observed_event(event))) is not None:
            total += usage
    return total


async def key_usage(broker: RunningBroker, key_id: str) -> dict[str, Any]:
    reply = await broker.request("GET", "/api/v1/keys?include=usage")
    assert reply.status == 200, reply.text
    [row] = [k for k in reply.json()["keys"] if k["id"] == key_id]
    assert set(row) == {
        "id",
        "name",
        "scopes",
        "tools",
        "tenant",
        "created_at",
        "revoked_at",
        "usage",
    }
    usage: dict[str, Any] = row["usage"]
    return usage


async def wait_usage(
    broker: RunningBroker,
    session_id: str,
    responses: int,
    timeout: float = 5,  # noqa: ASYNC109
) -> dict[str, Any]:
    """Poll the session detail until its usage counts ``responses`` responses."""
    async with asyncio.timeout(timeout):
        while True:
            detail = await broker.get_session(session_id)
            if detail["usage"]["responses"] >= responses:
                return detail
            await asyncio.sleep(0.05)


async def run_call(broker: RunningBroker, token: str) -> tuple[dict[str, Any], FakeBrowser]:
    """A call with four responses: a tool call, the tool's answer, two echoes."""
    reply = await broker.request(
        "POST", "/api/v1/sessions", token=token, json_body={"tools": ["lookup_order"]}
    )
    assert reply.status == 201, reply.text
    session: dict[str, Any] = reply.json()
    browser = await connect_browser(broker, session)
    try:
        ask(browser, "hello there")
        await browser.wait_for("response.done", says("You said: hello there"))
        # Visible while the call is live, not only once it ended.
        live = await wait_usage(broker, session["id"], 1)
        assert live["state"] == "live" and live["usage"]["input_tokens"] > 0
        ask(browser, 'lookup_order {"order_id": "42"}')
        await browser.wait_for("response.done", says(LOOKUP_42_OUTPUT))
        ask(browser, "and one more thing to say")
        await browser.wait_for("response.done", says("You said: and one more thing"))
    finally:
        await browser.close()
    return session, browser


async def test_usage_is_summed_per_session_per_key_and_in_metrics(
    make_broker: BrokerFactory,
) -> None:
    """Invariant: the session's usage is the sum over its response.done events, shown the
    same in the detail, the list and the owning key; the metrics moved by the same counts."""
    broker = await make_broker()
    made = await broker.request(
        "POST",
        "/api/v1/keys",
        json_body={"name": "metered", "scopes": ["sessions:create"], "tools": ["lookup_order"]},
    )
    key_id, token = made.json()["id"], made.json()["key"]
    assert (await key_usage(broker, key_id))["responses"] == 0
    before = await scrape(broker)

    session, browser = await run_call(broker, token)
    detail = await wait_session_ended(broker, session["id"], timeout=15)
    expected = usage_seen(browser)
    assert expected.responses == 4
    # The emulator reports text and audio, and the growing conversation as cached input.
    assert expected.input_cached_tokens > 0 and expected.output_audio_tokens > 0
    assert expected.total_tokens == expected.input_tokens + expected.output_tokens

    assert detail["usage"] == expected.as_json()
    listed = await broker.request("GET", "/api/v1/sessions?state=ended&limit=5")
    [row] = [r for r in listed.json()["sessions"] if r["id"] == session["id"]]
    assert row["usage"] == expected.as_json()
    assert await key_usage(broker, key_id) == expected.as_json()

    after = await scrape(broker)
    assert moved(before, after, "broker_responses_total") == 4
    for (direction, modality), count in expected.metric_tokens().items():
        assert (
            moved(before, after, "broker_tokens_total", direction=direction, modality=modality)
            == count
        ), (direction, modality)


async def test_a_keys_usage_adds_up_its_sessions_and_no_other_keys(
    make_broker: BrokerFactory,
) -> None:
    broker = await make_broker()
    keys = []
    for name in ("one", "two"):
        made = await broker.request(
            "POST",
            "/api/v1/keys",
            json_body={"name": name, "scopes": ["sessions:create"], "tools": ["lookup_order"]},
        )
        keys.append((made.json()["id"], made.json()["key"]))
    (first_id, first_token), (second_id, second_token) = keys
    one, browser_one = await run_call(broker, first_token)
    two, browser_two = await run_call(broker, first_token)
    other, browser_other = await run_call(broker, second_token)
    for session in (one, two, other):
        await wait_session_ended(broker, session["id"], timeout=15)
    assert await key_usage(broker, first_id) == (
        (usage_seen(browser_one) + usage_seen(browser_two)).as_json()
    )
    assert await key_usage(broker, second_id) == usage_seen(browser_other).as_json()


@pytest.mark.postgres
async def test_usage_on_postgres(pg_url: str, make_broker: BrokerFactory) -> None:
    broker = await make_broker(database_url=pg_url)
    made = await broker.request(
        "POST",
        "/api/v1/keys",
        json_body={"name": "pg", "scopes": ["sessions:create"], "tools": ["lookup_order"]},
    )
    session, browser = await run_call(broker, made.json()["key"])
    detail = await wait_session_ended(broker, session["id"], timeout=15)
    assert detail["usage"] == usage_seen(browser).as_json()
    assert await key_usage(broker, made.json()["id"]) == usage_seen(browser).as_json()


async def test_key_usage_is_only_computed_on_request(make_broker: BrokerFactory) -> None:
    broker = await make_broker()
    await broker.new_key("sessions:create")
    plain = await broker.request("GET", "/api/v1/keys")
    assert all("usage" not in row for row in plain.json()["keys"])
    bad = await broker.request("GET", "/api/v1/keys?include=secrets")
    assert (bad.status, bad.code, bad.json()["param"]) == (400, "invalid_query", "include")
    monitor = await broker.new_key("monitor:read")
    refused = await broker.request("GET", "/api/v1/keys?include=usage", token=monitor)
    assert (refused.status, refused.code) == (403, "insufficient_scope")


async def test_a_response_that_made_a_tool_call_is_billed_before_the_tool_runs(
    reconnecting_broker: RunningBroker, tool_backend: ToolBackend
) -> None:
    """Usage is stored with its ``response.done`` before that response's tools may act, so
    an instance that dies while a tool runs (another takes the call over) loses no billed
    response."""
    broker = reconnecting_broker
    session = await broker.create_session(tools=["hold"])
    browser = await connect_browser(broker, session)
    try:
        ask(browser, "hold")
        await tool_backend.wait_calls_to("hold")
        async with broker.app[app_state.SESSIONMAKER]() as s:
            row = await queries.get_session_row(s, session["id"])
        assert row is not None
        assert row.usage_responses == 1  # the response that made the call, nothing else yet
        tool_backend.release_holds()
    finally:
        await browser.close()
