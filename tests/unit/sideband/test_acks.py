"""Acknowledging long tool calls (sideband/acks.py), driven through the in-memory connection.

The broker plans an acknowledgement per call (``ack_plan``); the controller sends one
out-of-band ``response.create`` when the call outlives it and no response is under way, keeps
that response out of the answer ledger and the page policy, and sends the output's own
``response.create`` only once it ended.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sideband import AckPlan, CallController, FunctionCall, PagePolicy, PageResponses, acks
from tests.unit.sideband.test_controller import (
    Observer,
    QueueConnection,
    RecordingTools,
    args_done,
    created,
    done,
    fc_item,
)

INSTRUCTIONS = "Say you are on it."


class AckingTools(RecordingTools):
    """Tools whose calls run until released, each acknowledged after ``after_s``."""

    def __init__(self, after_s: float = 0.05) -> None:
        super().__init__()
        self.release.clear()
        self.after_s = after_s
        self.acknowledged_calls: list[tuple[str, str | None]] = []

    def ack_plan(self, call: FunctionCall) -> AckPlan | None:
        return AckPlan(self.after_s, INSTRUCTIONS)

    async def acknowledged(self, call: FunctionCall, response_id: str | None) -> None:
        self.acknowledged_calls.append((call.call_id, response_id))


class Reports:
    def __init__(self) -> None:
        self.seen: list[Any] = []

    async def tampered(self, tamper: Any) -> None:
        self.seen.append(tamper)


async def start(
    tools: RecordingTools, policy: PageResponses = PageResponses.CANCEL
) -> tuple[QueueConnection, asyncio.Task[int | None], Reports]:
    conn = QueueConnection()

    async def connect() -> Any:
        return conn

    reports = Reports()
    controller = CallController(
        "rtc_test",
        connect,
        tools,
        Observer(),
        tamper=reports,
        page=PagePolicy(responses=policy),
        probe_interval=None,
    )
    task = asyncio.create_task(controller.run())
    return conn, task, reports


def model_calls(conn: QueueConnection, call_id: str = "c1") -> None:
    """The model's response r1 (asked for by the page's audio turn) calls a tool."""
    conn.inbox.put_nowait(
        {"type": "input_audio_buffer.speech_stopped", "item_id": "u1", "audio_end_ms": 1}
    )
    conn.inbox.put_nowait(
        {"type": "input_audio_buffer.committed", "item_id": "u1", "previous_item_id": None}
    )
    conn.inbox.put_nowait(created("r1"))
    conn.inbox.put_nowait(args_done("r1", call_id))
    conn.inbox.put_nowait(done("r1", "completed", fc_item(call_id)))


def ack_created(response_id: str, call_id: str) -> dict[str, Any]:
    return {
        "type": "response.created",
        "response": {
            "id": response_id,
            "status": "in_progress",
            "conversation_id": None,
            "metadata": {"broker": "ack", "call_id": call_id},
        },
    }


def ack_done(response_id: str, call_id: str) -> dict[str, Any]:
    event = done(response_id, "completed")
    event["response"]["metadata"] = {"broker": "ack", "call_id": call_id}
    return event


def kinds(conn: QueueConnection) -> list[str]:
    out = []
    for event in conn.sent:
        if event["type"] == "response.create":
            out.append("ack" if "response" in event else "response.create")
        elif event["type"] == "conversation.item.create":
            out.append("output")
        else:
            out.append(event["type"])
    return out


async def stop(conn: QueueConnection, task: asyncio.Task[int | None]) -> None:
    conn.inbox.put_nowait(None)
    async with asyncio.timeout(5):
        await task


async def test_a_long_call_is_acknowledged_once_out_of_band_and_answered_after_it() -> None:
    """The ack goes out once, out of band, with the plan's instructions; under the cancel
    page policy it is not cancelled nor reported; the output's response.create waits for
    the ack's response.done, and the ack response never counts as reading the output."""
    tools = AckingTools()
    conn, task, reports = await start(tools)
    model_calls(conn)
    await conn.wait_sent(1)
    [ack] = conn.sent
    assert ack["response"] == {
        "conversation": "none",
        "instructions": INSTRUCTIONS,
        "tool_choice": "none",
        "metadata": {"broker": "ack", "call_id": "c1"},
    }
    conn.inbox.put_nowait(ack_created("r_ack", "c1"))
    tools.release.set()  # the tool finishes while the acknowledgement still speaks
    await conn.wait_sent(2)
    await asyncio.sleep(0.05)  # the output's echo is handled: no response.create yet
    assert kinds(conn) == ["ack", "output"]
    conn.inbox.put_nowait(ack_done("r_ack", "c1"))
    await conn.wait_sent(3)
    assert kinds(conn) == ["ack", "output", "response.create"]
    assert tools.acknowledged_calls == [("c1", "r_ack")]
    assert reports.seen == []
    await stop(conn, task)
    assert kinds(conn) == ["ack", "output", "response.create"]


