"""Start the emulator on a free loopback port, and small helpers to drive it in tests."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from emulator import (
    CALL_REGISTRY,
    CLIENT_SECRETS,
    FAULTS,
    CallRegistry,
    ClientSecretStore,
    EmulatorSettings,
    Faults,
    create_app,
)

from .browser import FakeBrowser

SHUTDOWN_TIMEOUT_S = 5.0

# The tool definition the emulator tests put in a session (the broker builds its own).
LOOKUP_ORDER = {
    "type": "function",
    "name": "lookup_order",
    "description": "Look up an order by id.",
    "parameters": {
        "type": "object",
        "properties": {"order_id": {"type": "string"}},
        "required": ["order_id"],
    },
}

# The exact 404 the sideband handshake answers for an unknown, ended or not-yet-ready call.
CALL_NOT_FOUND = {
    "error": {
        "message": "No session found for the provided call_id",
        "type": "invalid_request_error",
        "code": "call_id_not_found",
        "param": "",
    }
}


@dataclass
class RunningEmulator:
    """A live emulator: ``base_url`` is ``http://127.0.0.1:PORT/v1`` (``…/openai/v1`` for the
    ``azure`` flavour)."""

    base_url: str
    app: web.Application
    registry: CallRegistry
    settings: EmulatorSettings
    _runner: web.AppRunner = field(repr=False)
    _closed: bool = False

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:PORT`` (for the non-OpenAI ``/_emulator`` routes)."""
        return self.base_url.removesuffix(self.api_prefix)

    @property
    def api_prefix(self) -> str:
        """``/v1``, or ``/openai/v1`` for the ``azure`` flavour: where the provider routes are."""
        return "/openai/v1" if self.settings.flavor == "azure" else "/v1"

    @property
    def ws_url(self) -> str:
        """``ws://127.0.0.1:PORT/v1/realtime`` (add ``?call_id=…``)."""
        return self.base_url.replace("http://", "ws://", 1) + "/realtime"

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.settings.api_key}"}

    @property
    def faults(self) -> Faults:
        """The live fault switches (the admin routes change the same object)."""
        return self.app[FAULTS]

    @property
    def client_secrets(self) -> ClientSecretStore:
        """The client-secret store; replace its ``clock`` to move time (see FakeClock)."""
        return self.app[CLIENT_SECRETS]

    async def close(self) -> None:
        """Stop the server and end every call; idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._runner.cleanup()


async def start_emulator(settings: EmulatorSettings) -> RunningEmulator:
    """Serve ``create_app(settings)`` on ``127.0.0.1`` port 0 and return the handle."""
    app = create_app(settings)
    runner = web.AppRunner(app, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    prefix = "/openai/v1" if settings.flavor == "azure" else "/v1"
    return RunningEmulator(
        base_url=f"http://127.0.0.1:{port}{prefix}",
        app=app,
        registry=app[CALL_REGISTRY],
        settings=settings,
        _runner=runner,
    )


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """``app`` on a free loopback port while the block runs; its ``http://127.0.0.1:{port}``."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def offer_form(offer: str, session: dict[str, Any] | None) -> aiohttp.FormData:
    """The unified-interface body: part ``sdp`` plus, if given, part ``session`` (no type)."""
    form = aiohttp.FormData()
    form.add_field("sdp", offer, content_type="application/sdp")
    if session is not None:
        # Like a browser's FormData.set("session", string): no per-part content type.
        form.add_field("session", json.dumps(session))
    return form


async def open_call(
    http: aiohttp.ClientSession,
    emulator: RunningEmulator,
    browser: FakeBrowser,
    session: dict[str, Any] | None = None,
    timeout: float = 10,  # noqa: ASYNC109 - same convention as FakeBrowser.wait_for
) -> str:
    """Create a call for ``browser``; wait for its channel and ``session.created``.

    Returns the call id (the last segment of ``Location``).
    """
    async with asyncio.timeout(timeout):
        offer = await browser.create_offer()
        async with http.post(
            f"{emulator.base_url}/realtime/calls",
            data=offer_form(offer, session),
            headers=emulator.auth(),
        ) as response:
            body = await response.text()
            if response.status != 201:
                raise AssertionError(f"/calls answered {response.status}: {body}")
            location = response.headers["Location"]
        await browser.accept_answer(body)
        await browser.wait_open(timeout)
        await browser.wait_for("session.created", timeout=timeout)
    return location.rsplit("/", 1)[-1]


