"""Steps shared by the tests that drive a whole call."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from broker import app_state
from broker.db.models import SessionEvent
from emulator import Call
from sideband.events import is_probe_item_id
from tests.support.broker_server import RunningBroker
from tests.support.browser import FakeBrowser
from tests.support.tool_backend import ToolBackend, ToolRequest


async def connect_browser(
    broker: RunningBroker, session: dict[str, Any], browser: FakeBrowser | None = None
) -> FakeBrowser:
    """A FakeBrowser (``browser``, say one with a microphone, or a new one) whose offer went
    through the broker and whose channel is open; closed if that fails."""
    browser = browser or FakeBrowser()
    try:
        reply = await broker.offer(session, await browser.create_offer())
        assert reply.status == 201, reply.text
        assert reply.headers["Content-Type"].startswith("application/sdp")
        await browser.accept_answer(reply.text)
        await browser.wait_open()
        if session.get("sideband", True):
            # Tests start from a watched call, so the events they expect are exactly the
            # ones a watched call sees (a late first attach adds a resync's probe).
            await wait_sideband(broker, session["id"])
    except BaseException:
        await browser.close()
        raise
    return browser


async def wait_sideband(broker: RunningBroker, session_id: str, state: str = "connected") -> None:
    """Poll the session until its sideband reaches ``state`` (bounded)."""
    async with asyncio.timeout(10):
        # Polling the public API on purpose: it is what an app backend would watch.
        while (await broker.get_session(session_id))["sideband"]["state"] != state:  # noqa: ASYNC110
            await asyncio.sleep(0.02)


def ask(browser: FakeBrowser, text: str) -> None:
    """What a page does for a typed message: a user item, then response.create."""
    browser.send_user_text(text)
    browser.send({"type": "response.create"})


def assistant_text(event: dict[str, Any]) -> str:
    """The assistant's words in a ``response.done`` (transcript or text parts)."""
    parts = []
    for item in event["response"].get("output", []):
        if item.get("type") == "message":
            for part in item.get("content", []):
                parts.append(part.get("transcript") or part.get("text") or "")
    return " ".join(parts)


def says(fragment: str) -> Any:
    """Predicate: a response.done whose assistant text contains ``fragment``."""
    return lambda event: fragment in assistant_text(event)


async def lookup_42_and_leave(broker: RunningBroker, session: dict[str, Any]) -> None:
    """A browser asks for order 42, hears the tool's answer, and leaves, so the provider
    ends the call."""
    browser = await connect_browser(broker, session)
    try:
        ask(browser, "lookup_order 42")
        await browser.wait_for("response.done", says(LOOKUP_42_OUTPUT))
    finally:
        await browser.close()


async def one_tool_call(broker: RunningBroker, tool_backend: ToolBackend) -> ToolRequest:
    """The HTTP request the broker sent ``tool_backend`` for a new session's order-42 call."""
    session = await broker.create_session(tools=["lookup_order"])
    await lookup_42_and_leave(broker, session)
    [request] = tool_backend.calls_to("lookup_order")
    assert request.headers["X-Session-ID"] == session["id"]
    return request


def outputs_received(call: Call) -> list[tuple[str, dict[str, Any]]]:
    """Every function_call_output the emulator got for ``call``, with the sending connection.

    The item's ``id`` (the broker picks one so it can look the output up after a lost
    sideband) is left out.
    """
    return [
        (r.source, {k: v for k, v in r.event["item"].items() if k != "id"})
        for r in call.received
        if r.event.get("type") == "conversation.item.create"
        and r.event.get("item", {}).get("type") == "function_call_output"
    ]


def sideband_sent(call: Call) -> list[str]:
    """The types of the events the broker sent on ``call``'s sideband, less a resync's probes.

    A first sideband that attaches after the browser had its SDP answer (a loaded machine)
    resyncs: it probes the conversation's tail with an item it deletes again. That pair is
    the broker looking, not acting, so it is left out; anything else it sent stays.
    """
    probes = {
        r.event["item"]["id"]
        for r in call.received
        if r.source == "sideband"
        and r.event.get("type") == "conversation.item.create"
        and is_probe_item_id(str(r.event.get("item", {}).get("id", "")))
    }
    return [
        r.event["type"]
        for r in call.received
        if r.source == "sideband"
        and r.event.get("item", {}).get("id") not in probes
        and r.event.get("item_id") not in probes
    ]


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


LOOKUP_42_OUTPUT = compact({"order_id": "42", "status": "shipped"})
"""What the test tool backend's lookup_order answers for order 42, byte for byte."""


async def stored_events(broker: RunningBroker, session_id: str) -> list[SessionEvent]:
    """The session's event-log rows, in ``seq`` order."""
    async with broker.app[app_state.SESSIONMAKER]() as s:
        rows = await s.scalars(
            select(SessionEvent)
            .where(SessionEvent.session_id == session_id)
            .order_by(SessionEvent.seq)
        )
        return list(rows.all())


async def session_events(
    broker: RunningBroker, session_id: str, type_: str | None = None
) -> list[dict[str, Any]]:
    """The session's stored events (``direction``, ``type``, ``payload``), in order."""
    query = select(SessionEvent).where(SessionEvent.session_id == session_id)
    if type_ is not None:
        query = query.where(SessionEvent.type == type_)
    async with broker.app[app_state.SESSIONMAKER]() as s:
        rows = (await s.scalars(query.order_by(SessionEvent.seq))).all()
    return [{"direction": r.direction, "type": r.type, "payload": r.payload} for r in rows]


async def wait_events(
    broker: RunningBroker,
    session_id: str,
    type_: str,
    predicate: Callable[[dict[str, Any]], bool] | None = None,
    count: int = 1,
    timeout: float = 5,  # noqa: ASYNC109
) -> list[dict[str, Any]]:
    """Poll the event log (written in batches) until ``count`` matching events are stored."""
    async with asyncio.timeout(timeout):
        while True:
            events = [
                e
                for e in await session_events(broker, session_id, type_)
                if predicate is None or predicate(e["payload"])
            ]
            if len(events) >= count:
                return events
            await asyncio.sleep(0.05)


async def wait_session_ended(
    broker: RunningBroker,
    session_id: str,
    timeout: float = 5,  # noqa: ASYNC109
) -> dict[str, Any]:
    """Poll the session until its call is no longer running (``live`` or ``degraded``)."""
    async with asyncio.timeout(timeout):
        while (detail := await broker.get_session(session_id))["state"] in ("live", "degraded"):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    return detail


async def wait_call_ended(call: Call, timeout: float = 5) -> None:  # noqa: ASYNC109
    """Poll the emulator's call (in-process) until it ended."""
    async with asyncio.timeout(timeout):
        while not call.ended:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
