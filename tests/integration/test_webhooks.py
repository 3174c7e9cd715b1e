"""``session.ended`` webhooks: one per end, whichever path ended the session; signed; retried.

Real HTTP on loopback: the broker posts to a real aiohttp receiver (tests/support/
webhook_receiver.py) and the signature is checked as an app would check it
(``broker.webhooks.signature.verify``). Backoffs are shortened so retries take a fraction of
a second.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from broker import app_state
from broker.api.audit import encode_cursor
from broker.audit.signing import public_key_from_pem
from broker.db.models import SessionState, WebhookDelivery
from broker.session.end_reason import EndReason
from broker.session.ending import end_session
from broker.webhooks import sender as webhooks
from broker.webhooks.sender import AttemptOutcome
from tests.conftest import BrokerFactory
from tests.support.broker_server import RunningBroker
from tests.support.browser import FakeBrowser
from tests.support.flow import LOOKUP_42_OUTPUT, ask, connect_browser, says, wait_session_ended
from tests.support.metrics import scrape, value
from tests.support.servers import RunningEmulator, set_faults
from tests.support.webhook_receiver import Delivery, WebhookReceiver, quick_webhooks

WEBHOOK_SECRET = "test-webhook-secret-" + "w" * 24
QUIET_S = 1.5
"""Long enough for a second (wrong) delivery to show up: past the sender's poll and every
test backoff."""


def webhook_settings(url: str, **overrides: Any) -> dict[str, Any]:
    return quick_webhooks(url, WEBHOOK_SECRET, **overrides)


async def deliveries_of(broker: RunningBroker, session_id: str) -> list[WebhookDelivery]:
    async with broker.app[app_state.SESSIONMAKER]() as s:
        rows = await s.scalars(
            select(WebhookDelivery).where(WebhookDelivery.session_id == session_id)
        )
        return list(rows.all())


async def wait_row(
    broker: RunningBroker,
    session_id: str,
    predicate: Callable[[WebhookDelivery], bool],
    timeout: float = 10,  # noqa: ASYNC109
) -> WebhookDelivery:
    """Poll the session's delivery row until ``predicate`` holds."""
    async with asyncio.timeout(timeout):
        while True:
            rows = await deliveries_of(broker, session_id)
            if rows and predicate(rows[0]):
                return rows[0]
            await asyncio.sleep(0.05)


def status_is(status: str) -> Callable[[WebhookDelivery], bool]:
    return lambda row: row.status == status


async def create_with_key(broker: RunningBroker, **body: Any) -> tuple[dict[str, Any], str]:
    """A session created by a fresh ``sessions:create`` key; the session and the key's id."""
    made = await broker.request(
        "POST",
        "/api/v1/keys",
        json_body={"name": "billing test", "scopes": ["sessions:create"], "tools": ["*"]},
    )
    assert made.status == 201, made.text
    body.setdefault("tools", ["lookup_order"])
    reply = await broker.request(
        "POST", "/api/v1/sessions", token=made.json()["key"], json_body=body
    )
    assert reply.status == 201, reply.text
    return reply.json(), made.json()["id"]


async def fail_offer(
    broker: RunningBroker, emulator: RunningEmulator, http: aiohttp.ClientSession
) -> dict[str, Any]:
    """A session whose offer the provider refuses (503): it ends ``failed``."""
    session = await broker.create_session()
    await set_faults(http, emulator, create_call_error={"status": 503})
    browser = FakeBrowser()
    try:
        reply = await broker.offer(session, await browser.create_offer())
    finally:
        await browser.close()
    assert (reply.status, reply.code) == (502, "provider_error"), reply.text
    return session


def assert_signed(delivery: Delivery) -> dict[str, Any]:
    payload = delivery.verified(WEBHOOK_SECRET)
    assert payload["id"] == delivery.id
    assert delivery.headers["Content-Type"] == "application/json"
    assert abs(int(delivery.headers["Webhook-Timestamp"]) - time.time()) < 30
    return payload


