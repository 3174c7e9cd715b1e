"""Every bad request gets its status and stable code, and leaves the session usable.

Every reply in these tests also passes through ``assert_no_provider_key`` (the test client
checks each body and header for the provider key).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from broker.auth.principals import mint_client_secret
from tests.conftest import BrokerFactory
from tests.support.broker_server import RunningBroker
from tests.support.browser import FakeBrowser
from tests.support.flow import connect_browser


@pytest.fixture
async def offer_sdp() -> AsyncIterator[str]:
    """A real browser offer (aiortc), for requests that must get past the SDP check."""
    browser = FakeBrowser()
    yield await browser.create_offer()
    await browser.close()


def _offer_path(session: dict[str, Any]) -> str:
    return f"/api/v1/sessions/{session['id']}/realtime-offer"


# --- POST /api/v1/sessions ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "code"),
    [(None, "missing_credentials"), ("not-a-key", "invalid_api_key")],
)
async def test_create_session_requires_a_valid_api_key(
    broker: RunningBroker, token: str | None, code: str
) -> None:
    reply = await broker.request("POST", "/api/v1/sessions", token=token, json_body={"tools": []})
    assert (reply.status, reply.code) == (401, code)
    assert reply.headers["Content-Type"].startswith("application/problem+json")
    assert set(reply.json()) >= {"type", "title", "status", "detail", "code"}


async def test_basic_auth_scheme_is_refused(broker: RunningBroker) -> None:
    reply = await broker.request(
        "POST",
        "/api/v1/sessions",
        token=None,
        headers={"Authorization": "Basic abc"},
        json_body={},
    )
    assert (reply.status, reply.code) == (401, "invalid_authorization")


async def test_unknown_tool_is_422(broker: RunningBroker) -> None:
    reply = await broker.request(
        "POST", "/api/v1/sessions", json_body={"tools": ["lookup_order", "rm_rf"]}
    )
    assert (reply.status, reply.code) == (422, "unknown_tool")
    assert reply.json()["tools"] == ["rm_rf"]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        ("{not json", "application/json", 400, "invalid_json"),
        ("[1, 2]", "application/json", 400, "invalid_json"),
        ('{"tools": []}', "text/plain", 415, "unsupported_media_type"),
        ('{"tools": "lookup_order"}', "application/json", 422, "invalid_request"),
        ('{"tools": [], "owner": "me"}', "application/json", 422, "invalid_request"),
        ('{"model": ""}', "application/json", 422, "invalid_request"),
    ],
)
async def test_malformed_create_bodies(
    broker: RunningBroker, body: str, content_type: str, status: int, code: str
) -> None:
    reply = await broker.request("POST", "/api/v1/sessions", data=body, content_type=content_type)
    assert (reply.status, reply.code) == (status, code), reply.text


async def test_oversized_json_body_is_413(broker: RunningBroker) -> None:
    body = {"tools": [], "instructions": "x" * 300_000}
    reply = await broker.request("POST", "/api/v1/sessions", json_body=body)
    assert (reply.status, reply.code) == (413, "payload_too_large")


async def test_unknown_route_is_problem_json(broker: RunningBroker) -> None:
    reply = await broker.request("GET", "/api/v1/nothing-here")
    assert (reply.status, reply.code) == (404, "not_found")
    assert reply.headers["Content-Type"].startswith("application/problem+json")


# --- POST /api/v1/sessions/{id}/realtime-offer ---------------------------------------------


async def test_offer_with_a_forged_token_is_401(broker: RunningBroker, offer_sdp: str) -> None:
    session = await broker.create_session()
    value = session["client_secret"]["value"]
    header, payload, signature = value.split(".")
    forged = f"{header}.{payload}.{signature[:-4]}AAAA"
    reply = await broker.request(
        "POST", _offer_path(session), token=forged, data=offer_sdp, content_type="application/sdp"
    )
    assert (reply.status, reply.code) == (401, "token_invalid")


async def test_offer_with_an_api_key_instead_of_a_client_secret_is_401(
    broker: RunningBroker, offer_sdp: str
) -> None:
    session = await broker.create_session()
    reply = await broker.request(
        "POST", _offer_path(session), data=offer_sdp, content_type="application/sdp"
    )
    assert (reply.status, reply.code) == (401, "token_invalid")


async def test_offer_with_an_expired_token_is_401(broker: RunningBroker, offer_sdp: str) -> None:
    session = await broker.create_session()
    expired, _ = mint_client_secret(session["id"], broker.settings.signing_key, ttl=60, now=0)
    reply = await broker.request(
        "POST", _offer_path(session), token=expired, data=offer_sdp, content_type="application/sdp"
    )
    assert (reply.status, reply.code) == (401, "token_expired")


async def test_offer_with_another_sessions_token_is_403(
    broker: RunningBroker, offer_sdp: str
) -> None:
    mine = await broker.create_session()
    theirs = await broker.create_session()
    reply = await broker.request(
        "POST",
        _offer_path(theirs),
        token=mine["client_secret"]["value"],
        data=offer_sdp,
        content_type="application/sdp",
    )
    assert (reply.status, reply.code) == (403, "token_session_mismatch")


async def test_offer_for_an_unknown_session_is_404(broker: RunningBroker, offer_sdp: str) -> None:
    ghost = "sess_" + secrets.token_hex(12)
    token, _ = mint_client_secret(ghost, broker.settings.signing_key, ttl=60)
    reply = await broker.request(
        "POST",
        f"/api/v1/sessions/{ghost}/realtime-offer",
        token=token,
        data=offer_sdp,
        content_type="application/sdp",
    )
    assert (reply.status, reply.code) == (404, "session_not_found")


async def test_second_offer_is_409(broker: RunningBroker, offer_sdp: str) -> None:
    """A fresh, unspent token for an offered session: 409 (the spent one is a replay, 401 —
    tests/security/test_tokens.py)."""
    session = await broker.create_session(sideband=False)
    browser = await connect_browser(broker, session)
    try:
        fresh, _ = mint_client_secret(session["id"], broker.settings.signing_key, ttl=60)
        reply = await broker.request(
            "POST",
            _offer_path(session),
            token=fresh,
            data=offer_sdp,
            content_type="application/sdp",
        )
        assert (reply.status, reply.code) == (409, "session_already_offered")
        assert reply.json()["state"] == "live"
    finally:
        await browser.close()


def _sdp_without(sdp: str, prefix: str) -> str:
    return "\r\n".join(line for line in sdp.split("\r\n") if not line.startswith(prefix))


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda sdp: "hello, I am not SDP", id="garbage"),
        pytest.param(lambda sdp: "", id="empty"),
        pytest.param(lambda sdp: sdp.replace("a=setup:actpass", "a=setup:active"), id="answer"),
        pytest.param(lambda sdp: sdp.split("m=audio")[0], id="no-media"),
        pytest.param(lambda sdp: _sdp_without(sdp, "a=fingerprint"), id="no-fingerprint"),
    ],
)
async def test_not_an_sdp_offer_is_400_and_the_session_stays_usable(
    broker: RunningBroker, offer_sdp: str, mutate: Any
) -> None:
    session = await broker.create_session(sideband=False)
    reply = await broker.offer(session, mutate(offer_sdp))
    assert (reply.status, reply.code) == (400, "invalid_sdp")
    assert (await broker.get_session(session["id"]))["state"] == "created"
    # Nothing was spent: the same session still takes a real offer.
    browser = await connect_browser(broker, session)
    await browser.close()


async def test_non_utf8_sdp_is_400(broker: RunningBroker) -> None:
    session = await broker.create_session()
    reply = await broker.offer(session, b"v=0\r\n\xff\xfe")  # type: ignore[arg-type]
    assert (reply.status, reply.code) == (400, "invalid_sdp")


async def test_sdp_over_64_kib_is_413(broker: RunningBroker, offer_sdp: str) -> None:
    session = await broker.create_session()
    padded = offer_sdp + "a=x-padding:" + "p" * (64 * 1024) + "\r\n"
    reply = await broker.offer(session, padded)
    assert (reply.status, reply.code) == (413, "payload_too_large")


async def test_offer_with_a_json_content_type_is_415(broker: RunningBroker, offer_sdp: str) -> None:
    session = await broker.create_session()
    reply = await broker.request(
        "POST",
        _offer_path(session),
        token=session["client_secret"]["value"],
        json_body={"sdp": offer_sdp},
    )
    assert (reply.status, reply.code) == (415, "unsupported_media_type")


async def test_provider_rejecting_the_call_is_502_and_the_session_failed(
    make_broker: BrokerFactory, offer_sdp: str
) -> None:
    """A provider 401 (wrong key here) surfaces as 502 with the provider's status only."""
    from broker import Secret

    broker = await make_broker(provider_api_key=Secret("sk-wrong-key-0000000000000000"))
    session = await broker.create_session()
    reply = await broker.offer(session, offer_sdp)
    assert (reply.status, reply.code) == (502, "provider_error")
    assert reply.json()["provider_status"] == 401
    assert "sk-wrong-key" not in reply.text
    detail = await broker.get_session(session["id"])
    assert detail["state"] == "failed" and detail["call_id"] is None