async def test_a_call_finishing_before_its_plan_is_never_acknowledged() -> None:
    tools = AckingTools(after_s=5.0)
    tools.release.set()
    conn, task, _ = await start(tools)
    model_calls(conn)
    await conn.wait_sent(2)
    assert kinds(conn) == ["output", "response.create"]
    assert tools.acknowledged_calls == []
    await stop(conn, task)


async def test_no_acknowledgement_while_a_response_runs_and_none_once_the_call_ended() -> None:
    """A response under way when the plan is due: the ack waits for it; the call finishing
    first means no ack at all (a late one would only be noise)."""
    tools = AckingTools()
    conn, task, _ = await start(tools, PageResponses.ALLOW)
    model_calls(conn)
    conn.inbox.put_nowait(created("r_user"))  # the user speaks again: a response runs
    await asyncio.sleep(0.2)  # well past the plan's 0.05 s
    assert conn.sent == []
    tools.release.set()
    await conn.wait_sent(1)
    conn.inbox.put_nowait(done("r_user", "completed"))
    await conn.wait_sent(2)
    assert kinds(conn) == ["output", "response.create"]
    await stop(conn, task)
    assert tools.acknowledged_calls == []


async def test_a_refused_acknowledgement_is_not_retried_and_blocks_nothing() -> None:
    tools = AckingTools()
    conn, task, _ = await start(tools)
    model_calls(conn)
    await conn.wait_sent(1)
    conn.inbox.put_nowait(
        {
            "type": "error",
            "error": {
                "type": "invalid_request_error",
                "code": "conversation_already_has_active_response",
                "event_id": conn.sent[0]["event_id"],
            },
        }
    )
    await asyncio.sleep(0.05)
    tools.release.set()
    await conn.wait_sent(3)
    assert kinds(conn) == ["ack", "output", "response.create"]
    await stop(conn, task)
    assert tools.acknowledged_calls == []


async def test_a_handler_without_plans_never_acknowledges() -> None:
    tools = RecordingTools()
    conn, task, _ = await start(tools)
    model_calls(conn)
    await conn.wait_sent(2)
    assert kinds(conn) == ["output", "response.create"]
    await stop(conn, task)


async def test_a_page_response_marked_as_an_ack_is_still_the_pages() -> None:
    """Metadata alone proves nothing: a response.created claiming to be our ack for a call
    we asked none for is judged as any other (cancelled under the cancel policy)."""
    tools = AckingTools(after_s=5.0)
    tools.release.set()
    conn, task, reports = await start(tools)
    conn.inbox.put_nowait(ack_created("r_forged", "c9"))
    await conn.wait_sent(1)
    assert conn.sent[0] == {**conn.sent[0], "type": "response.cancel", "response_id": "r_forged"}
    await stop(conn, task)
    assert len(reports.seen) == 1


async def test_an_acknowledgement_the_provider_never_starts_holds_nothing_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No response.created and no error for our request: given up after the start timeout,
    and the output's response.create goes out."""
    monkeypatch.setattr(acks, "ACK_START_TIMEOUT_S", 0.2)
    tools = AckingTools()
    conn, task, _ = await start(tools)
    model_calls(conn)
    await conn.wait_sent(1)
    tools.release.set()
    await conn.wait_sent(3)
    assert kinds(conn) == ["ack", "output", "response.create"]
    await stop(conn, task)
    assert tools.acknowledged_calls == []


async def test_a_closing_sideband_waits_for_no_acknowledgement() -> None:
    """Our request is pending when the socket closes: the controller ends at once (its
    tool still finishing), not after the start timeout."""
    tools = AckingTools()
    conn, task, _ = await start(tools)
    model_calls(conn)
    await conn.wait_sent(1)
    tools.release.set()
    conn.inbox.put_nowait(None)
    async with asyncio.timeout(1):  # well under ACK_START_TIMEOUT_S
        await task
