"""Two broker processes on one PostgreSQL database: failover, handoff, fencing, routing.

Real ``broker serve`` processes (tests/support/broker_process.py), the in-process emulator and
tool backend, FakeBrowsers (aiortc) whose calls live at the emulator whatever happens to the
brokers. Each call is owned by the instance that took its offer (``call_leases``); these tests
kill, stop and pause owners and check what the other instance does with their calls.

Invariants: within the lease (plus a scan) every orphaned call is owned and watched again;
every function call gets exactly one output and no tool runs twice; usage is what the model
reported; an ex-owner writes nothing about a call it lost; any instance serves any call.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import func, select

from broker.db.engine import create_engine, make_sessionmaker
from broker.db.models import CallLease, SessionEvent
from broker.record.usage import Usage, usage_of_response_done
from sideband.events import parse_observed_event
from tests.support.broker_process import BrokerLauncher, BrokerProcess
from tests.support.broker_server import ADMIN_KEY
from tests.support.browser import FakeBrowser
from tests.support.flow import ask, outputs_received, says
from tests.support.servers import RunningEmulator, set_faults
from tests.support.tool_backend import ToolBackend

CALLS = 20
TTL_S = 3.0
TEST_BUDGET_S = 120


class Leases:
    """Reads the shared database as an operator would."""

    def __init__(self, url: str) -> None:
        self.engine = create_engine(url)
        self.sessionmaker = make_sessionmaker(self.engine)

    async def owners(self) -> dict[str, str]:
        async with self.sessionmaker() as s:
            rows = await s.execute(select(CallLease.session_id, CallLease.owner_id))
            return {row.session_id: row.owner_id for row in rows}

    async def duplicated_server_events(self, session_id: str) -> int:
        """Server events stored more than once (two instances recorded the same frame)."""
        async with self.sessionmaker() as s:
            payloads = await s.scalars(
                select(SessionEvent.payload).where(
                    SessionEvent.session_id == session_id, SessionEvent.direction == "in"
                )
            )
            ids = [p.get("event_id") for p in payloads if isinstance(p, dict)]
        ids = [i for i in ids if i]
        return len(ids) - len(set(ids))

    async def event_count(self, session_id: str) -> int:
        async with self.sessionmaker() as s:
            return int(
                await s.scalar(select(func.count()).where(SessionEvent.session_id == session_id))
                or 0
            )


@pytest.fixture
async def leases(pg_url: str) -> AsyncIterator[Leases]:
    reader = Leases(pg_url)
    yield reader
    await reader.engine.dispose()


async def instance_id(broker: BrokerProcess) -> str:
    """The instance id a broker logged at start."""
    for _ in range(100):
        for line in broker.log_text().splitlines():
            if "broker instance " in line and " registered" in line:
                return line.split("broker instance ", 1)[1].split(" ", 1)[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no instance id logged\n{broker.log_tail()}")


def usage_seen(browser: FakeBrowser) -> Usage:
    total = Usage()
    for event in browser.events:
        if event.get("type") == "response.done":
            usage = usage_of_response_done(parse_observed_event(event))
            if usage is not None:
                total += usage
    return total


async def open_calls(
    brokers: list[BrokerProcess], count: int, tools: list[str]
) -> list[tuple[BrokerProcess, FakeBrowser, dict[str, Any]]]:
    """``count`` calls, offered round-robin through ``brokers`` (each owns its offers)."""
    calls = []
    for n in range(count):
        broker = brokers[n % len(brokers)]
        browser = FakeBrowser()
        session = await broker.create_session(tools=tools)
        await broker.connect(browser, session)
        calls.append((broker, browser, session))
    return calls


async def close_all(calls: list[tuple[BrokerProcess, FakeBrowser, dict[str, Any]]]) -> None:
    await asyncio.gather(*(browser.close() for _, browser, _ in calls), return_exceptions=True)


async def wait_until(
    predicate: Any,
    timeout: float,  # noqa: ASYNC109
    what: str,
    *brokers: BrokerProcess,
) -> float:
    """Poll an async predicate; returns how long it took. On a timeout the failure carries
    the log tails of ``brokers`` (what they were doing instead)."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            while not await predicate():  # noqa: ASYNC110 - polling the database
                await asyncio.sleep(0.05)
    except TimeoutError:
        tails = "\n".join(b.log_tail(120) for b in brokers)
        raise AssertionError(f"{what} not within {timeout}s\n{tails}") from None
    return time.monotonic() - started


