"""The browser routes cannot be used to wear the broker down (issue 14, items 11 and 12).

A page holds a client secret: each of its routes (offer, bridge, end) has a per-session rate
limit checked right after the token and before any database work, and no request body, from
a page or a backend, may take longer than ``BROKER_BODY_READ_TIMEOUT_S`` to arrive.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from broker import Settings, SettingsError, app_state
from tests.conftest import BrokerFactory
from tests.support.broker_server import ADMIN_KEY, Reply, RunningBroker
from tests.support.browser import FakeBrowser
from tests.support.flow import LOOKUP_42_OUTPUT, connect_browser


@pytest.fixture
async def offer_sdp() -> AsyncIterator[str]:
    """A real browser offer (aiortc), for requests that must get past the SDP check."""
    browser = FakeBrowser()
    yield await browser.create_offer()
    await browser.close()


@contextmanager
def sql_about(engine: AsyncEngine, needle: str) -> Iterator[list[str]]:
    """Every statement ``engine`` runs while the block runs that names ``needle`` (in its
    text or its parameters): the SQL a request about one session caused, whatever else the
    broker's background tasks ask meanwhile. The rate limiter's own statements on PostgreSQL
    (its shared bucket, ``rate_buckets``) are the check itself, not a question about the
    session, and are left out."""
    seen: list[str] = []

    def before(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_rest: Any) -> None:
        if "rate_buckets" in statement:
            return
        if needle in statement or needle in repr(parameters):
            seen.append(" ".join(statement.split()))

    event.listen(engine.sync_engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", before)


async def _end(broker: RunningBroker, session: dict[str, Any]) -> Reply:
    return await broker.request(
        "POST", f"/api/v1/sessions/{session['id']}/end", token=session["client_secret"]["value"]
    )


def _assert_rate_limited(reply: Reply) -> None:
    assert (reply.status, reply.code) == (429, "rate_limited"), reply.text
    assert reply.headers["Content-Type"].startswith("application/problem+json")
    # One token a minute and none left: the next one is up to a minute away, in whole seconds.
    assert reply.headers["Retry-After"].isdigit()
    assert 1 <= int(reply.headers["Retry-After"]) <= 60
    assert reply.json()["retry_after"] == int(reply.headers["Retry-After"])


# --- item 11: per-session rate limits on the offer, bridge and end routes --------------------


async def test_a_flooded_bridge_is_refused_before_any_sql_and_only_for_that_session(
    make_broker: BrokerFactory,
) -> None:
    """Past its burst, a session's bridge requests are 429 ``rate_limited`` with Retry-After,
    decided before the database is asked about the session; another session's bridge and
    the same session's other routes keep their own buckets."""
    broker = await make_broker(bridge_rate=1, bridge_burst=3)
    flooded = await broker.create_session(sideband=False)
    other = await broker.create_session(sideband=False)
    for _ in range(3):
        reply = await broker.bridge(flooded, "lookup_order", "call_1", {"order_id": "42"})
        assert (reply.status, reply.code) == (409, "session_not_live")
    with sql_about(broker.app[app_state.ENGINE], flooded["id"]) as seen:
        limited = await broker.bridge(flooded, "lookup_order", "call_1", {"order_id": "42"})
    _assert_rate_limited(limited)
    assert seen == []
    reply = await broker.bridge(other, "lookup_order", "call_1", {"order_id": "42"})
    assert (reply.status, reply.code) == (409, "session_not_live")
    assert (await _end(broker, flooded)).status != 429


async def test_a_live_call_flooding_its_bridge_gets_its_burst_and_429s(
    make_broker: BrokerFactory,
) -> None:
    """A page on a live call that fires 40 bridge requests at once gets exactly its burst
    through (the real tool answers, once per call id) and 429 for the rest; nothing else."""
    broker = await make_broker(bridge_rate=1, bridge_burst=5)
    session = await broker.create_session(sideband=False)
    browser = await connect_browser(broker, session)
    try:
        async with asyncio.timeout(30):
            replies = await asyncio.gather(
                *(
                    broker.bridge(session, "lookup_order", "call_flood", {"order_id": "42"})
                    for _ in range(40)
                )
            )
    finally:
        await browser.close()
    statuses = sorted(r.status for r in replies)
    assert statuses == [200] * 5 + [429] * 35
    assert all(r.json()["output"] == LOOKUP_42_OUTPUT for r in replies if r.status == 200)
    for reply in replies:
        if reply.status == 429:
            _assert_rate_limited(reply)


