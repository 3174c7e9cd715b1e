"""One bad frame costs one frame: a real WebSocket server feeds the sideband garbage.

``SidebandConnection.frames`` once caught ``ValueError`` around ``decode_frame``, which
raises ``MalformedEventError`` (a ``SidebandError``, not a ``ValueError``): a single non-JSON
frame escaped the reader, ended the controller and left the session degraded (issue 14,
item 8). These tests talk to an aiohttp server on loopback, not to an in-memory stand-in,
so the real receive loop is what is under test.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from sideband import CallController, SidebandConnection, SidebandTarget
from sideband.connection import MAX_MESSAGE_BYTES as LIMIT
from sideband.errors import FrameTooLargeError
from tests.unit.sideband.test_controller import Observer, RecordingTools, args_done, done, fc_item

BAD_FRAMES: tuple[str | bytes, ...] = (
    "this is not JSON {",
    json.dumps({"no_type": True}),  # JSON, but no "type"
    json.dumps({"type": 42}),  # a type that is no string
    json.dumps(["session.updated"]),  # JSON, but no object
    b"\xff\xfe not utf-8",  # a binary frame that is not even text
)
"""Every kind of frame ``decode_frame`` refuses."""
VALID = {"type": "rate_limits.updated", "rate_limits": []}
AFTER_REPLY = {"type": "emulator.after_reply", "n": 2}


@dataclass
class Script:
    """What the test server sends once a client connects, and what it heard."""

    frames: list[str | bytes] = field(default_factory=list)
    reply_to: str | None = None
    """Wait for a client event of this type, then send ``after``."""
    after: list[str | bytes] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    heard: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Server:
    url: URL
    script: Script


async def _send(ws: web.WebSocketResponse, frame: str | bytes) -> None:
    if isinstance(frame, bytes):
        await ws.send_bytes(frame)
    else:
        await ws.send_str(frame)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    """A loopback WebSocket server that plays a :class:`Script` to its one client."""
    script = Script()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        script.connected.set()
        for frame in script.frames:
            await _send(ws, frame)
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            event = json.loads(msg.data)
            script.received.append(event)
            if event.get("type") == script.reply_to:
                script.heard.set()
                for frame in script.after:
                    await _send(ws, frame)
                await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/v1/realtime", handler)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Server(URL(f"http://127.0.0.1:{port}/v1/realtime?call_id=rtc_test"), script)
    finally:
        await runner.cleanup()


async def attach(http: aiohttp.ClientSession, server: Server) -> SidebandConnection:
    return await SidebandConnection.attach(
        http, SidebandTarget(url=server.url, headers={}), "rtc_test", attach_timeout=5.0
    )


async def test_frames_skips_every_malformed_frame_and_the_socket_stays_open(
    server: Server, http: aiohttp.ClientSession
) -> None:
    """Non-JSON, typeless, non-object and undecodable frames are each dropped; the next
    valid event is yielded, the socket is still open, and what the server sends after
    hearing from us arrives on the same connection."""
    server.script.frames = [*BAD_FRAMES, json.dumps(VALID)]
    server.script.reply_to = "ping"
    server.script.after = ["still not JSON", json.dumps(AFTER_REPLY)]
    conn = await attach(http, server)
    got: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(5):
            async for event in conn.frames():
                got.append(event)
                if event == VALID:
                    assert not conn.closed
                    await conn.send({"type": "ping"})
        # The server closed after its reply: frames() ended quietly on the close frame.
    finally:
        await conn.close()
    assert got == [VALID, AFTER_REPLY]
    assert server.script.received == [{"type": "ping"}]
    assert conn.close_code == 1000


async def test_the_controller_keeps_working_after_a_malformed_frame(
    server: Server, http: aiohttp.ClientSession
) -> None:
    """A bad frame between the model's function-call events does not end the controller
    (nor does an unknown event with a mistyped ``event_id``, which once escaped the parser):
    it still runs the finished call and sends its output on the same socket."""
    call = fc_item("call_1")
    server.script.frames = [
        "{ broken",
        json.dumps(args_done("resp_1", "call_1")),
        b"\x00\x01",
        # An unknown type is ignored, whatever its common fields hold.
        json.dumps({"type": "vendor.extension", "event_id": 5}),
        json.dumps(done("resp_1", "completed", call)),
    ]
    server.script.reply_to = "conversation.item.create"
    tools = RecordingTools()

    async def connect() -> SidebandConnection:
        return await attach(http, server)

    controller = CallController("rtc_test", connect, tools, Observer())
    async with asyncio.timeout(10):
        # The server closes (1000) once the output arrives; without a reconnect, run() ends.
        close_code = await controller.run()
    assert close_code == 1000
    assert tools.executed == ["call_1"]
    [output] = server.script.received
    assert output["item"]["type"] == "function_call_output"
    assert output["item"]["call_id"] == "call_1"
    assert output["item"]["output"] == '{"ran":"call_1"}'


async def test_a_frame_over_the_limit_breaks_the_socket_as_too_large(
    server: Server, http: aiohttp.ClientSession
) -> None:
    """aiohttp refuses a frame over ``max_msg_size`` from its header and closes the socket
    with 1009; the reader says so with its own error (the controller acts on it), unlike any
    other broken transport. The frame before it still arrives."""
    server.script.frames = [json.dumps(VALID), json.dumps({"type": "x", "pad": "a" * LIMIT})]
    conn = await attach(http, server)
    got: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(10):
            with pytest.raises(FrameTooLargeError) as raised:
                async for event in conn.frames():
                    got.append(event)
    finally:
        await conn.close()
    assert got == [VALID]
    assert (raised.value.code, raised.value.limit) == (1009, LIMIT)
    assert conn.closed and conn.close_code == 1009
