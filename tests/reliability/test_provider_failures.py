"""A failing provider on the offer: what the browser, the session, the event log, the log and
the metrics each show when ``POST /v1/realtime/calls`` answers 5xx or does not answer.

The emulator's fault switches (``create_call_error``, ``create_call_delay_ms``) make the real
provider path fail; nothing in the broker is mocked.
"""

from __future__ import annotations

import logging

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import BrokerFactory
from tests.support.broker_server import PROVIDER_KEY, RunningBroker
from tests.support.browser import FakeBrowser
from tests.support.flow import session_events
from tests.support.metrics import parse_metrics, scrape, value
from tests.support.servers import RunningEmulator, set_faults

EMULATOR_FAULT_MESSAGE = "emulator fault injection"
"""In the emulator's 5xx ``error.message``: the provider's text, which must go nowhere."""


async def create_key(broker: RunningBroker, *scopes: str) -> str:
    reply = await broker.request(
        "POST",
        "/api/v1/keys",
        json_body={"name": "-".join(scopes), "scopes": list(scopes), "tools": ["*"]},
    )
    assert reply.status == 201, reply.text
    key: str = reply.json()["key"]
    return key


def assert_nothing_from_the_provider_body(*texts: str) -> None:
    for text in texts:
        assert EMULATOR_FAULT_MESSAGE not in text
        assert PROVIDER_KEY not in text