async def test_offers_and_ends_are_rate_limited_per_session_before_any_sql(
    make_broker: BrokerFactory,
) -> None:
    """The offer and the end route each have a per-session bucket (``BROKER_OFFER_*``); a
    refused request reaches no SQL about the session, and the bridge's bucket is separate."""
    broker = await make_broker(offer_rate=1, offer_burst=2)
    session = await broker.create_session(sideband=False)
    engine = broker.app[app_state.ENGINE]
    for _ in range(2):
        reply = await broker.offer(session, "v=0\r\n")
        assert (reply.status, reply.code) == (400, "invalid_sdp")
    with sql_about(engine, session["id"]) as seen:
        _assert_rate_limited(await broker.offer(session, "v=0\r\n"))
    assert seen == []
    for _ in range(2):
        assert (await _end(broker, session)).status == 403  # not the offer's secret yet
    with sql_about(engine, session["id"]) as seen:
        _assert_rate_limited(await _end(broker, session))
    assert seen == []
    reply = await broker.bridge(session, "lookup_order", "call_1", {"order_id": "42"})
    assert (reply.status, reply.code) == (409, "session_not_live")


async def test_requests_with_a_bad_token_spend_nothing(make_broker: BrokerFactory) -> None:
    """The bucket is keyed on a verified client secret's session: requests whose token fails
    (forged, another session's) are refused by the token check and cost the session nothing."""
    broker = await make_broker(bridge_rate=1, bridge_burst=2)
    session = await broker.create_session(sideband=False)
    other = await broker.create_session(sideband=False)
    value = session["client_secret"]["value"]
    forged = value[:-4] + ("AAAA" if not value.endswith("AAAA") else "BBBB")
    path = f"/api/v1/sessions/{session['id']}/tools/lookup_order"
    body = {"call_id": "call_1", "arguments": {"order_id": "42"}}
    for token in (forged, other["client_secret"]["value"]) * 3:
        reply = await broker.request("POST", path, token=token, json_body=body)
        assert reply.status in (401, 403), reply.text
    for _ in range(2):
        reply = await broker.bridge(session, "lookup_order", "call_1", {"order_id": "42"})
        assert (reply.status, reply.code) == (409, "session_not_live")
    _assert_rate_limited(await broker.bridge(session, "lookup_order", "call_1", {}))


async def test_a_zero_rate_turns_the_browser_limits_off(make_broker: BrokerFactory) -> None:
    """``BROKER_BRIDGE_RATE=0`` / ``BROKER_OFFER_RATE=0`` disable the limits."""
    broker = await make_broker(bridge_rate=0, bridge_burst=1, offer_rate=0, offer_burst=1)
    session = await broker.create_session(sideband=False)
    for _ in range(5):
        assert (await broker.bridge(session, "lookup_order", "c", {})).status == 409
        assert (await broker.offer(session, "v=0\r\n")).status == 400
        assert (await _end(broker, session)).status == 403


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"BROKER_SIGNING_KEY_FILE": str(tmp_path / "key"), **extra}


