"""The demo's app-backend route and static files: mounted only in demo mode."""

from __future__ import annotations

from tests.conftest import BrokerFactory
from tests.support.broker_server import RunningBroker


async def test_without_demo_mode_there_is_no_page_and_no_session_route(
    broker: RunningBroker,
) -> None:
    assert (await broker.request("GET", "/", token=None)).status == 404
    reply = await broker.request("POST", "/demo/session", token=None, json_body={})
    assert reply.status == 404


async def test_the_demo_session_gives_the_page_only_what_a_browser_may_hold(
    make_broker: BrokerFactory,
) -> None:
    broker = await make_broker(demo=True)
    page = await broker.request("GET", "/", token=None)
    assert page.status == 200 and "<title>" in page.text
    library = await broker.request("GET", "/broker-client.js", token=None)
    assert library.status == 200 and "export async function connect" in library.text
    assert library.headers["Content-Type"].startswith("text/javascript")

    reply = await broker.request("POST", "/demo/session", token=None, json_body={"bridge": True})
    assert reply.status == 201, reply.text
    assert reply.headers["Cache-Control"] == "no-store"
    body = reply.json()
    # The create response's shape (tests/integration/test_session_urls.py has the rest).
    assert {"id", "client_secret", "offer_url", "bridge_url", "end_url"} <= set(body)
    assert set(body["client_secret"]) == {"value", "expires_at"}
    assert body["offer_url"] == f"{broker.base_url}/api/v1/sessions/{body['id']}/realtime-offer"
    detail = await broker.get_session(body["id"])
    assert detail["sideband"]["enabled"] is False  # bridge mode
    assert "lookup_order" in detail["tools"]


async def test_a_bad_demo_session_body_is_refused_with_a_code(make_broker: BrokerFactory) -> None:
    broker = await make_broker(demo=True)
    reply = await broker.request("POST", "/demo/session", token=None, json_body={"bridge": "x"})
    assert reply.status == 422 and reply.code == "invalid_request", reply.text
    reply = await broker.request(
        "POST", "/demo/session", token=None, data="{", content_type="application/json"
    )
    assert reply.status == 400 and reply.code == "invalid_json", reply.text
