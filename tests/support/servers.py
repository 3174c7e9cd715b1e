"""Start the emulator on a free loopback port, and small helpers to drive it in tests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Union

import aiohttp
from aiohttp import web
from openai.types.realtime import RealtimeServerEvent
from pydantic import Field, TypeAdapter

from emulator import CALL_REGISTRY, CallRegistry, EmulatorSettings, create_app

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

# Strict server-event validation (PROTOCOL.md §5.5): the SDK's own parser does not validate.
SERVER_EVENT: TypeAdapter[Any] = TypeAdapter(
    Annotated[Union[RealtimeServerEvent,], Field(discriminator="type")]  # noqa: UP007
)


def validate_server_event(event: dict[str, Any]) -> None:
    """Raise ``pydantic.ValidationError`` unless ``event`` matches the GA SDK model for its type."""
    SERVER_EVENT.validate_python(event)


@dataclass
class RunningEmulator:
    """A live emulator: ``base_url`` is ``http://127.0.0.1:PORT/v1``."""

    base_url: str
    app: web.Application
    registry: CallRegistry
    settings: EmulatorSettings
    _runner: web.AppRunner = field(repr=False)
    _closed: bool = False

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:PORT`` (for the non-OpenAI ``/_emulator`` routes)."""
        return self.base_url.removesuffix("/v1")

    @property
    def ws_url(self) -> str:
        """``ws://127.0.0.1:PORT/v1/realtime`` (add ``?call_id=…``)."""
        return self.base_url.replace("http://", "ws://", 1) + "/realtime"

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.settings.api_key}"}

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
    return RunningEmulator(
        base_url=f"http://127.0.0.1:{port}/v1",
        app=app,
        registry=app[CALL_REGISTRY],
        settings=settings,
        _runner=runner,
    )


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