@pytest.mark.parametrize("status", [500, 503])
async def test_provider_5xx_on_offer(
    status: int,
    broker: RunningBroker,
    emulator: RunningEmulator,
    http: aiohttp.ClientSession,
    browser: FakeBrowser,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 5xx from /calls is a 502 provider_error with the provider's status and code only;
    the session is failed with a readable reason and a broker.offer_failed event; a warning
    names the session; the offer, provider-error and session-end metrics move."""
    caplog.set_level(logging.WARNING, logger="broker")
    await set_faults(http, emulator, create_call_error={"status": status, "count": 1})
    session = await broker.create_session()

    reply = await broker.offer(session, await browser.create_offer())

    assert reply.status == 502
    assert reply.headers["Content-Type"].startswith("application/problem+json")
    problem = reply.json()
    assert problem["code"] == "provider_error"
    assert (problem["provider_status"], problem["provider_code"]) == (status, "server_error")
    assert problem["status"] == 502 and problem["type"] == "urn:broker:error:provider_error"
    assert f"HTTP {status}" in problem["detail"] and "new session" in problem["detail"]

    detail = await broker.get_session(session["id"])
    assert (detail["state"], detail["call_id"]) == ("failed", None)
    assert detail["end_reason"] == (
        f"offer: the provider refused the call with HTTP {status} (server_error)"
    )
    events = await session_events(broker, session["id"])
    assert events == [
        {
            "direction": "broker",
            "type": "broker.offer_failed",
            "payload": {
                "type": "broker.offer_failed",
                "code": "provider_error",
                "provider_status": status,
                "provider_code": "server_error",
            },
        }
    ]
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "broker.session.offer" and r.levelno == logging.WARNING
    ]
    assert warnings == [
        f"offer failed at the provider session_id={session['id']} code=provider_error "
        f"provider_status={status}"
    ]
    assert_nothing_from_the_provider_body(reply.text, detail["end_reason"], str(events))
    assert_nothing_from_the_provider_body(caplog.text)

    samples = await scrape(broker)
    assert value(samples, "broker_offers_total", outcome="provider_error") == 1
    assert value(samples, "broker_offers_total", outcome="answered") == 0
    assert value(samples, "broker_offer_seconds_count") == 1
    assert (
        value(samples, "broker_provider_errors_total", operation="create_call", status=str(status))
        == 1
    )
    assert value(samples, "broker_sessions_created_total") == 1
    assert value(samples, "broker_sessions_ended_total", reason="offer_failed") == 1

    # The fault was for one request: the next session's offer goes through.
    spare = FakeBrowser()
    try:
        healthy = await broker.create_session(sideband=False)
        answered = await broker.offer(healthy, await spare.create_offer())
        assert answered.status == 201, answered.text
    finally:
        await spare.close()
    samples = await scrape(broker)
    assert value(samples, "broker_offers_total", outcome="answered") == 1
    assert value(samples, "broker_offers_total", outcome="provider_error") == 1
    assert value(samples, "broker_offer_seconds_count") == 2
    assert value(samples, "broker_sessions_created_total") == 2


async def test_provider_timeout_on_offer(
    make_broker: BrokerFactory,
    emulator: RunningEmulator,
    http: aiohttp.ClientSession,
    browser: FakeBrowser,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """/calls answering after the broker's provider_timeout is a 504 provider_timeout (no
    provider status: there was no answer); the session fails with the timeout as its reason,
    a broker.offer_failed event, a warning, and a timeout in the provider-error metric."""
    caplog.set_level(logging.WARNING, logger="broker")
    broker = await make_broker(provider_timeout=0.3)
    await set_faults(http, emulator, create_call_delay_ms=2000)
    session = await broker.create_session()

    reply = await broker.offer(session, await browser.create_offer())

    assert reply.status == 504
    assert reply.headers["Content-Type"].startswith("application/problem+json")
    problem = reply.json()
    assert problem["code"] == "provider_timeout"
    assert "provider_status" not in problem
    assert "0.3s" in problem["detail"]

    detail = await broker.get_session(session["id"])
    assert (detail["state"], detail["call_id"]) == ("failed", None)
    assert detail["end_reason"] == "offer: the provider did not answer in 0.3s"
    events = await session_events(broker, session["id"], "broker.offer_failed")
    assert [e["payload"] for e in events] == [
        {"type": "broker.offer_failed", "code": "provider_timeout", "timeout_s": 0.3}
    ]
    assert any(
        r.name == "broker.session.offer"
        and r.levelno == logging.WARNING
        and session["id"] in r.getMessage()
        and "code=provider_timeout" in r.getMessage()
        for r in caplog.records
    )

    samples = await scrape(broker)
    assert value(samples, "broker_offers_total", outcome="provider_timeout") == 1
    assert (
        value(samples, "broker_provider_errors_total", operation="create_call", status="timeout")
        == 1
    )
    assert value(samples, "broker_sessions_ended_total", reason="offer_failed") == 1
    assert value(samples, "broker_offer_seconds_count") == 1
    assert value(samples, "broker_offer_seconds_sum") >= 0.3


async def test_refused_offers_are_counted_but_not_timed(broker: RunningBroker) -> None:
    """An offer the broker refuses before the provider (here: not an SDP offer) counts as
    refused, moves no provider metric and stays out of the latency histogram."""
    session = await broker.create_session()
    reply = await broker.offer(session, "v=0\r\n")
    assert (reply.status, reply.code) == (400, "invalid_sdp")
    samples = await scrape(broker)
    assert value(samples, "broker_offers_total", outcome="refused") == 1
    assert value(samples, "broker_offer_seconds_count") == 0
    assert not [key for key in samples if key[0] == "broker_provider_errors_total"]


async def test_metrics_route_requires_monitor_scope_and_parses(
    make_broker: BrokerFactory,
) -> None:
    """GET /metrics: 401 without a key, 403 for a key without monitor:read, 200 for
    monitor:read and admin; the body is Prometheus text that parses, with every family
    named broker_* (or the standard process_*/python_*); each app has its own registry (two
    brokers in one process count apart)."""
    broker = await make_broker()
    other = await make_broker()

    anonymous = await broker.request("GET", "/metrics", token=None)
    assert (anonymous.status, anonymous.code) == (401, "missing_credentials")
    creator = await create_key(broker, "sessions:create")
    refused = await broker.request("GET", "/metrics", token=creator)
    assert (refused.status, refused.code) == (403, "insufficient_scope")
    unknown = await broker.request("GET", "/metrics", token="bk_not-a-key")
    assert (unknown.status, unknown.code) == (401, "invalid_api_key")

    monitor = await create_key(broker, "monitor:read")
    reply = await broker.request("GET", "/metrics", token=monitor)
    assert reply.status == 200
    assert reply.headers["Cache-Control"] == "no-store"
    families = {f.name: f for f in text_string_to_metric_families(reply.text)}
    # The broker's own families, and the standard process and Python ones beside them.
    standard = ("process_", "python_")
    assert families and all(name.startswith(("broker_", *standard)) for name in families)
    for name in (
        "broker_offers",
        "broker_offer_seconds",
        "broker_provider_errors",
        "broker_sessions_created",
        "broker_sessions_ended",
        "broker_sideband_connects",
        "broker_sideband_failures",
        "broker_sessions_degraded",
        "broker_live_sessions",
        "broker_tool_calls",
        "broker_tool_seconds",
        "broker_tool_circuit_state",
        "broker_dispatch_seconds",
        "broker_tamper_events",
        "broker_tokens",
        "broker_responses",
    ):
        assert name in families, name
    samples = parse_metrics(reply.text)
    # The tool label knows the registry's tools from the start (and nothing else).
    assert value(samples, "broker_tool_circuit_state", tool="lookup_order") == 0
    assert (
        "broker_tool_calls_total",
        frozenset({("tool", "lookup_order"), ("outcome", "succeeded")}),
    ) in samples

    await broker.create_session()
    assert value(await scrape(broker), "broker_sessions_created_total") == 1
    assert value(await scrape(other), "broker_sessions_created_total") == 0
