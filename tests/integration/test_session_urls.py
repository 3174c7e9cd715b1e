"""One contract: the create response carries the absolute URLs a page calls, and the demo's
backend answers with the same shape; the browser package is served outside demo mode."""

from __future__ import annotations

from typing import Any, Final

from tests.conftest import BrokerFactory
from tests.support.broker_server import CREATE_RESPONSE_KEYS, RunningBroker
from tests.support.browser import FakeBrowser
from tests.support.flow import wait_session_ended

APP_ORIGIN: Final = "https://app.example.com"


def _urls(base: str, session_id: str) -> dict[str, str]:
    prefix = f"{base}/api/v1/sessions/{session_id}"
    return {
        "offer_url": f"{prefix}/realtime-offer",
        "bridge_url": f"{prefix}/tools/",
        "end_url": f"{prefix}/end",
    }


async def _post(broker: RunningBroker, url: str, token: str, **kwargs: Any) -> tuple[int, str]:
    """POST to an absolute URL from a create response, as a page would."""
    headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
    async with broker.http.post(url, headers=headers, **kwargs) as resp:
        return resp.status, await resp.text()


async def test_without_a_public_url_the_urls_are_the_address_the_request_reached(
    broker: RunningBroker,
) -> None:
    """And they are the real endpoints: the page offers, runs a tool and hangs up with them."""
    session = await broker.create_session(tools=["lookup_order"], sideband=False)
    assert set(session) == CREATE_RESPONSE_KEYS
    assert {k: session[k] for k in ("offer_url", "bridge_url", "end_url")} == _urls(
        broker.base_url, session["id"]
    )
    secret = session["client_secret"]["value"]
    browser = FakeBrowser()
    try:
        status, answer = await _post(
            broker,
            session["offer_url"],
            secret,
            data=await browser.create_offer(),
            headers={"Content-Type": "application/sdp"},
        )
        assert status == 201, answer
        await browser.accept_answer(answer)
        await browser.wait_open()
        status, body = await _post(
            broker,
            session["bridge_url"] + "lookup_order",
            secret,
            json={"call_id": "call_urls_1", "arguments": {"order_id": "42"}},
        )
        assert status == 200, body
        status, body = await _post(broker, session["end_url"], secret)
        assert (status, body) == (200, f'{{"id": "{session["id"]}", "ended": true}}')
        detail = await wait_session_ended(broker, session["id"])
        assert (detail["state"], detail["end_reason"]) == ("ended", "hangup")
    finally:
        await browser.close()


async def test_the_public_url_is_the_base_of_every_url(make_broker: BrokerFactory) -> None:
    broker = await make_broker(public_url="https://broker.example.com/voice/")
    session = await broker.create_session(tools=["lookup_order"])
    assert set(session) == CREATE_RESPONSE_KEYS
    expected = _urls("https://broker.example.com/voice", session["id"])
    assert {k: session[k] for k in expected} == expected


async def test_a_spoofed_host_header_does_not_steer_the_urls(broker: RunningBroker) -> None:
    reply = await broker.request(
        "POST",
        "/api/v1/sessions",
        json_body={"tools": ["lookup_order"]},
        headers={"Host": "evil.example", "X-Forwarded-Host": "evil.example"},
    )
    assert reply.status == 201, reply.text
    body = reply.json()
    assert body["offer_url"] == _urls(broker.base_url, body["id"])["offer_url"]


async def test_the_demo_backend_answers_with_the_apis_shape(make_broker: BrokerFactory) -> None:
    broker = await make_broker(demo=True, public_url="https://broker.example.com")
    reply = await broker.request("POST", "/demo/session", token=None, json_body={"bridge": True})
    assert reply.status == 201, reply.text
    assert reply.headers["Cache-Control"] == "no-store"
    body = reply.json()
    assert set(body) == CREATE_RESPONSE_KEYS
    assert set(body["client_secret"]) == {"value", "expires_at"}
    assert body["sideband"] is False
    expected = _urls("https://broker.example.com", body["id"])
    assert {k: body[k] for k in expected} == expected


async def test_the_package_is_served_outside_demo_mode_with_cors_for_allowed_origins(
    make_broker: BrokerFactory,
) -> None:
    broker = await make_broker(cors_origins=APP_ORIGIN)
    assert not broker.settings.demo
    for name, content_type, marker in (
        ("broker-client.js", "text/javascript", "export async function connect"),
        ("broker-client.d.ts", "application/typescript", "export function connect"),
    ):
        reply = await broker.request(
            "GET", f"/client/v1/{name}", token=None, headers={"Origin": APP_ORIGIN}
        )
        assert reply.status == 200, reply.text
        assert marker in reply.text
        assert reply.headers["Content-Type"].startswith(content_type)
        assert reply.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
        assert "Origin" in reply.headers["Vary"]
        assert reply.headers["Cache-Control"] == "public, max-age=300, must-revalidate"
        assert reply.headers["X-Content-Type-Options"] == "nosniff"
        assert "ETag" in reply.headers or "Last-Modified" in reply.headers

        other = await broker.request(
            "GET", f"/client/v1/{name}", token=None, headers={"Origin": "https://evil.example"}
        )
        assert other.status == 200
        assert "Access-Control-Allow-Origin" not in other.headers


async def test_nothing_else_is_served_under_the_package_path(broker: RunningBroker) -> None:
    for name in ("package.json", "demo", "..%2Fpyproject.toml", "broker-client.js.map"):
        reply = await broker.request("GET", f"/client/v1/{name}", token=None)
        assert (reply.status, reply.code) == (404, "not_found"), name
    assert (await broker.request("GET", "/client/v2/broker-client.js", token=None)).status == 404