async def test_unreachable_provider_is_502(make_broker: BrokerFactory, offer_sdp: str) -> None:
    broker = await make_broker(provider_base_url="http://127.0.0.1:9/v1")
    session = await broker.create_session()
    reply = await broker.offer(session, offer_sdp)
    assert (reply.status, reply.code) == (502, "provider_unreachable")


async def test_provider_timeout_is_504(make_broker: BrokerFactory, offer_sdp: str) -> None:
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(status=500)

    app = web.Application()
    app.router.add_post("/v1/realtime/calls", hang)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        broker = await make_broker(
            provider_base_url=f"http://127.0.0.1:{port}/v1", provider_timeout=0.3
        )
        session = await broker.create_session()
        reply = await broker.offer(session, offer_sdp)
        assert (reply.status, reply.code) == (504, "provider_timeout")
        assert (await broker.get_session(session["id"]))["state"] == "failed"
    finally:
        release.set()
        await runner.cleanup()


# --- POST /api/v1/sessions/{id}/tools/{tool} and GET /api/v1/sessions/{id} ------------------


async def test_bridge_before_the_offer_is_409(broker: RunningBroker) -> None:
    session = await broker.create_session(sideband=False)
    reply = await broker.bridge(session, "lookup_order", "call_1", {"order_id": "1"})
    assert (reply.status, reply.code) == (409, "session_not_live")


