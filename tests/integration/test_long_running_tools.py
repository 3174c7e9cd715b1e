"""Long-running (``http_async``) tools and their acknowledgement, through the real stack:
broker + emulator + an aiortc page + a real HTTP tool backend (202 + status URL, or callback).

Must-show 3: a tool that takes 4 s with ``ack_after_ms = 1000``: about a second in, the
broker asks the model (out of band) to say it is working on it; that response runs and ends
before the output goes in; then exactly one ``function_call_output`` carries the real result,
and the model's answer quotes it. The acknowledgement never entered the conversation.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from broker import app_state
from broker.audit.records import AuditKind
from broker.db.models import ToolCallback
from broker.db.queries.audit import AuditFilter, audit_records
from broker.tools.async_executor import CallbackStore
from broker.tools.executors import ToolContext
from broker.tools.policy import error_output
from emulator import Call, EmulatorSettings, FaultConfig
from emulator.model import ACK_TEXT
from tests.conftest import assert_conformant
from tests.support.async_tool_backend import AsyncToolBackend, report, sign_callback
from tests.support.broker_server import PROVIDER_KEY, BrokerFactory, RunningBroker
from tests.support.browser import FakeBrowser
from tests.support.conformance import sideband_client_event_failures
from tests.support.flow import (
    ask,
    assistant_text,
    connect_browser,
    outputs_received,
    session_events,
)
from tests.support.servers import RunningEmulator, start_emulator
from tests.support.tool_backend import ToolBackend


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
async def async_backend() -> AsyncIterator[AsyncToolBackend]:
    backend = AsyncToolBackend()
    await backend.start()
    yield backend
    await backend.close()


async def _start_async_broker(
    make_broker: BrokerFactory,
    tool_backend: ToolBackend,
    async_backend: AsyncToolBackend,
    tmp_path: Path,
    **overrides: Any,
) -> RunningBroker:
    tools = tmp_path / "async-tools.toml"
    tools.write_text(tool_backend.config_toml() + async_backend.config_toml(ack_after_ms=1000))
    port = _free_port()
    return await make_broker(
        listen_port=port, public_url=f"http://127.0.0.1:{port}", tools_config=tools, **overrides
    )


@pytest.fixture
async def async_broker(
    make_broker: BrokerFactory,
    tool_backend: ToolBackend,
    async_backend: AsyncToolBackend,
    tmp_path: Path,
) -> RunningBroker:
    """A broker with the long-running tools, public at its own loopback port (the callback
    URL it hands the backend must reach it)."""
    return await _start_async_broker(make_broker, tool_backend, async_backend, tmp_path)


def _is_ack(event: dict[str, Any]) -> bool:
    response = event.get("response") or {}
    metadata = response.get("metadata") or {}
    return metadata.get("broker") == "ack"


async def _answer(browser: FakeBrowser, tool: str, report_id: str) -> tuple[str, float]:
    """Ask for ``tool``; return the model's answer quoting its output, and when it was asked."""
    loop = asyncio.get_running_loop()
    asked = loop.time()
    ask(browser, f"{tool} {report_id}")
    done = await browser.wait_for(
        "response.done", lambda e: f"{tool} returned:" in assistant_text(e), timeout=20
    )
    return assistant_text(done), asked


async def _call(broker: RunningBroker, emulator: RunningEmulator, session_id: str) -> Call:
    call = emulator.registry.get((await broker.get_session(session_id))["call_id"])
    assert call is not None
    return call


def _ack_requests(call: Call) -> list[dict[str, Any]]:
    return [
        r.event
        for r in call.received
        if r.source == "sideband" and r.event.get("type") == "response.create" and _is_ack(r.event)
    ]


async def _acknowledged_records(broker: RunningBroker, session_id: str) -> list[Any]:
    await broker.app[app_state.AUDIT].chain_pending()
    async with broker.app[app_state.SESSIONMAKER]() as s:
        records = await audit_records(
            s,
            AuditFilter(session_id=session_id, kinds=(AuditKind.TOOL_ACKNOWLEDGED.value,)),
            after_seq=0,
            limit=50,
        )
    return list(records)


