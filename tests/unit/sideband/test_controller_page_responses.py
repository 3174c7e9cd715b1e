"""The ``page_responses`` policy in the controller, driven through the in-memory connection.

Under ``cancel`` a response is left to run only if the broker asked for it (its own
``response.create`` after a tool output) or a committed audio turn preceded it; any other
``response.created`` is the page's and is cancelled at once and reported. Under ``allow``
(the default) nothing is cancelled.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sideband import CallController, PagePolicy, PageResponse, PageResponses
from sideband.tamper import OwnedSession
from tests.unit.sideband.test_controller import (
    Observer,
    QueueConnection,
    RecordingTools,
    args_done,
    created,
    done,
    fc_item,
)
from tests.unit.sideband.test_controller_tamper import (
    CONFIG,
    Reports,
    answer_probe,
    finish,
    updated,
)


def page_committed(item_id: str) -> dict[str, Any]:
    """A commit with no speech the provider's voice detection ended: the page's own."""
    return {"type": "input_audio_buffer.committed", "item_id": item_id, "previous_item_id": None}


def committed(item_id: str) -> list[dict[str, Any]]:
    """A user turn server VAD ended and committed (the provider answers it by itself)."""
    stopped = {"type": "input_audio_buffer.speech_stopped", "item_id": item_id, "audio_end_ms": 1}
    return [stopped, page_committed(item_id)]


async def start(
    conn: QueueConnection, policy: PageResponses
) -> tuple[asyncio.Task[int | None], Reports, RecordingTools]:
    async def connect() -> Any:
        return conn

    reports = Reports()
    tools = RecordingTools()
    controller = CallController(
        "rtc_test",
        connect,
        tools,
        Observer(),
        owned_session=OwnedSession.from_config(CONFIG),
        tamper=reports,
        page=PagePolicy(responses=policy),
        probe_interval=None,
    )
    task = asyncio.create_task(controller.run())
    await conn.wait_sent(1)  # the assertion of the owned config
    conn.sent.clear()
    conn.inbox.put_nowait(updated())  # its answer: the baseline
    return task, reports, tools


def cancels(conn: QueueConnection) -> list[str]:
    return [e["response_id"] for e in conn.sent if e["type"] == "response.cancel"]


# Each script is fed to the controller in order; ``cancelled`` lists the responses it must
# cancel (and report), and no other.
SCRIPTS = [
    pytest.param([created("r_page")], ["r_page"], id="page-response"),
    pytest.param(
        [*committed("item_a1"), created("r_audio")],
        [],
        id="after-a-committed-audio-turn",
    ),
    pytest.param(
        [*committed("item_a1"), created("r_audio"), done("r_audio", "completed"), created("r_2")],
        ["r_2"],
        id="one-commit-lets-one-response-through",
    ),
    pytest.param(
        [*committed("item_a1"), *committed("item_a2"), created("r_1"), created("r_2")],
        ["r_2"],
        id="one-turn-pending-at-a-time",
    ),
    pytest.param(
        [page_committed("item_p1"), created("r_page")],
        ["r_page"],
        id="the-pages-own-commit-is-no-audio-turn",
    ),
    pytest.param(
        [
            updated(
                audio={
                    "input": {"turn_detection": {"type": "server_vad", "create_response": False}}
                }
            ),
            *committed("item_a1"),
            created("r_page"),
        ],
        ["r_page"],
        id="no-audio-turn-when-vad-does-not-answer",
    ),
]


@pytest.mark.parametrize(("script", "cancelled"), SCRIPTS)
async def test_under_cancel_only_responses_nobody_trusted_started_are_cancelled(
    script: list[dict[str, Any]], cancelled: list[str]
) -> None:
    """A response.created with no committed audio turn before it (each commit accounts for
    one response) and no response.create of the broker's is cancelled and reported once."""
    conn = QueueConnection()
    task, reports, _ = await start(conn, PageResponses.CANCEL)
    for frame in script:
        conn.inbox.put_nowait(frame)
    await finish(conn, task)  # every frame before the close is handled by then
    assert cancels(conn) == cancelled
    assert reports.tampers == [PageResponse(response_id=r, cancelled=True) for r in cancelled]


async def test_under_allow_a_page_response_runs() -> None:
    """The default policy leaves a response the page started alone and reports nothing."""
    conn = QueueConnection()
    task, reports, _ = await start(conn, PageResponses.ALLOW)
    conn.inbox.put_nowait(created("r_page"))
    conn.inbox.put_nowait(done("r_page", "completed"))
    await finish(conn, task)
    assert cancels(conn) == []
    assert reports.tampers == []


async def test_under_cancel_the_brokers_own_response_after_a_tool_output_runs() -> None:
    """The model's call runs; the broker sends its output, probes the session, and asks
    for the answer: the response that request creates is the broker's, never cancelled,
    while a page response started right after it finishes still is."""
    conn = QueueConnection()
    task, reports, tools = await start(conn, PageResponses.CANCEL)
    # The model's turn was started by a committed audio turn (it is not cancelled either).
    for frame in (
        *committed("item_a1"),
        created("r_model"),
        args_done("r_model", "call_1"),
        done("r_model", "completed", fc_item("call_1")),
    ):
        conn.inbox.put_nowait(frame)
    await conn.wait_sent(1)
    assert conn.sent[0]["item"]["type"] == "function_call_output"
    await answer_probe(conn, 1)
    await conn.wait_sent(3)
    assert conn.sent[2]["type"] == "response.create"
    conn.inbox.put_nowait(created("r_answer"))
    conn.inbox.put_nowait(done("r_answer", "completed"))
    conn.inbox.put_nowait(created("r_page"))
    await finish(conn, task)
    assert tools.executed == ["call_1"]
    assert cancels(conn) == ["r_page"]
    assert reports.tampers == [PageResponse(response_id="r_page", cancelled=True)]