def assert_no_secret(broker: RunningBroker, caplog: pytest.LogCaptureFixture) -> None:
    assert WEBHOOK_SECRET not in caplog.text
    for reply in broker.replies:
        assert WEBHOOK_SECRET not in reply.text
        assert all(WEBHOOK_SECRET not in v for v in reply.headers.values())


async def assert_audit_head(broker: RunningBroker, session_id: str, head: Any) -> None:
    """``audit_head`` is a checkpoint of the chain: a record the API serves, signed by a key
    ``/api/v1/audit/keys`` publishes, and the session's own ``session.ended`` is under it."""
    assert set(head) == {"seq", "hash", "key_id", "signature", "at"}
    keys = (await broker.request("GET", "/api/v1/audit/keys")).json()["keys"]
    [pem] = [k["public_key"] for k in keys if k["key_id"] == head["key_id"]]
    public_key_from_pem(pem).verify(bytes.fromhex(head["signature"]), bytes.fromhex(head["hash"]))
    after = encode_cursor(head["seq"] - 1)
    reply = await broker.request("GET", f"/api/v1/audit?cursor={after}&limit=1")
    [record] = reply.json()["records"]
    assert (record["seq"], record["hash"], record["signature"]) == (
        head["seq"],
        head["hash"],
        head["signature"],
    )
    own = (await broker.request("GET", f"/api/v1/audit?session_id={session_id}")).json()
    ended = [r["seq"] for r in own["records"] if r["kind"] == "session.ended"]
    assert all(seq <= head["seq"] for seq in ended)


