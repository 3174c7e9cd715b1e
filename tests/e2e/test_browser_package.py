"""The browser package in Chromium, outside demo mode, on a page of another origin.

The page is an app's own (not the demo): served by a small app server on its own loopback
port, with a backend route that creates the session with an API key and hands the page the
broker's create response byte for byte. The page imports ``@sideband-broker/client`` from the
broker's versioned path (a cross-origin module import, allowed by ``cors_origins``), calls,
runs ``lookup_order`` on the sideband, and hangs up with ``close()``, which ends the session
at the broker. An origin the broker does not list gets ``cors_blocked``, not
``network_error``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
from aiohttp import web

from tests.conftest import BrokerFactory
from tests.support.broker_server import RunningBroker
from tests.support.flow import LOOKUP_42_OUTPUT, wait_session_ended, wait_sideband
from tests.support.servers import RunningEmulator

CLIENT_FILE: Final = Path(__file__).resolve().parents[2] / "web" / "broker-client.js"
CALL_TIMEOUT_MS: Final = 20_000
CLIENT_PATH: Final = "/client/v1/broker-client.js"

PAGE: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>An app's own page</title></head>
<body>
<audio id="voice" autoplay></audio>
<script type="module">
import { connect, BrokerClientError } from "__CLIENT_URL__";

const events = new EventTarget();
const state = { events: [], transcript: "", open: false, closed: null };
window.app = state;
events.addEventListener("open", () => { state.open = true; });
events.addEventListener("closed", (e) => { state.closed = e.detail.reason; });
events.addEventListener("event", (e) => {
  const event = e.detail;
  state.events.push(event.type);
  if (event.type === "response.output_audio_transcript.done") state.transcript += event.transcript;
  if (event.type === "response.output_text.done") state.transcript += event.text;
});

window.startCall = async () => {
  try {
    window.call = await connect({
      // The app's backend passes the broker's create response through unchanged.
      tokenProvider: async () => (await fetch("/backend/session", { method: "POST" })).json(),
      audioElement: document.getElementById("voice"),
      events,
    });
    return { ok: true, session: window.call.session };
  } catch (err) {
    return {
      ok: false,
      typed: err instanceof BrokerClientError,
      code: err.code,
      status: err.status,
      message: err.message,
    };
  }
};
window.ask = (text) => {
  window.call.send({
    type: "conversation.item.create",
    item: { type: "message", role: "user", content: [{ type: "input_text", text }] },
  });
  window.call.send({ type: "response.create" });
};
window.hangUp = () => window.call.close();
window.ready = true;
</script>
</body></html>
"""


@dataclass
class AppServer:
    """The app: its page, its copy of the client (for origins the broker refuses), and its
    backend route, which creates the session at ``broker`` with ``api_key``."""

    origin: str = ""
    broker_url: str = ""
    api_key: str = ""
    session_body: dict[str, Any] = field(default_factory=lambda: {"tools": ["lookup_order"]})
    created: list[bytes] = field(default_factory=list)
    """Each create response, as the broker sent it."""


STATE: Final = web.AppKey("state", AppServer)


async def _backend_session(request: web.Request) -> web.Response:
    app: AppServer = request.app[STATE]
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            app.broker_url + "/api/v1/sessions",
            json=app.session_body,
            headers={"Authorization": f"Bearer {app.api_key}"},
        ) as resp,
    ):
        raw = await resp.read()
        app.created.append(raw)
        return web.Response(body=raw, status=resp.status, content_type="application/json")


