"""Overload is graceful: a process at its limits refuses new work, never the calls it has.

Made small by a low ceiling (``BROKER_MAX_LIVE_CALLS``) and by stalling the event loop or
the event-log writer on purpose. Calls are sideband-only emulator calls (no WebRTC peer), so
a test holds several live calls cheaply; their user turns are submitted as a page's data
channel would.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from bench.probe import SIDEBAND_ONLY_OFFER, DispatchProbe, find_call, wait_attached
from broker import app_state
from broker.db import queries
from broker.record.event_log import EventRecorder
from emulator.admin import BENCH_BASE_PATH
from tests.conftest import BrokerFactory
from tests.support.broker_server import RunningBroker
from tests.support.flow import session_events, wait_events, wait_session_ended, wait_sideband
from tests.support.metrics import moved, scrape
from tests.support.servers import RunningEmulator

CEILING = 4
RETRY_AFTER = 7
ROUNDS = 3
USER_TURN = json.dumps(
    {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "lookup_order 42"}],
        },
    }
)
RESPONSE_CREATE = json.dumps({"type": "response.create"})


async def ceiling_broker(make_broker: BrokerFactory, emulator: RunningEmulator) -> RunningBroker:
    return await make_broker(
        # Sideband-only calls: the emulator's bench route, no WebRTC peer.
        provider_base_url=emulator.root_url + BENCH_BASE_PATH,
        max_live_calls=CEILING,
        overload_retry_after_s=RETRY_AFTER,
    )


async def live_call(
    broker: RunningBroker, emulator: RunningEmulator, session: dict[str, Any]
) -> DispatchProbe:
    reply = await broker.offer(session, SIDEBAND_ONLY_OFFER)
    assert reply.status == 201, reply.text
    await wait_sideband(broker, session["id"])
    call = find_call(emulator.registry, marker(session))
    assert call is not None
    await wait_attached(call, timeout=10)
    return DispatchProbe(call)


def marker(session: dict[str, Any]) -> str:
    """The instructions a test session was made with: how its emulator call is found."""
    return str(session["marker"])


def assert_overloaded(reply: Any, reason: str) -> None:
    assert reply.status == 503, reply.text
    assert reply.code == "overloaded"
    assert reply.json()["reason"] == reason
    assert reply.headers["Retry-After"] == str(RETRY_AFTER)


async def talk(probe: DispatchProbe, rounds: int) -> None:
    """``rounds`` user turns that each make the model call a tool and answer its output."""
    for _ in range(rounds):
        calls_before, done_before = len(probe.function_calls), probe.responses_done
        probe.call.submit("datachannel", "dc_test", USER_TURN)
        probe.call.submit("datachannel", "dc_test", RESPONSE_CREATE)
        async with asyncio.timeout(20):
            while not (
                len(probe.function_calls) > calls_before
                and probe.function_calls[calls_before] in probe.output_at
                and probe.responses_done >= done_before + 2
            ):
                probe.changed.clear()
                await probe.changed.wait()


async def test_at_its_ceiling_a_broker_refuses_new_calls_and_keeps_every_call_it_has(
    make_broker: BrokerFactory, emulator: RunningEmulator
) -> None:
    """Invariant: at the ceiling, a new session and an offer get 503 ``overloaded`` with
    Retry-After and /readyz fails; the calls already live go on: every function call is
    recorded and answered once, no sideband fails, every response.done (and its usage) is
    stored. Below the ceiling again, the refused offer goes through."""
    broker = await ceiling_broker(make_broker, emulator)
    assert (await broker.request("GET", "/readyz", token=None)).status == 200
    sessions = []
    for n in range(CEILING + 1):
        session = await broker.create_session(tools=["lookup_order"], instructions=f"overload {n}")
        sessions.append({**session, "marker": f"overload {n}"})
    probes = [await live_call(broker, emulator, s) for s in sessions[:CEILING]]
    before = await scrape(broker)

    refused = await broker.request(
        "POST",
        "/api/v1/sessions",
        json_body={"tools": ["lookup_order"], "instructions": "one more"},
    )
    assert_overloaded(refused, "live_calls")
    waiting = sessions[CEILING]
    refused_offer = await broker.offer(waiting, SIDEBAND_ONLY_OFFER)
    assert_overloaded(refused_offer, "live_calls")
    assert (await broker.get_session(waiting["id"]))["state"] == "created"  # untouched
    not_ready = await broker.request("GET", "/readyz", token=None)
    assert_overloaded(not_ready, "live_calls")

    async with asyncio.TaskGroup() as tasks:
        for probe in probes:
            tasks.create_task(talk(probe, ROUNDS))

    for session, probe in zip(sessions, probes, strict=False):
        detail = await broker.get_session(session["id"])
        assert detail["sideband"]["state"] == "connected"
        assert detail["state"] == "live"
        # One output per function call, none lost, none twice.
        assert len(probe.function_calls) == ROUNDS
        assert set(probe.output_at) == set(probe.function_calls)
        async with broker.app[app_state.SESSIONMAKER]() as s:
            rows = await queries.list_tool_calls(s, session["id"])
        assert sorted(r.call_id for r in rows) == sorted(probe.function_calls)
        assert {str(r.status) for r in rows} == {"succeeded"}
        # Kept events and usage are whole: every response.done the emulator sent is stored.
        done = await wait_events(broker, session["id"], "response.done", count=probe.responses_done)
        assert len(done) == probe.responses_done
        detail = await broker.get_session(session["id"])
        assert detail["usage"]["responses"] == probe.responses_done

    after = await scrape(broker)
    # The session and the offer; /readyz is a reading, not a refusal.
    assert moved(before, after, "broker_overload_refusals_total", reason="live_calls") == 2

    # Below the ceiling again: the refused offer goes through, and the process is ready.
    hung_up = await broker.request("POST", f"/api/v1/sessions/{sessions[0]['id']}/hangup")
    assert hung_up.status == 200, hung_up.text
    await wait_session_ended(broker, sessions[0]["id"])
    async with asyncio.timeout(10):
        while broker.app[app_state.SUPERVISOR].live_count >= CEILING:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    assert (await broker.request("GET", "/readyz", token=None)).status == 200
    await live_call(broker, emulator, waiting)


async def wait_for(predicate: Callable[[], bool], timeout: float = 10) -> None:  # noqa: ASYNC109
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def test_a_stalled_event_loop_refuses_new_sessions_until_it_recovers(
    make_broker: BrokerFactory,
) -> None:
    """Invariant: an event loop that runs its timers later than BROKER_OVERLOAD_LOOP_LAG_S on
    average turns new sessions away (503 overloaded, reason loop_lag) and sheds coalescible
    events while it holds, never kept ones; one short stall does not; once the loop is quick
    again, the process takes sessions."""
    broker = await make_broker(overload_loop_lag_s=0.1)
    session = await broker.create_session(tools=["lookup_order"])
    guard = broker.app[app_state.OVERLOAD]
    before = await scrape(broker)
    time.sleep(0.3)  # noqa: ASYNC251 - one stall (a collector pass, say) is not load
    await asyncio.sleep(0.25)
    assert guard.reason() is None
    await wait_for(lambda: guard.loop_lag_s < 0.01, timeout=5)
    # A loop that stays late: every timer fires a quarter of a second behind.
    async with asyncio.timeout(10):
        while guard.loop_lag_s <= 0.1:
            time.sleep(0.25)  # noqa: ASYNC251 - the point: the event loop is busy
            await asyncio.sleep(0)

    refused = await broker.request(
        "POST", "/api/v1/sessions", json_body={"tools": ["lookup_order"]}
    )
    assert refused.status == 503, refused.text
    assert (refused.code, refused.json()["reason"]) == ("overloaded", "loop_lag")
    assert "Retry-After" in refused.headers
    assert (await broker.request("GET", "/readyz", token=None)).status == 503

    recorder = EventRecorder(broker.app[app_state.SESSIONMAKER], session["id"])
    await recorder.start()
    recorder.record("in", {"type": "rate_limits.updated", "rate_limits": []})
    recorder.record("in", {"type": "response.done", "response": {"id": "resp_1"}})
    recorder.stop()
    await recorder.flush()
    assert [e["type"] for e in await session_events(broker, session["id"])] == ["response.done"]
    after = await scrape(broker)
    assert moved(before, after, "broker_events_dropped_total", cap="overload") == 1

    # The lag reading is the worst of the last second, held two seconds more.
    await wait_for(lambda: guard.reason() is None, timeout=10)
    assert (await broker.request("GET", "/readyz", token=None)).status == 200
    created = await broker.request(
        "POST", "/api/v1/sessions", json_body={"tools": ["lookup_order"]}
    )
    assert created.status == 201, created.text


async def test_an_event_log_backlog_is_overload_and_sheds_only_coalescible_events(
    make_broker: BrokerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Invariant: while the event-log writer cannot store (a stalled database), its backlog
    reaches half its bound and new sessions are refused (reason event_backlog); past the
    bound coalescible events are shed, kept ones still queue; when the database answers
    again, every kept event is stored in order and the process takes sessions again."""
    broker = await make_broker(event_log_max_pending=100)
    session = await broker.create_session(tools=["lookup_order"])
    stall = asyncio.Event()
    real = queries.store_event_batch

    async def stalled(s: Any, folds: Any) -> None:
        await stall.wait()
        await real(s, folds)

    monkeypatch.setattr(queries, "store_event_batch", stalled)
    recorder = EventRecorder(broker.app[app_state.SESSIONMAKER], session["id"])
    await recorder.start()
    writer = asyncio.create_task(recorder.run())
    try:
        for n in range(150):
            recorder.record("in", {"type": "response.created", "response": {"id": f"r{n}"}})
            recorder.record("in", {"type": "rate_limits.updated", "n": n})
        guard = broker.app[app_state.OVERLOAD]
        assert guard.reason() is not None and guard.reason().value == "event_backlog"
        refused = await broker.request(
            "POST", "/api/v1/sessions", json_body={"tools": ["lookup_order"]}
        )
        assert refused.status == 503 and refused.json()["reason"] == "event_backlog"
    finally:
        stall.set()
        recorder.stop()
        await asyncio.wait_for(writer, 10)
    events = await session_events(broker, session["id"])
    created = [e["payload"]["response"]["id"] for e in events if e["type"] == "response.created"]
    assert created == [f"r{n}" for n in range(150)]  # every kept event, in order
    shed = [e for e in events if e["type"] == "rate_limits.updated"]
    assert len(shed) < 150
    await wait_for(lambda: guard.reason() is None)
    assert (
        await broker.request("POST", "/api/v1/sessions", json_body={"tools": ["lookup_order"]})
    ).status == 201