def one_output_each(emulator: RunningEmulator, call_ids: dict[str, list[str]]) -> None:
    """Every function call of every provider call got exactly one output."""
    for provider_call_id, function_call_ids in call_ids.items():
        call = emulator.registry.get(provider_call_id)
        assert call is not None
        answered = [event["call_id"] for _, event in outputs_received(call)]
        assert sorted(answered) == sorted(function_call_ids), (provider_call_id, answered)


async def test_sigkill_an_owner_the_other_instance_takes_over_every_call(
    pg_brokers: BrokerLauncher,
    emulator: RunningEmulator,
    tool_backend: ToolBackend,
    leases: Leases,
) -> None:
    """20 calls across two instances; one is SIGKILLed while its tools run: within the lease
    plus a few seconds the survivor owns and watches every call, each function call got one
    output, no tool ran twice, and each session's usage is the model's."""
    tool_backend.hold_seconds = 3.0
    env = {"BROKER_LEASE_TTL_S": str(TTL_S)}
    calls: list[tuple[BrokerProcess, FakeBrowser, dict[str, Any]]] = []
    try:
        async with asyncio.timeout(TEST_BUDGET_S):
            a = await pg_brokers.start(**env)
            b = await pg_brokers.start(**env)
            a_id, b_id = await instance_id(a), await instance_id(b)
            calls = await open_calls([a, b], CALLS, ["hold"])
            owners = await leases.owners()
            assert {owners[s["id"]] for _, _, s in calls} == {a_id, b_id}
            for _, browser, _ in calls:
                ask(browser, "hold")
            function_calls = {
                s["id"]: (await browser.wait_for("response.function_call_arguments.done"))[
                    "call_id"
                ]
                for _, browser, s in calls
            }
            await tool_backend.wait_calls_to("hold", CALLS)
            await a.kill()
            killed_at = time.monotonic()

            async def all_on_b() -> bool:
                return set((await leases.owners()).values()) == {b_id}

            took = await wait_until(all_on_b, TTL_S + 10, "every call owned by the survivor", b)
            for _, browser, s in calls:
                await browser.wait_for("response.done", says("hold returned"), timeout=30)
                await b.wait_session(s["id"], lambda d: d["sideband"]["state"] == "connected")
            # Usage is folded with its rows; let the survivor's writer catch up.

            async def usage_settled() -> bool:
                # Usage rides on the event log's group commit: poll until it is in.
                for _, browser, s in calls:
                    detail = await b.get_session(s["id"])
                    if detail["usage"]["responses"] != usage_seen(browser).responses:
                        return False
                return True

            await wait_until(usage_settled, 15, "usage recorded", b)
            details = {s["id"]: await b.get_session(s["id"]) for _, _, s in calls}
    finally:
        await close_all(calls)

    assert took <= TTL_S + 5, f"takeover took {took:.1f}s after the kill"
    assert time.monotonic() - killed_at < TEST_BUDGET_S
    one_output_each(
        emulator,
        {details[sid]["call_id"]: [function_calls[sid]] for sid in details},
    )
    for call_id in function_calls.values():
        assert len(tool_backend.calls_for(call_id)) == 1, "a tool ran twice"
    for _, browser, s in calls:
        seen = usage_seen(browser)
        usage = details[s["id"]]["usage"]
        assert (usage["responses"], usage["input_tokens"], usage["output_tokens"]) == (
            seen.responses,
            seen.input_tokens,
            seen.output_tokens,
        )