def _page(
    client_url: Callable[[AppServer], str],
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        app: AppServer = request.app[STATE]
        html = PAGE.replace("__CLIENT_URL__", client_url(app))
        return web.Response(text=html, content_type="text/html")

    return handler


async def _own_client_copy(request: web.Request) -> web.FileResponse:
    return web.FileResponse(CLIENT_FILE, headers={"Content-Type": "text/javascript"})


@asynccontextmanager
async def app_server() -> AsyncIterator[AppServer]:
    state = AppServer()
    app = web.Application()
    app[STATE] = state
    app.router.add_get("/", _page(lambda s: s.broker_url + CLIENT_PATH))
    app.router.add_get("/own-copy", _page(lambda s: "/broker-client.js"))
    app.router.add_get("/broker-client.js", _own_client_copy)
    app.router.add_post("/backend/session", _backend_session)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.origin = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield state
    finally:
        await runner.cleanup()


async def _open(page: Any, url: str) -> None:
    await page.goto(url)
    await page.wait_for_function("window.ready === true", timeout=CALL_TIMEOUT_MS)


def _report(page: Any) -> str:
    return "\n".join(page.console_lines)


async def test_a_page_of_another_origin_calls_with_the_apis_create_response_and_hangs_up(
    page: Any, make_broker: BrokerFactory, emulator: RunningEmulator
) -> None:
    async with app_server() as app:
        broker = await make_broker(cors_origins=app.origin)
        assert not broker.settings.demo
        app.broker_url = broker.base_url
        app.api_key = await broker.new_key("sessions:create", name="the app's backend")
        await _open(page, app.origin + "/")

        started = await page.evaluate("window.startCall()")
        assert started["ok"], f"{started}\n{_report(page)}"
        [raw] = app.created
        created = json.loads(raw)
        # What the page's call holds is the API's reply, unchanged.
        assert started["session"] == created
        assert created["client_secret"]["value"] and created["end_url"].startswith("http://")
        session_id = created["id"]
        await page.wait_for_function("window.app.open === true", timeout=CALL_TIMEOUT_MS)
        await wait_sideband(broker, session_id)

        await page.evaluate("window.ask('lookup_order 42')")
        quote = f"lookup_order returned: {LOOKUP_42_OUTPUT}"
        try:
            await page.wait_for_function(
                "(quote) => window.app.transcript.includes(quote)",
                arg=quote,
                timeout=CALL_TIMEOUT_MS,
            )
        except Exception as exc:
            events = await page.evaluate("window.app.events")
            raise AssertionError(f"no answer: {exc}\n{events}\n{_report(page)}") from None
        detail = await broker.get_session(session_id)
        [tool_call] = detail["tool_calls"]
        assert (tool_call["tool"], tool_call["path"], tool_call["status"]) == (
            "lookup_order",
            "sideband",
            "succeeded",
        )
        assert detail["state"] == "live"

        ended = await page.evaluate("window.hangUp()")
        assert ended is True, _report(page)
        assert await page.evaluate("window.app.closed") == "hangup"
        detail = await wait_session_ended(broker, session_id)
        assert (detail["state"], detail["end_reason"]) == ("ended", "hangup")


async def test_an_origin_the_broker_does_not_list_gets_cors_blocked_not_network_error(
    page: Any, make_broker: BrokerFactory
) -> None:
    async with app_server() as app:
        broker = await make_broker(cors_origins="https://app.example.com")
        app.broker_url = broker.base_url
        app.api_key = await broker.new_key("sessions:create")
        # The broker refuses this origin the module too, so the app serves its own copy.
        await _open(page, app.origin + "/own-copy")
        started = await page.evaluate("window.startCall()")
        assert started["ok"] is False and started["typed"] is True, started
        assert (started["code"], started["status"]) == ("cors_blocked", 0), started
        [raw] = app.created
        assert (await broker.get_session(json.loads(raw)["id"]))["state"] == "created"


async def test_an_unreachable_broker_is_a_network_error(
    page: Any, make_broker: BrokerFactory, unused_tcp_port: int
) -> None:
    """The contrast: nothing listens at the offer URL, so the probe fails too."""
    async with app_server() as app:
        broker = await make_broker(
            cors_origins=app.origin, public_url=f"http://127.0.0.1:{unused_tcp_port}"
        )
        app.broker_url = broker.base_url
        app.api_key = await broker.new_key("sessions:create")
        await _open(page, app.origin + "/")
        started = await page.evaluate("window.startCall()")
        assert (started["ok"], started["code"]) == (False, "network_error"), started


async def test_the_module_import_itself_needs_a_listed_origin(
    page: Any, make_broker: BrokerFactory
) -> None:
    async with app_server() as app:
        broker: RunningBroker = await make_broker(cors_origins="https://app.example.com")
        app.broker_url = broker.base_url
        async with page.expect_console_message(lambda m: "CORS policy" in m.text) as blocked:
            await page.goto(app.origin + "/")
        assert CLIENT_PATH in (await blocked.value).text
        assert await page.evaluate("window.ready === true") is False