async def _wait_acknowledged(broker: RunningBroker, session_id: str) -> list[Any]:
    async with asyncio.timeout(10):
        while not (records := await _acknowledged_records(broker, session_id)):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    return records


def _most_responses_at_once(call: Call) -> int:
    """How many responses the provider ran at the same time, at most."""
    running: set[str] = set()
    most = 0
    for event in call.sent:
        if event["type"] == "response.created":
            running.add(event["response"]["id"])
            most = max(most, len(running))
        elif event["type"] == "response.done":
            running.discard(event["response"]["id"])
    return most


@pytest.mark.parametrize(
    "single_active_response", [False, True], ids=["out-of-band-beside", "one-response-at-a-time"]
)
async def test_a_long_tool_is_acknowledged_then_answered_once_with_its_real_result(
    async_broker: RunningBroker,
    emulator: RunningEmulator,
    async_backend: AsyncToolBackend,
    single_active_response: bool,
) -> None:
    """Must-show 3 (202 + status URL, 4 s, ack after 1 s): the out-of-band acknowledgement
    is asked for about a second in, says ACK_TEXT, and ends before the output is sent; the
    output goes in once, with the real result, the model quotes it, and nothing of the
    acknowledgement is in the conversation. Recorded: the event log and the audit trail.

    Under both readings of the provider (an out-of-band response may run beside another, or
    is refused like a second in-band one: ``single_active_response``) the broker asks for
    the acknowledgement only while no response runs, so it is never refused and no two
    responses ever overlap."""
    emulator.faults.update({"single_active_response": single_active_response})
    broker = async_broker
    session = await broker.create_session(tools=["slow_report"])
    browser = await connect_browser(broker, session)
    try:
        answer, _ = await _answer(browser, "slow_report", "R-1")
        expected = report("R-1")
        assert answer == f"slow_report returned: {expected}"
        call = await _call(broker, emulator, session["id"])
        [row] = (await broker.get_session(session["id"]))["tool_calls"]
        call_id = row["call_id"]
        assert (row["tool"], row["status"], row["output"]) == ("slow_report", "succeeded", expected)

        # Exactly one output, with the real result.
        assert outputs_received(call) == [
            ("sideband", {"type": "function_call_output", "call_id": call_id, "output": expected})
        ]
        # One acknowledgement, out of band, for this call, about a second after the tool began.
        [ack] = _ack_requests(call)
        assert ack["response"] == {
            "conversation": "none",
            "instructions": ack["response"]["instructions"],
            "tool_choice": "none",
            "metadata": {"broker": "ack", "call_id": call_id},
        }
        [post] = async_backend.posts_to("slow_report")
        assert post.verified
        assert post.headers["X-Session-ID"] == session["id"]
        assert post.headers["Idempotency-Key"] == f"{session['id']}:{call_id}"
        ack_at = next(r.at for r in call.received if r.event is ack)
        assert 0.8 <= ack_at - post.at < async_backend.work_seconds, ack_at - post.at
        assert async_backend.polls() and all(p.verified for p in async_backend.polls())

        # The page heard the acknowledgement; it never entered the conversation.
        acks = [e for e in browser.events if e["type"] == "response.done" and _is_ack(e)]
        assert [assistant_text(e) for e in acks] == [ACK_TEXT]
        assert acks[0]["response"]["status"] == "completed"
        assert not any(ACK_TEXT in json.dumps(item) for item in call.conversation)
        # Nothing of ours was refused (conversation_already_has_active_response least of
        # all), and the provider never ran two responses at once.
        assert [e for e in call.sent if e["type"] == "error"] == []
        assert _most_responses_at_once(call) == 1

        # In the session's log: the acknowledgement is asked for before the output goes in,
        # and the response that reads the output is asked for only once the acknowledgement
        # ended. (The output item itself may go in while the acknowledgement still speaks: a
        # slow machine stretches its audio past the tool's four seconds.)
        def _output_of(event: dict[str, Any]) -> str | None:
            item = event["payload"].get("item") or {}
            return item.get("call_id") if item.get("type") == "function_call_output" else None

        def at(
            events: list[dict[str, Any]], direction: str, kind: str, ack: bool, after: int = -1
        ) -> int | None:
            return next(
                (
                    i
                    for i, e in enumerate(events)
                    if i > after
                    and (e["direction"], e["type"]) == (direction, kind)
                    and _is_ack(e["payload"]) == ack
                    and (kind != "conversation.item.create" or _output_of(e) == call_id)
                ),
                None,
            )

        # The event log is written in batches: wait until what is looked at is stored.
        async with asyncio.timeout(5):
            while True:
                events = await session_events(broker, session["id"])
                output_sent = at(events, "out", "conversation.item.create", False)
                if output_sent is not None:
                    answer_asked = at(events, "out", "response.create", False, after=output_sent)
                    if answer_asked is not None:
                        break
                await asyncio.sleep(0.05)
        ack_asked = at(events, "out", "response.create", True)
        ack_done = at(events, "in", "response.done", True)
        assert ack_asked is not None and ack_done is not None
        assert ack_asked < output_sent
        assert ack_done < answer_asked
        assert [e for e in events if _output_of(e) == call_id and e["direction"] == "out"] == [
            events[output_sent]
        ]
        [logged] = [e for e in events if e["type"] == "broker.tool_acknowledged"]
        assert logged["payload"]["call_id"] == call_id
        assert logged["payload"]["tool"] == "slow_report"
        [record] = await _wait_acknowledged(broker, session["id"])
        assert (record.actor, record.tool) == ("broker", "slow_report")
        assert record.body["call_id"] == call_id
    finally:
        await browser.close()


