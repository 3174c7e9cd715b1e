"""CallController rules, driven through an in-memory connection (asyncio.Queue pair)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from sideband import Backlog, CallController, FunctionCall, SidebandClosedError, ToolResult


class QueueConnection:
    """Stands in for SidebandConnection: frames come from a queue, sends go to a list.

    ``None`` in the queue closes it cleanly (1000); a :class:`SidebandClosedError` breaks it.

    With ``echo_outputs`` it echoes each ``function_call_output`` it is sent, as the
    provider does (``conversation.item.added``); without, the test echoes by hand.
    """

    def __init__(self, *, echo_outputs: bool = True) -> None:
        self.echo_outputs = echo_outputs
        self.inbox: asyncio.Queue[dict[str, Any] | SidebandClosedError | None] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []
        self.sent_event = asyncio.Event()
        self.close_code: int | None = None
        self.attempts = 1  # attached at once: a first attach needs no resync
        self.attach_seconds = 0.0

    async def frames(self) -> AsyncIterator[dict[str, Any]]:
        while (frame := await self.inbox.get()) is not None:
            if isinstance(frame, SidebandClosedError):
                self.close_code = frame.code  # the socket broke (as aiohttp's does)
                raise frame
            yield frame
        self.close_code = 1000

    async def send(self, event: dict[str, Any]) -> None:
        self.sent.append(event)
        self.sent_event.set()
        item = event.get("item") or {}
        if self.echo_outputs and item.get("type") == "function_call_output":
            self.inbox.put_nowait(
                {"type": "conversation.item.added", "previous_item_id": None, "item": item}
            )

    async def close(self) -> None:
        pass

    async def wait_sent(self, count: int) -> None:
        async with asyncio.timeout(5):
            while len(self.sent) < count:
                self.sent_event.clear()
                await self.sent_event.wait()


class RecordingTools:
    def __init__(self) -> None:
        self.seen: list[str] = []
        self.abandoned: list[tuple[str, str]] = []
        self.executed: list[str] = []
        self.injected: list[str] = []
        self.release = asyncio.Event()
        self.release.set()
        self.recorded_backlog = Backlog()

    async def call_seen(self, call: FunctionCall) -> None:
        self.seen.append(call.call_id)

    async def call_abandoned(self, call: FunctionCall, response_status: str) -> None:
        self.abandoned.append((call.call_id, response_status))

    async def execute(self, call: FunctionCall) -> ToolResult:
        self.executed.append(call.call_id)
        await self.release.wait()
        return ToolResult(output=f'{{"ran":"{call.call_id}"}}')

    async def output_sent(self, call: FunctionCall) -> None:
        self.injected.append(call.call_id)

    async def backlog(self) -> Backlog:
        return self.recorded_backlog


class Observer:
    def __init__(self) -> None:
        self.records: list[tuple[str, str]] = []

    def record(self, direction: str, event: dict[str, Any]) -> None:
        self.records.append((direction, event["type"]))

    async def attached(self, kind: str) -> None:
        self.records.append(("attached", kind))

    async def detached(self, close_code: int | None) -> None:
        self.records.append(("detached", str(close_code)))


def fc_item(call_id: str, name: str = "lookup_order") -> dict[str, Any]:
    return {
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": "{}",
        "id": f"item_{call_id}",
        "status": "completed",
    }


def args_done(response_id: str, call_id: str) -> dict[str, Any]:
    return {
        "type": "response.function_call_arguments.done",
        "response_id": response_id,
        "item_id": f"item_{call_id}",
        "call_id": call_id,
        "name": "lookup_order",
        "arguments": "{}",
        "output_index": 0,
    }


def created(response_id: str) -> dict[str, Any]:
    return {"type": "response.created", "response": {"id": response_id, "status": "in_progress"}}


def done(response_id: str, status: str, *items: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "response.done",
        "response": {"id": response_id, "status": status, "output": list(items)},
    }


def provider_error(event_id: str, code: str) -> dict[str, Any]:
    """The provider's ``error`` event refusing the client event ``event_id``."""
    return {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "code": code,
            "message": code,
            "event_id": event_id,
        },
    }


async def run_controller(conn: QueueConnection, tools: RecordingTools) -> asyncio.Task[int | None]:
    async def connect() -> Any:
        return conn

    controller = CallController("rtc_test", connect, tools, Observer())
    return asyncio.create_task(controller.run())


async def test_cancelled_response_never_executes_its_calls() -> None:
    """arguments.done also fires for cancelled responses; only completed ones run."""
    conn, tools = QueueConnection(), RecordingTools()
    task = await run_controller(conn, tools)
    for frame in (created("r1"), args_done("r1", "c1"), done("r1", "cancelled", fc_item("c1"))):
        conn.inbox.put_nowait(frame)
    conn.inbox.put_nowait(None)
    assert await asyncio.wait_for(task, 5) == 1000
    assert tools.seen == ["c1"]
    assert tools.abandoned == [("c1", "cancelled")]
    assert tools.executed == [] and conn.sent == []