@pytest.mark.parametrize("one_sideband", [False, True], ids=["sidebands", "one-sideband"])
async def test_sigterm_hands_every_call_over_at_once(
    pg_brokers: BrokerLauncher,
    emulator: RunningEmulator,
    tool_backend: ToolBackend,
    leases: Leases,
    http: aiohttp.ClientSession,
    one_sideband: bool,
) -> None:
    """SIGTERM on an owner: the other instance owns each of its calls well before any lease
    could run out (under 2 s); a tool call made right after the handoff runs once, answered
    by the new owner. With several sidebands per call the successor watches before the owner
    lets go; with one (the provider closes the owner's when the successor attaches) the owner
    lets go at once and the successor handles what its own sideband got from the start."""
    await set_faults(http, emulator, single_sideband=one_sideband)
    env = {"BROKER_LEASE_TTL_S": "30", "BROKER_SHUTDOWN_GRACE_S": "5"}
    calls: list[tuple[BrokerProcess, FakeBrowser, dict[str, Any]]] = []
    try:
        async with asyncio.timeout(TEST_BUDGET_S):
            a = await pg_brokers.start(**env)
            b = await pg_brokers.start(**env)
            b_id = await instance_id(b)
            calls = await open_calls([a], CALLS // 2, ["lookup_order"])
            for _, browser, _ in calls:
                ask(browser, "please lookup_order 42")
            for _, browser, _ in calls:
                await browser.wait_for("response.done", says("42"), timeout=20)
            a.process.send_signal(signal.SIGTERM)

            async def all_on_b() -> bool:
                owners = await leases.owners()
                return all(owners.get(s["id"]) == b_id for _, _, s in calls)

            took = await wait_until(all_on_b, 10, "every call handed over", a, b)
            async with asyncio.timeout(15):
                assert await a.process.wait() == 0, a.log_tail()
            for _, browser, _ in calls:
                earlier = {id(event) for event in browser.events}
                ask(browser, "please lookup_order 42")

                def answered(event: dict[str, Any], earlier: set[int] = earlier) -> bool:
                    return id(event) not in earlier and bool(says("42")(event))

                await browser.wait_for("response.done", answered, timeout=20)
            details = [await b.get_session(s["id"]) for _, _, s in calls]
    finally:
        await close_all(calls)

    assert took < 2.0, f"handoff took {took:.2f}s"
    for detail in details:
        assert detail["state"] == "live"
        call = emulator.registry.get(detail["call_id"])
        assert call is not None
        function_calls = [r["call_id"] for r in detail["tool_calls"]]
        assert len(function_calls) == 2
        assert sorted(e["call_id"] for _, e in outputs_received(call)) == sorted(function_calls)
        for row in detail["tool_calls"]:
            assert len(tool_backend.calls_for(row["call_id"])) == 1
        # The successor attached before the owner let go: the old sideband and the new one.
        assert len(call.sideband_attaches) == 2


async def test_a_paused_owner_writes_nothing_about_calls_it_lost(
    pg_brokers: BrokerLauncher,
    emulator: RunningEmulator,
    tool_backend: ToolBackend,
    leases: Leases,
) -> None:
    """SIGSTOP an owner past its lease: the other instance takes its call; a tool turn runs
    there; SIGCONT: the stale owner, with that turn's frames queued on its old socket, stores
    no event, runs no tool and sends nothing on the call."""
    env = {"BROKER_LEASE_TTL_S": str(TTL_S)}
    calls: list[tuple[BrokerProcess, FakeBrowser, dict[str, Any]]] = []
    try:
        async with asyncio.timeout(TEST_BUDGET_S):
            a = await pg_brokers.start(**env)
            b = await pg_brokers.start(**env)
            b_id = await instance_id(b)
            calls = await open_calls([a], 1, ["lookup_order"])
            [(_, browser, session)] = calls
            a.process.send_signal(signal.SIGSTOP)
            stopped_at = time.time()

            async def on_b() -> bool:
                return (await leases.owners()).get(session["id"]) == b_id

            await wait_until(on_b, TTL_S + 10, "the call taken over", a, b)
            await b.wait_session(session["id"], lambda d: d["sideband"]["state"] == "connected")

            async def resynced() -> bool:
                return "sideband.resync" in b.log_text()

            # Asked only once the new owner's resync is over: a turn begun during it is another
            # test's subject (the resync may find the model's call as an unproven tail).
            await wait_until(resynced, 10, "the new owner's resync", b)
            ask(browser, "please lookup_order 42")
            await browser.wait_for("response.done", says("42"), timeout=20)
            detail = await b.get_session(session["id"])
            a.process.send_signal(signal.SIGCONT)
            resumed_at = time.time()
            await asyncio.sleep(TTL_S)  # the stale owner runs, sees its lease gone, lets go
            after = await b.get_session(session["id"])
            duplicates = await leases.duplicated_server_events(session["id"])
    finally:
        await close_all(calls)

    call = emulator.registry.get(detail["call_id"])
    assert call is not None
    first_socket = (
        call.sideband_attaches
        and [r.connection_id for r in call.received if r.source == "sideband"][0]
    )
    late = [
        r
        for r in call.received
        if r.source == "sideband" and r.connection_id == first_socket and r.at >= stopped_at
    ]
    assert late == [], f"the stale owner sent {len(late)} event(s) after it was paused"
    assert duplicates == 0, "the stale owner stored events the new owner had stored"
    [row] = after["tool_calls"]
    assert len(tool_backend.calls_for(row["call_id"])) == 1
    assert [e["call_id"] for _, e in outputs_received(call)] == [row["call_id"]]
    assert after["state"] == "live"
    assert "lease lost" in a.log_text() or "no longer owns" in a.log_text(), a.log_tail()
    assert resumed_at > stopped_at


async def test_any_instance_serves_a_call_owned_by_the_other(
    pg_brokers: BrokerLauncher,
    emulator: RunningEmulator,
    tool_backend: ToolBackend,
    leases: Leases,
) -> None:
    """A call owned by B: A streams its events without gaps (and resumes by Last-Event-ID),
    answers the page's bridge call with the sideband's outcome, and ends it on an operator's
    hangup (carried out by B)."""
    calls: list[tuple[BrokerProcess, FakeBrowser, dict[str, Any]]] = []
    try:
        async with asyncio.timeout(TEST_BUDGET_S):
            a = await pg_brokers.start()
            b = await pg_brokers.start()
            b_id = await instance_id(b)
            calls = await open_calls([b], 1, ["lookup_order"])
            [(_, browser, session)] = calls
            assert (await leases.owners())[session["id"]] == b_id
            stream = await a.http.get(
                f"{a.base_url}/api/v1/sessions/{session['id']}/events",
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                timeout=aiohttp.ClientTimeout(total=60),
            )
            assert stream.status == 200
            ask(browser, "please lookup_order 42")
            call_id = (await browser.wait_for("response.function_call_arguments.done"))["call_id"]
            await browser.wait_for("response.done", says("42"), timeout=20)
            bridged = await a.request(
                "POST",
                f"/api/v1/sessions/{session['id']}/tools/lookup_order",
                token=session["client_secret"]["value"],
                json_body={"call_id": call_id, "arguments": {"order_id": "42"}},
            )
            seqs: list[int] = []
            types: list[str] = []
            async with asyncio.timeout(15):
                async for raw in stream.content:
                    line = raw.decode().strip()
                    if line.startswith("id:"):
                        seqs.append(int(line[3:].strip()))
                    elif line.startswith("data:"):
                        types.append(json.loads(line[5:])["type"])
                    if "broker.tool_call" in types and len(seqs) >= 10:
                        break
            stream.close()
            resumed = await a.http.get(
                f"{a.base_url}/api/v1/sessions/{session['id']}/events",
                headers={"Authorization": f"Bearer {ADMIN_KEY}", "Last-Event-ID": str(seqs[4])},
                timeout=aiohttp.ClientTimeout(total=60),
            )
            first_after: int | None = None
            async with asyncio.timeout(10):
                async for raw in resumed.content:
                    line = raw.decode().strip()
                    if line.startswith("id:"):
                        first_after = int(line[3:].strip())
                        break
            resumed.close()
            hangup = await a.request(
                "POST",
                f"/api/v1/sessions/{session['id']}/hangup",
                json_body={"reason": "test: ops hangup through the other instance"},
            )
            ended = await b.wait_session(session["id"], lambda d: d["state"] == "ended")
    finally:
        await close_all(calls)

    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"gaps in {seqs}"
    assert first_after == seqs[4] + 1
    assert bridged.status == 200, bridged.text
    assert bridged.json()["handled_by"] == "sideband"
    assert len(tool_backend.calls_for(call_id)) == 1
    assert hangup.status in (200, 202, 204), hangup.text
    assert ended["end_reason"] == "ops_hangup"
    call = emulator.registry.get(ended["call_id"])
    assert call is not None and call.ended


async def test_an_instance_without_the_shared_keys_refuses_to_start_beside_others(
    pg_brokers: BrokerLauncher, tmp_path: Path
) -> None:
    """Beside a live instance, a broker whose signing key is a generated per-host file, or
    whose admin key differs, exits with a configuration error naming the variables (never
    their values); the running instance is untouched."""
    first = await pg_brokers.start()
    refusals = []
    for overrides in (
        {"BROKER_SIGNING_KEY": "", "BROKER_SIGNING_KEY_FILE": str(tmp_path / "key")},
        {"BROKER_ADMIN_KEY": "another-admin-key-" + "y" * 32},
    ):
        with pytest.raises(AssertionError, match="did not start"):
            await pg_brokers.start(**overrides)
        refused = pg_brokers.started[-1]
        assert await refused.process.wait() == 2
        refusals.append(refused.log_text())
    assert "generated per-host file" in refusals[0]
    assert "BROKER_SIGNING_KEY" in refusals[1] and "y" * 32 not in refusals[1]
    assert (await first.request("GET", "/readyz")).status == 200


async def metric(broker: BrokerProcess, line_start: str) -> float:
    """The value of the first /metrics line starting with ``line_start`` (0 if none)."""
    text = (await broker.request("GET", "/metrics")).text
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_a_bridge_call_for_a_bridge_only_call_runs_at_its_owner(
    pg_brokers: BrokerLauncher, tool_backend: ToolBackend, leases: Leases
) -> None:
    """A page relays a tool call (no sideband) to the instance that does not own its call:
    the owner runs it, once, and the answer comes back through the instance asked; a
    repeat of the same call returns the same outcome without running it again."""
    calls: list[tuple[BrokerProcess, FakeBrowser, dict[str, Any]]] = []
    try:
        async with asyncio.timeout(TEST_BUDGET_S):
            a = await pg_brokers.start()
            b = await pg_brokers.start()
            b_id = await instance_id(b)
            session = await b.create_session(tools=["lookup_order"], sideband=False)
            browser = FakeBrowser()
            calls.append((b, browser, session))
            reply = await b.offer(session, await browser.create_offer())
            assert reply.status == 201, reply.text
            assert (await leases.owners())[session["id"]] == b_id
            ran = 'broker_tool_calls_total{outcome="succeeded",tool="lookup_order"}'
            bridged = [
                await a.request(
                    "POST",
                    f"/api/v1/sessions/{session['id']}/tools/lookup_order",
                    token=session["client_secret"]["value"],
                    json_body={"call_id": "call_bridged_1", "arguments": {"order_id": "42"}},
                )
                for _ in range(2)
            ]
            on_a, on_b = await metric(a, ran), await metric(b, ran)
    finally:
        await close_all(calls)

    assert [r.status for r in bridged] == [200, 200], bridged[0].text
    assert bridged[0].json() == bridged[1].json()
    assert bridged[0].json()["handled_by"] == "bridge"
    assert json.loads(bridged[0].json()["output"]) == {"order_id": "42", "status": "shipped"}
    assert (on_a, on_b) == (0.0, 1.0), "the owner runs the call, once"
    assert len(tool_backend.calls_for("call_bridged_1")) == 1