class SidebandProbe:
    """A test's sideband: an aiohttp WebSocket read only by this object's methods."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self.close_code: int | None = None

    @classmethod
    async def connect(
        cls, http: aiohttp.ClientSession, emulator: RunningEmulator, call_id: str
    ) -> SidebandProbe:
        async with asyncio.timeout(5):
            ws = await http.ws_connect(
                f"{emulator.ws_url}?call_id={call_id}", headers=emulator.auth(), heartbeat=30
            )
        return cls(ws)

    async def send(self, event: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(event))

    async def wait_for(
        self,
        type_: str,
        predicate: Callable[[dict[str, Any]], bool] | None = None,
        timeout: float = 5,  # noqa: ASYNC109 - mirrors FakeBrowser.wait_for
    ) -> dict[str, Any]:
        """Read until an event of ``type_`` (matching ``predicate``) arrives; return it.

        Earlier events already read are searched first. Raises ``TimeoutError``, or
        ``ConnectionError`` if the socket closes first.
        """
        for event in self.events:
            if event.get("type") == type_ and (predicate is None or predicate(event)):
                return event
        async with asyncio.timeout(timeout):
            while True:
                event = await self.next_event()
                if event.get("type") == type_ and (predicate is None or predicate(event)):
                    return event

    async def next_event(self) -> dict[str, Any]:
        msg = await self.ws.receive()
        if msg.type is not aiohttp.WSMsgType.TEXT:
            self.close_code = self.ws.close_code
            raise ConnectionError(f"sideband closed: {msg.type!r} {msg.data!r}")
        event: dict[str, Any] = json.loads(msg.data)
        self.events.append(event)
        return event

    async def wait_closed(self, timeout: float = 5) -> aiohttp.WSMessage:  # noqa: ASYNC109
        """Read (recording events) until the server closes; return the close message."""
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.ws.receive()
                if msg.type is aiohttp.WSMsgType.TEXT:
                    self.events.append(json.loads(msg.data))
                    continue
                return msg

    async def close(self) -> None:
        async with asyncio.timeout(5):
            await self.ws.close()


class FakeClock:
    """A unix-seconds clock that moves only when told; install with ``store.clock = clock``."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def request_json(
    http: aiohttp.ClientSession,
    emulator: RunningEmulator,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """Send ``body`` as JSON to ``root_url + path``; return the status and the parsed reply.

    ``headers`` replaces the default standard-key ``Authorization`` header.
    """
    async with asyncio.timeout(10):
        async with http.request(
            method,
            f"{emulator.root_url}{path}",
            json=body,
            headers=emulator.auth() if headers is None else headers,
        ) as response:
            return response.status, await response.json()


async def set_faults(
    http: aiohttp.ClientSession, emulator: RunningEmulator, **switches: Any
) -> dict[str, Any]:
    """``POST /_emulator/faults`` with ``switches``; return the new state (asserts 200)."""
    status, body = await request_json(http, emulator, "POST", "/_emulator/faults", switches)
    if status != 200:
        raise AssertionError(f"/_emulator/faults answered {status}: {body}")
    return dict(body)


async def create_client_secret(
    http: aiohttp.ClientSession, emulator: RunningEmulator, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``POST /v1/realtime/client_secrets`` with the standard key; return the JSON (asserts 200)."""
    path = f"{emulator.api_prefix}/realtime/client_secrets"
    status, reply = await request_json(http, emulator, "POST", path, {} if body is None else body)
    if status != 200:
        raise AssertionError(f"/client_secrets answered {status}: {reply}")
    return dict(reply)


async def post_offer(
    http: aiohttp.ClientSession,
    emulator: RunningEmulator,
    offer: str,
    *,
    bearer: str | None = None,
    session: dict[str, Any] | None = None,
    raw: bool = False,
    params: dict[str, str] | None = None,
) -> tuple[int, str, str | None]:
    """``POST /v1/realtime/calls``; return (status, body text, Location header).

    ``raw`` sends the offer as ``application/sdp`` (then ``session`` must be ``None``);
    otherwise multipart via :func:`offer_form`. ``bearer`` defaults to the standard key.
    """
    headers = {"Authorization": f"Bearer {bearer or emulator.settings.api_key}"}
    data: Any
    if raw:
        assert session is None, "the raw application/sdp form carries no session"
        headers["Content-Type"] = "application/sdp"
        data = offer
    else:
        data = offer_form(offer, session)
    async with asyncio.timeout(10):
        async with http.post(
            f"{emulator.base_url}/realtime/calls", data=data, headers=headers, params=params
        ) as response:
            return response.status, await response.text(), response.headers.get("Location")


async def connect_call(
    browser: FakeBrowser,
    answer: str,
    timeout: float = 10,  # noqa: ASYNC109 - same convention as FakeBrowser.wait_for
) -> dict[str, Any]:
    """Apply ``answer``; wait for the data channel and return its ``session.created``."""
    await browser.accept_answer(answer)
    await browser.wait_open(timeout)
    return await browser.wait_for("session.created", timeout=timeout)