async def test_all_outputs_then_one_response_create() -> None:
    """Two calls in one response: two outputs, in order, then a single response.create once
    the provider has them."""
    conn, tools = QueueConnection(echo_outputs=False), RecordingTools()
    task = await run_controller(conn, tools)
    for frame in (
        created("r1"),
        args_done("r1", "c1"),
        args_done("r1", "c2"),
        done("r1", "completed", fc_item("c1"), fc_item("c2")),
    ):
        conn.inbox.put_nowait(frame)
    await conn.wait_sent(2)
    assert [e["item"]["call_id"] for e in conn.sent[:2]] == ["c1", "c2"]
    assert conn.sent[0]["item"]["output"] == '{"ran":"c1"}'
    # Sent is not delivered: an output counts as injected once the provider echoes it, and
    # the model is asked to answer only what it has.
    await asyncio.sleep(0.05)
    assert tools.injected == [] and len(conn.sent) == 2
    for sent in conn.sent[:2]:
        conn.inbox.put_nowait({"type": "conversation.item.added", "item": sent["item"]})
    await conn.wait_sent(3)
    assert [e["type"] for e in conn.sent] == [
        "conversation.item.create",
        "conversation.item.create",
        "response.create",
    ]
    async with asyncio.timeout(5):
        while len(tools.injected) < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert tools.injected == ["c1", "c2"]
    conn.inbox.put_nowait(None)
    await asyncio.wait_for(task, 5)


async def test_response_create_waits_for_the_active_response_to_end() -> None:
    """If another response started while the tool ran, response.create waits for its done."""
    conn, tools = QueueConnection(), RecordingTools()
    tools.release.clear()
    task = await run_controller(conn, tools)
    for frame in (
        created("r1"),
        args_done("r1", "c1"),
        done("r1", "completed", fc_item("c1")),
        created("r2"),
    ):
        conn.inbox.put_nowait(frame)
    await asyncio.sleep(0.05)
    tools.release.set()
    await conn.wait_sent(1)
    await asyncio.sleep(0.05)
    assert [e["type"] for e in conn.sent] == ["conversation.item.create"]
    conn.inbox.put_nowait(done("r2", "completed"))
    await conn.wait_sent(2)
    assert conn.sent[1]["type"] == "response.create"
    conn.inbox.put_nowait(None)
    await asyncio.wait_for(task, 5)


async def test_rejected_response_create_is_retried_after_the_next_done() -> None:
    """Refused as "already active" by a response that started before our output arrived
    (its response.created came before this sideband could see it): it did not read our
    output, so we ask again after its response.done."""
    conn, tools = QueueConnection(), RecordingTools()
    task = await run_controller(conn, tools)
    for frame in (created("r1"), args_done("r1", "c1"), done("r1", "completed", fc_item("c1"))):
        conn.inbox.put_nowait(frame)
    await conn.wait_sent(2)
    first = conn.sent[1]
    assert first["type"] == "response.create"
    conn.inbox.put_nowait(
        provider_error(first["event_id"], "conversation_already_has_active_response")
    )
    conn.inbox.put_nowait(done("r_unseen", "completed"))
    await conn.wait_sent(3)
    assert conn.sent[2]["type"] == "response.create"
    assert conn.sent[2]["event_id"] != first["event_id"]
    conn.inbox.put_nowait(None)
    await asyncio.wait_for(task, 5)


async def test_malformed_frames_are_skipped_not_fatal() -> None:
    """A known event type with missing fields is logged and skipped; the reader goes on."""
    conn, tools = QueueConnection(), RecordingTools()
    task = await run_controller(conn, tools)
    conn.inbox.put_nowait({"type": "response.done"})  # no response object
    for frame in (created("r1"), args_done("r1", "c1"), done("r1", "completed", fc_item("c1"))):
        conn.inbox.put_nowait(frame)
    await conn.wait_sent(2)
    assert tools.executed == ["c1"]
    conn.inbox.put_nowait(None)
    await asyncio.wait_for(task, 5)


async def test_a_repeated_response_done_is_answered_once() -> None:
    """The same completed response reported twice must not produce a second output."""
    conn, tools = QueueConnection(), RecordingTools()
    task = await run_controller(conn, tools)
    final = done("r1", "completed", fc_item("c1"))
    for frame in (created("r1"), args_done("r1", "c1"), final, final):
        conn.inbox.put_nowait(frame)
    await conn.wait_sent(2)
    conn.inbox.put_nowait(None)
    await asyncio.wait_for(task, 5)
    assert tools.executed == ["c1"]
    assert [e["type"] for e in conn.sent] == ["conversation.item.create", "response.create"]