def test_browser_limit_settings_defaults_and_bounds(tmp_path: Path) -> None:
    """The browser limits and the body deadline are on by default and validated."""
    default = Settings.from_env(_env(tmp_path))
    assert (default.bridge_rate, default.bridge_burst) == (120, 30)
    assert (default.offer_rate, default.offer_burst) == (12, 5)
    assert default.body_read_timeout_s == 10.0
    custom = Settings.from_env(
        _env(
            tmp_path,
            BROKER_BRIDGE_RATE="0",
            BROKER_BRIDGE_BURST="7",
            BROKER_OFFER_RATE="3",
            BROKER_OFFER_BURST="2",
            BROKER_BODY_READ_TIMEOUT_S="2.5",
        )
    )
    assert (custom.bridge_rate, custom.bridge_burst, custom.offer_rate, custom.offer_burst) == (
        0,
        7,
        3,
        2,
    )
    assert custom.body_read_timeout_s == 2.5
    for name, value in (
        ("BROKER_BRIDGE_BURST", "0"),
        ("BROKER_OFFER_BURST", "0"),
        ("BROKER_BRIDGE_RATE", "-1"),
        ("BROKER_BODY_READ_TIMEOUT_S", "0"),
        ("BROKER_BODY_READ_TIMEOUT_S", "301"),
    ):
        with pytest.raises(SettingsError, match=name):
            Settings.from_env(_env(tmp_path, **{name: value}))


# --- item 12: a read deadline on every request body ------------------------------------------


async def _trickled_request(
    broker: RunningBroker, path: str, headers: dict[str, str], body: bytes
) -> tuple[int, dict[str, Any]]:
    """Send the headers and the first byte of ``body`` at once, then one byte every 50 ms,
    never the last one; return the status and JSON body of whatever the broker answers."""
    url = urlsplit(broker.base_url)
    assert url.hostname is not None and url.port is not None
    reader, writer = await asyncio.open_connection(url.hostname, url.port)

    async def trickle() -> None:
        for byte in body[1:-1]:
            await asyncio.sleep(0.05)
            writer.write(bytes([byte]))
            await writer.drain()

    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\n{head}"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body[:1]
    )
    trickler = asyncio.create_task(trickle())
    try:
        async with asyncio.timeout(10):
            await writer.drain()
            status_line = await reader.readline()
            raw_headers = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in raw_headers.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            reply = json.loads(await reader.readexactly(length))
    finally:
        trickler.cancel()
        await asyncio.gather(trickler, return_exceptions=True)
        writer.close()
        await asyncio.gather(writer.wait_closed(), return_exceptions=True)
    return int(status_line.split()[1]), reply


async def test_a_trickled_offer_is_408_and_spends_nothing(
    make_broker: BrokerFactory, offer_sdp: str
) -> None:
    """An SDP offer whose body does not all arrive within the read deadline is answered 408
    ``body_timeout`` (problem+json) instead of holding the request open; the client secret
    is not spent, so the page can still make its offer."""
    broker = await make_broker(body_read_timeout_s=0.5)
    session = await broker.create_session()
    status, reply = await _trickled_request(
        broker,
        f"/api/v1/sessions/{session['id']}/realtime-offer",
        {
            "Authorization": f"Bearer {session['client_secret']['value']}",
            "Content-Type": "application/sdp",
        },
        offer_sdp.encode(),
    )
    assert (status, reply["code"], reply["status"]) == (408, "body_timeout", 408)
    assert set(reply) >= {"type", "title", "status", "detail", "code"}
    assert (await broker.offer(session, offer_sdp)).status == 201


@pytest.mark.parametrize("route", ["create", "bridge"])
async def test_a_trickled_json_body_is_408(make_broker: BrokerFactory, route: str) -> None:
    """JSON bodies (a backend's session create, a page's bridge call) have the same deadline."""
    broker = await make_broker(body_read_timeout_s=0.5)
    body = json.dumps({"tools": ["lookup_order"], "instructions": "x" * 2000}).encode()
    path, token = "/api/v1/sessions", ADMIN_KEY
    if route == "bridge":
        session = await broker.create_session(sideband=False)
        body = json.dumps({"call_id": "call_1", "arguments": {"order_id": "4" * 2000}}).encode()
        path = f"/api/v1/sessions/{session['id']}/tools/lookup_order"
        token = session["client_secret"]["value"]
    status, reply = await _trickled_request(
        broker,
        path,
        {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        body,
    )
    assert (status, reply["code"]) == (408, "body_timeout")