async def test_bridge_needs_the_sessions_client_secret(broker: RunningBroker) -> None:
    session = await broker.create_session(sideband=False)
    other = await broker.create_session(sideband=False)
    reply = await broker.request(
        "POST",
        f"/api/v1/sessions/{session['id']}/tools/lookup_order",
        token=other["client_secret"]["value"],
        json_body={"call_id": "call_1", "arguments": "{}"},
    )
    assert (reply.status, reply.code) == (403, "token_session_mismatch")


async def test_bridge_body_is_validated(broker: RunningBroker) -> None:
    session = await broker.create_session(sideband=False)
    reply = await broker.request(
        "POST",
        f"/api/v1/sessions/{session['id']}/tools/lookup_order",
        token=session["client_secret"]["value"],
        json_body={"call_id": "../../etc", "arguments": "{}"},
    )
    assert (reply.status, reply.code) == (422, "invalid_request")


async def test_get_unknown_session_is_404(broker: RunningBroker) -> None:
    reply = await broker.request("GET", "/api/v1/sessions/sess_nope")
    assert (reply.status, reply.code) == (404, "session_not_found")


# --- hostile JSON ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        '{"tools": [], "metadata": {"x": NaN}}',
        '{"tools": [], "metadata": {"x": Infinity}}',
        "[" * 5000 + "]" * 5000,
        '{"a":' * 3000 + "1" + "}" * 3000,
    ],
)
async def test_non_standard_or_deeply_nested_json_is_400(broker: RunningBroker, body: str) -> None:
    reply = await broker.request(
        "POST", "/api/v1/sessions", data=body, content_type="application/json"
    )
    assert (reply.status, reply.code) == (400, "invalid_json")


async def test_hostile_bridge_arguments_are_denied_cleanly(
    broker: RunningBroker, tool_backend: Any
) -> None:
    """Arguments that would crash a naive parser are a denied call, recorded, not a 500."""
    session = await broker.create_session(tools=["lookup_order"], sideband=False)
    browser = await connect_browser(broker, session)
    try:
        for call_id, arguments, code in [
            ("call_deep", "[" * 3000, "arguments_not_json"),
            ("call_nan", '{"order_id": NaN}', "arguments_not_json"),
        ]:
            reply = await broker.bridge(session, "lookup_order", call_id, arguments)
            assert reply.status == 200, reply.text
            assert reply.json()["status"] == "denied" and code in reply.json()["output"]
        long_tool = "t" * 300
        reply = await broker.bridge(session, long_tool, "call_long", "{}")
        assert (reply.status, reply.code) == (403, "tool_not_allowed")
        assert long_tool not in reply.text
        assert tool_backend.requests == []
    finally:
        await browser.close()