async def test_a_refused_acknowledgement_is_given_up_and_the_real_output_still_goes_in_once(
    make_broker: BrokerFactory,
    tool_backend: ToolBackend,
    async_backend: AsyncToolBackend,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One response at a time (``single_active_response``), and the acknowledgement collides:
    the page started an out-of-band response of its own whose ``response.created`` never
    reached the sideband, so the broker thought nothing ran. The provider refuses the
    acknowledgement (``conversation_already_has_active_response``, its event_id); the broker
    takes that as a refused courtesy: not retried, not recorded as acknowledged, and the
    real output still goes in exactly once and is quoted."""
    caplog.set_level(logging.INFO, logger="sideband.acks")
    # 0.5 s a delta: the page's response (a few words) still runs when the acknowledgement
    # is due, a second after the tool began.
    emulator = await start_emulator(
        EmulatorSettings(
            api_key=PROVIDER_KEY,
            token_interval=0.5,
            faults=FaultConfig(single_active_response=True),
        )
    )
    broker = await _start_async_broker(
        make_broker, tool_backend, async_backend, tmp_path, provider_base_url=emulator.base_url
    )
    session = await broker.create_session(tools=["slow_report"])
    browser = await connect_browser(broker, session)
    try:
        ask(browser, "slow_report R-7")
        async with asyncio.timeout(10):
            while not async_backend.posts_to("slow_report"):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        emulator.faults.update(
            {"sideband_drop_event_types": ["response.created"], "sideband_drop_event_count": 1}
        )
        browser.send(
            {
                "type": "response.create",
                "event_id": "ev_page_oob",
                "response": {"conversation": "none", "metadata": {"by": "page"}},
            }
        )
        done = await browser.wait_for(
            "response.done", lambda e: "slow_report returned:" in assistant_text(e), timeout=30
        )
        expected = report("R-7")
        assert assistant_text(done) == f"slow_report returned: {expected}"
        call = await _call(broker, emulator, session["id"])
        [row] = (await broker.get_session(session["id"]))["tool_calls"]
        assert (row["status"], row["output"]) == ("succeeded", expected)
        assert outputs_received(call) == [
            (
                "sideband",
                {"type": "function_call_output", "call_id": row["call_id"], "output": expected},
            )
        ]
        # Asked for once, refused by its event id, never retried and never started.
        [ack] = _ack_requests(call)
        [error] = [e["error"] for e in call.sent if e["type"] == "error"]
        assert (error["code"], error["event_id"]) == (
            "conversation_already_has_active_response",
            ack["event_id"],
        )
        assert not [e for e in call.sent if e["type"] == "response.created" and _is_ack(e)]
        assert "provider refused an acknowledgement" in caplog.text
        events = await session_events(broker, session["id"])
        assert not [e for e in events if e["type"] == "broker.tool_acknowledged"]
        assert await _acknowledged_records(broker, session["id"]) == []
    finally:
        await browser.close()
        await broker.close()
        await emulator.close()
    assert_conformant(emulator)
    assert not sideband_client_event_failures(emulator.registry)


async def test_a_callback_tool_is_acknowledged_and_answered_from_its_callback(
    async_broker: RunningBroker, emulator: RunningEmulator, async_backend: AsyncToolBackend
) -> None:
    """The backend answers 202 with no status URL and later POSTs the result to the signed
    callback URL: the broker takes it (204), the waiting call reads it, one output goes in."""
    async_backend.work_seconds = 2.5
    broker = async_broker
    session = await broker.create_session(tools=["callback_report"])
    browser = await connect_browser(broker, session)
    try:
        answer, _ = await _answer(browser, "callback_report", "R-2")
        expected = report("R-2")
        assert answer == f"callback_report returned: {expected}"
        call = await _call(broker, emulator, session["id"])
        [row] = (await broker.get_session(session["id"]))["tool_calls"]
        assert outputs_received(call) == [
            (
                "sideband",
                {"type": "function_call_output", "call_id": row["call_id"], "output": expected},
            )
        ]
        [post] = async_backend.posts_to("callback_report")
        url = post.headers["X-Callback-URL"]
        assert url.startswith(f"{broker.settings.public_url}/api/v1/tool-callbacks/")
        assert async_backend.callbacks_sent == [(url, 204)]
        assert async_backend.polls() == []
        assert len(_ack_requests(call)) == 1
    finally:
        await browser.close()


async def test_a_callback_landing_on_another_instance_reaches_the_waiting_call(
    async_broker: RunningBroker,
    make_broker: BrokerFactory,
    emulator: RunningEmulator,
    async_backend: AsyncToolBackend,
) -> None:
    """Two brokers on one database: the call runs on the first, the backend's callback
    lands on the second; the first reads it from ``tool_callbacks`` and answers once."""
    other = await make_broker(tools_config=async_broker.settings.tools_config)
    async_backend.callback_origin = other.base_url
    async_backend.work_seconds = 1.5
    session = await async_broker.create_session(tools=["callback_report"])
    browser = await connect_browser(async_broker, session)
    try:
        answer, _ = await _answer(browser, "callback_report", "R-6")
        assert answer == f"callback_report returned: {report('R-6')}"
        [(url, status)] = async_backend.callbacks_sent
        assert (url.startswith(other.base_url), status) == (True, 204)
        call = await _call(async_broker, emulator, session["id"])
        assert len(outputs_received(call)) == 1
    finally:
        await browser.close()


async def test_a_tool_past_its_deadline_gets_tool_timeout_once(
    async_broker: RunningBroker, emulator: RunningEmulator, async_backend: AsyncToolBackend
) -> None:
    """A job that never finishes: the whole call (POST + polls) is bounded by the tool's
    timeout (2 s); the model gets tool_timeout once, and no poll follows the deadline."""
    broker = async_broker
    session = await broker.create_session(tools=["stuck_report"])
    browser = await connect_browser(broker, session)
    try:
        answer, _ = await _answer(browser, "stuck_report", "R-3")
        expected = error_output("tool_timeout", "the tool did not finish in 2s")
        assert answer == f"stuck_report returned: {expected}"
        call = await _call(broker, emulator, session["id"])
        [row] = (await broker.get_session(session["id"]))["tool_calls"]
        assert (row["status"], row["error"]) == ("failed", "tool_timeout")
        assert outputs_received(call) == [
            (
                "sideband",
                {"type": "function_call_output", "call_id": row["call_id"], "output": expected},
            )
        ]
        polls = len(async_backend.polls())
        await asyncio.sleep(0.5)  # a poll loop that outlived the deadline would show here
        assert len(async_backend.polls()) == polls
    finally:
        await browser.close()


async def test_a_tool_answering_at_once_is_never_acknowledged(
    async_broker: RunningBroker, emulator: RunningEmulator, async_backend: AsyncToolBackend
) -> None:
    """200 at once: the output goes in, and no acknowledgement is ever asked for."""
    broker = async_broker
    session = await broker.create_session(tools=["quick_report"])
    browser = await connect_browser(broker, session)
    try:
        answer, _ = await _answer(browser, "quick_report", "R-4")
        assert answer == f"quick_report returned: {report('R-4')}"
        call = await _call(broker, emulator, session["id"])
        assert len(outputs_received(call)) == 1
        assert _ack_requests(call) == []
        assert async_backend.polls() == []
        assert await _acknowledged_records(broker, session["id"]) == []
    finally:
        await browser.close()


async def test_the_callback_route_refuses_unknown_replayed_unsigned_and_oversized_posts(
    async_broker: RunningBroker, http: aiohttp.ClientSession
) -> None:
    """``POST /api/v1/tool-callbacks/{id}``: no API key, but an unknown id is 404, a bad
    signature 401, a body over 64 KiB 413, a valid one 204 (stored), and the same again 409;
    each refusal is problem+json."""
    broker = async_broker
    session = await broker.create_session(tools=["callback_report"])
    store = CallbackStore(broker.app[app_state.SESSIONMAKER], broker.settings.public_url)
    callback_id = await store.open(ToolContext(session["id"], "call_cb", "callback_report"), 30)
    url = store.url(callback_id)
    body = report("R-5").encode()
    json_type = {"Content-Type": "application/json"}

    async def post(target: str, data: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        async with http.post(target, data=data, headers=headers) as resp:
            content_type = resp.headers.get("Content-Type", "")
            payload = await resp.json(content_type=None) if resp.status != 204 else None
            if resp.status >= 400:
                assert content_type.startswith("application/problem+json")
            return resp.status, payload

    status, problem = await post(
        f"{broker.base_url}/api/v1/tool-callbacks/nope",
        body,
        {**json_type, **sign_callback(url, body)},
    )
    assert (status, problem["code"]) == (404, "callback_not_found")
    status, problem = await post(url, body, json_type)
    assert (status, problem["code"]) == (401, "invalid_signature")
    forged = {**json_type, **sign_callback(url, body, secret="another-secret-0123456789abcdef-xyz")}
    status, problem = await post(url, body, forged)
    assert (status, problem["code"]) == (401, "invalid_signature")
    huge = b'"' + b"x" * (64 * 1024) + b'"'
    status, problem = await post(url, huge, {**json_type, **sign_callback(url, huge)})
    assert (status, problem["code"]) == (413, "payload_too_large")
    assert await store.take(callback_id) is None

    assert (await post(url, body, {**json_type, **sign_callback(url, body)}))[0] == 204
    status, problem = await post(url, body, {**json_type, **sign_callback(url, body)})
    assert (status, problem["code"]) == (409, "callback_already_received")
    assert await store.take(callback_id) == report("R-5")
    # Taken once: the raw output does not stay in the table, yet a repeat is still a replay.
    assert await store.take(callback_id) is None
    async with broker.app[app_state.SESSIONMAKER]() as s:
        row = await s.get(ToolCallback, callback_id)
    assert row is not None and row.result is None and row.received_at is not None
    status, problem = await post(url, body, {**json_type, **sign_callback(url, body)})
    assert (status, problem["code"]) == (409, "callback_already_received")