async def test_a_call_the_browser_hangs_up_is_announced_once_signed_with_its_usage(
    make_broker: BrokerFactory, receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """Invariant: one session end → exactly one delivery, signed, carrying what the session
    detail says (state, reason, times, usage, tool calls by outcome)."""
    caplog.set_level(logging.DEBUG, logger="broker")
    broker = await make_broker(**webhook_settings(receiver.url))
    session, key_id = await create_with_key(broker)
    browser = await connect_browser(broker, session)
    try:
        ask(browser, 'lookup_order {"order_id": "42"}')
        await browser.wait_for("response.done", says(LOOKUP_42_OUTPUT))
        ask(browser, "thanks")
        await browser.wait_for("response.done", says("You said: thanks"))
    finally:
        await browser.close()  # the browser leaves: the provider ends the call
    detail = await wait_session_ended(broker, session["id"], timeout=15)

    [delivery] = await receiver.wait_deliveries(1)
    payload = assert_signed(delivery)
    assert payload["type"] == "session.ended"
    data = payload["data"]
    assert data["session_id"] == session["id"]
    assert (data["state"], data["end_reason"]) == ("ended", detail["end_reason"])
    assert data["end_reason"].startswith("provider_closed")
    assert (data["model"], data["api_key_id"]) == (detail["model"], key_id)
    assert (data["started_at"], data["ended_at"]) == (detail["live_at"], detail["ended_at"])
    span = datetime.fromisoformat(detail["ended_at"]) - datetime.fromisoformat(detail["live_at"])
    assert data["duration_s"] == pytest.approx(span.total_seconds(), abs=0.002)
    assert data["usage"] == detail["usage"]
    assert data["usage"]["responses"] == 3  # the call, the tool's answer, the echo
    assert data["tool_calls"] == {"succeeded": 1, "failed": 0, "denied": 0, "cancelled": 0}
    assert datetime.fromisoformat(payload["created_at"]) <= datetime.now(UTC)
    await assert_audit_head(broker, session["id"], data["audit_head"])

    await asyncio.sleep(QUIET_S)
    assert len(receiver.deliveries) == 1
    [row] = await deliveries_of(broker, session["id"])
    assert (row.status, row.attempts, row.last_status) == ("delivered", 1, 200)
    assert row.payload == delivery.body.decode()
    assert any("webhook delivered" in r.getMessage() for r in caplog.records)
    assert delivery.headers["Webhook-Signature"] not in caplog.text
    assert_no_secret(broker, caplog)


async def test_every_other_end_path_is_announced_once(
    make_broker: BrokerFactory,
    receiver: WebhookReceiver,
    emulator: RunningEmulator,
    http: aiohttp.ClientSession,
) -> None:
    """An operator's hangup of a supervised call, of a bridge-only call (no sideband), and a
    failed offer each end their session through a different code path: one delivery each."""
    broker = await make_broker(**webhook_settings(receiver.url))
    supervised = await broker.create_session()
    bridge_only = await broker.create_session(sideband=False)
    browsers = [await connect_browser(broker, s) for s in (supervised, bridge_only)]
    try:
        for session in (supervised, bridge_only):
            reply = await broker.request(
                "POST", f"/api/v1/sessions/{session['id']}/hangup", json_body={"reason": "test"}
            )
            assert reply.status == 200, reply.text
            await wait_session_ended(broker, session["id"])
    finally:
        for browser in browsers:
            await browser.close()
    failed = await fail_offer(broker, emulator, http)

    got = await receiver.wait_deliveries(3)
    await asyncio.sleep(QUIET_S)
    assert len(receiver.deliveries) == 3
    by_session = {d.json()["data"]["session_id"]: assert_signed(d)["data"] for d in got}
    assert set(by_session) == {supervised["id"], bridge_only["id"], failed["id"]}
    for session in (supervised, bridge_only):
        data = by_session[session["id"]]
        assert (data["state"], data["end_reason"]) == ("ended", "ops_hangup")
        assert data["duration_s"] > 0
    failure = by_session[failed["id"]]
    assert failure["state"] == "failed" and failure["end_reason"].startswith("offer:")
    assert (failure["started_at"], failure["duration_s"]) == (None, 0.0)
    assert failure["usage"]["responses"] == 0
    assert {d.id for d in got} == {d.json()["id"] for d in got}  # three distinct ids


async def test_the_end_transition_queues_once_and_only_for_sessions_that_asked(
    make_broker: BrokerFactory, receiver: WebhookReceiver
) -> None:
    """The choke point itself (end_session): a second end is a no-op, so no second row; a
    session created while webhooks were off is never announced."""
    quiet = await make_broker()
    assert app_state.WEBHOOKS not in quiet.app  # no URL: no sender at all
    unannounced = await quiet.create_session()
    await quiet.close()
    broker = await make_broker(**webhook_settings(receiver.url))
    announced = await broker.create_session()
    sessionmaker = broker.app[app_state.SESSIONMAKER]
    for session in (announced, unannounced):
        # The first fails the session, the second would end it.
        for reason in (EndReason.OFFER_FAILED, EndReason.EXPIRED):
            await end_session(
                sessionmaker,
                broker.app[app_state.METRICS],
                session["id"],
                reason,
                from_states=[SessionState.CREATED],
            )
    [row] = await deliveries_of(broker, announced["id"])
    assert row.type == "session.ended"
    assert await deliveries_of(broker, unannounced["id"]) == []
    [delivery] = await receiver.wait_deliveries(1)
    assert assert_signed(delivery)["data"]["state"] == "failed"
    await asyncio.sleep(QUIET_S)
    assert len(receiver.deliveries) == 1


async def test_a_receiver_answering_500_twice_gets_the_same_event_a_third_time(
    make_broker: BrokerFactory,
    receiver: WebhookReceiver,
    emulator: RunningEmulator,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Retries carry the same Webhook-Id and the same body bytes (signed afresh), with a
    backoff between them; each attempt logs one line, none of them the secret."""
    caplog.set_level(logging.DEBUG, logger="broker")
    receiver.answer(500, 500)
    broker = await make_broker(**webhook_settings(receiver.url))
    session = await fail_offer(broker, emulator, http)

    got = await receiver.wait_deliveries(3)
    await asyncio.sleep(QUIET_S)
    assert [d.status for d in receiver.deliveries] == [500, 500, 200]
    assert len({d.id for d in got}) == 1 and len({d.body for d in got}) == 1
    for delivery in got:
        assert_signed(delivery)
    assert got[1].at - got[0].at >= 0.025  # at least half the first backoff
    assert got[2].at - got[1].at >= 0.05
    row = await wait_row(broker, session["id"], status_is("delivered"))
    assert (row.attempts, row.last_status) == (3, 200)
    sender = broker.app[app_state.WEBHOOKS]
    assert sender.outcomes == {AttemptOutcome.RETRY: 2, AttemptOutcome.DELIVERED: 1}
    samples = await scrape(broker)
    assert value(samples, "broker_webhook_attempts_total", outcome="retry") == 2
    assert value(samples, "broker_webhook_attempts_total", outcome="delivered") == 1
    assert value(samples, "broker_webhook_attempts_total", outcome="failed") == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "broker.webhooks.sender"]
    attempt_lines = [line for line in lines if got[0].id in line]
    assert len(attempt_lines) == 3
    assert sum("attempt failed" in line and "status=500" in line for line in attempt_lines) == 2
    assert all(d.headers["Webhook-Signature"] not in caplog.text for d in got)
    assert_no_secret(broker, caplog)


async def test_a_400_is_not_retried_and_the_delivery_fails(
    make_broker: BrokerFactory,
    receiver: WebhookReceiver,
    emulator: RunningEmulator,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="broker")
    receiver.answer(400)
    broker = await make_broker(**webhook_settings(receiver.url))
    session = await fail_offer(broker, emulator, http)
    await receiver.wait_deliveries(1)
    row = await wait_row(broker, session["id"], status_is("failed"))
    await asyncio.sleep(QUIET_S)
    assert len(receiver.deliveries) == 1
    assert (row.attempts, row.last_status, row.last_error) == (1, 400, "http 400")
    [line] = [
        r for r in caplog.records if r.name == "broker.webhooks.sender" and row.id in r.getMessage()
    ]
    assert line.levelno == logging.ERROR and "giving up" in line.getMessage()


async def test_gives_up_after_max_attempts(
    make_broker: BrokerFactory,
    receiver: WebhookReceiver,
    emulator: RunningEmulator,
    http: aiohttp.ClientSession,
) -> None:
    receiver.answer(503, 503, 503, 503)
    broker = await make_broker(**webhook_settings(receiver.url, webhook_max_attempts=3))
    session = await fail_offer(broker, emulator, http)
    row = await wait_row(broker, session["id"], status_is("failed"))
    await asyncio.sleep(QUIET_S)
    assert [d.status for d in receiver.deliveries] == [503, 503, 503]
    assert (row.attempts, row.last_status) == (3, 503)


async def test_retry_after_is_honoured(
    make_broker: BrokerFactory,
    receiver: WebhookReceiver,
    emulator: RunningEmulator,
    http: aiohttp.ClientSession,
) -> None:
    receiver.answer(429, headers={"Retry-After": "1"})
    broker = await make_broker(**webhook_settings(receiver.url, webhook_backoff_max_s=5.0))
    await fail_offer(broker, emulator, http)
    first, second = await receiver.wait_deliveries(2)
    assert (first.status, second.status) == (429, 200)
    assert second.at - first.at >= 0.95


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_receiver_that_is_down_gets_the_event_once_it_is_up(
    make_broker: BrokerFactory, emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    """Connection refused is retried like a 5xx."""
    port = _unused_port()
    late = WebhookReceiver()
    broker = await make_broker(
        **webhook_settings(f"http://127.0.0.1:{port}{late.path}", webhook_backoff_max_s=0.3)
    )
    session = await fail_offer(broker, emulator, http)
    row = await wait_row(broker, session["id"], lambda r: r.last_error is not None)
    assert (row.last_error, row.status) == ("ClientConnectorError", "pending")
    await late.start(port)
    try:
        [delivery] = await late.wait_deliveries(1)
        assert_signed(delivery)
        row = await wait_row(broker, session["id"], status_is("delivered"))
        assert row.attempts >= 2
    finally:
        await late.close()


async def test_a_pending_delivery_is_sent_by_the_next_broker(
    make_broker: BrokerFactory,
    receiver: WebhookReceiver,
    emulator: RunningEmulator,
    http: aiohttp.ClientSession,
) -> None:
    """The outbox outlives the process: a broker stopped between two attempts leaves the
    row pending, and the next broker on the same database delivers it, same id, same body."""
    receiver.answer(503)
    settings = webhook_settings(receiver.url, webhook_backoff_s=3.0, webhook_backoff_max_s=3.0)
    first = await make_broker(**settings)
    session = await fail_offer(first, emulator, http)
    [refused] = await receiver.wait_deliveries(1)
    await first.close()
    stopped_at = time.monotonic()

    second = await make_broker(**settings)
    _, delivered = await receiver.wait_deliveries(2, timeout=15)
    assert delivered.at > stopped_at
    assert (delivered.id, delivered.body) == (refused.id, refused.body)
    assert_signed(delivered)
    row = await wait_row(second, session["id"], status_is("delivered"))
    assert row.attempts == 2


@pytest.mark.postgres
async def test_announced_once_on_postgres(
    pg_url: str,
    make_broker: BrokerFactory,
    receiver: WebhookReceiver,
    emulator: RunningEmulator,
    http: aiohttp.ClientSession,
) -> None:
    receiver.answer(500)
    broker = await make_broker(database_url=pg_url, **webhook_settings(receiver.url))
    live = await broker.create_session()
    browser = await connect_browser(broker, live)
    try:
        ask(browser, "hello")
        await browser.wait_for("response.done", says("You said: hello"))
    finally:
        await browser.close()
    detail = await wait_session_ended(broker, live["id"], timeout=15)
    failed = await fail_offer(broker, emulator, http)
    got = await receiver.wait_deliveries(3)
    await asyncio.sleep(QUIET_S)
    assert len(receiver.deliveries) == 3
    by_session: dict[str, list[Delivery]] = {}
    for delivery in got:
        by_session.setdefault(assert_signed(delivery)["data"]["session_id"], []).append(delivery)
    assert sorted(len(v) for v in by_session.values()) == [1, 2]  # one was retried once
    [live_delivery] = {d.id: d for d in by_session[live["id"]]}.values()
    assert json.loads(live_delivery.body)["data"]["usage"] == detail["usage"]
    assert detail["usage"]["responses"] == 1
    await assert_audit_head(
        broker, live["id"], json.loads(live_delivery.body)["data"]["audit_head"]
    )
    assert failed["id"] in by_session


async def test_a_crash_of_our_own_counts_as_an_attempt_and_backs_off(
    make_broker: BrokerFactory,
    receiver: WebhookReceiver,
    emulator: RunningEmulator,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug while building the body must not spin the sender on the same row: the attempt
    is counted, the row backs off, and the next attempt goes out."""
    caplog.set_level(logging.ERROR, logger="broker.webhooks")
    real = webhooks.render_session_ended
    calls = 0

    def flaky(*args: Any) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("render bug")
        return real(*args)

    monkeypatch.setattr(webhooks, "render_session_ended", flaky)
    broker = await make_broker(**webhook_settings(receiver.url))
    session = await fail_offer(broker, emulator, http)
    [delivery] = await receiver.wait_deliveries(1)
    assert_signed(delivery)
    row = await wait_row(broker, session["id"], status_is("delivered"))
    assert (row.attempts, calls) == (2, 2)
    assert sum("webhook attempt crashed" in r.getMessage() for r in caplog.records) == 1
