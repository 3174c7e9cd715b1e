"""Chaos: many calls making tool calls while the provider drops their sidebands at random.

The invariant the broker promises: every function call the model emitted gets exactly one
``function_call_output`` at the provider, every tool runs at most once, and the model answers
every output once, however often the sideband is lost (and whatever the sideband missed while
it was away). A call the model made entirely while no sideband watched cannot be proven the
model's (a page can plant the same item): it is answered ``call_unverified`` and never run, and
the model calls again, watched; that call runs once. Every other call runs exactly once.

The broker runs as its own ``broker serve`` process, on SQLite (the default) and on
PostgreSQL, as it would in production. In this test process the emulator and the 20 test
browsers carry 40 aiortc peers, whose codec threads hold the GIL so much that an in-process
broker's aiosqlite worker threads wait tens of milliseconds for every hand-off: that measures
the test harness, not the broker.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest

from emulator import Call, EmulatorSettings
from tests.conftest import assert_conformant
from tests.support.broker_process import BrokerLauncher, BrokerProcess
from tests.support.broker_server import PROVIDER_KEY
from tests.support.browser import FakeBrowser
from tests.support.conformance import sideband_client_event_failures
from tests.support.flow import ask, assistant_text, outputs_received, says
from tests.support.servers import RunningEmulator, request_json, start_emulator
from tests.support.tool_backend import ToolBackend

CALLS: Final = 20
DROPS: Final = 100
MIN_TURNS: Final = 4
MAX_TURNS: Final = 40  # under the session's default tool budget (50)
TURN_TIMEOUT_S: Final = 30.0
RUN_TIMEOUT_S: Final = 240.0
UNVERIFIED: Final = "call_unverified"


@pytest.fixture
async def quiet_emulator() -> AsyncIterator[RunningEmulator]:
    """The emulator without voice: 20 calls synthesising speech would only load the CPU.

    At teardown its server events are checked against the SDK's types, and so is every
    client event the broker sent on a sideband.
    """
    running = await start_emulator(EmulatorSettings(api_key=PROVIDER_KEY, speech="off"))
    yield running
    await running.close()
    assert_conformant(running)
    failures = sideband_client_event_failures(running.registry)
    assert not failures, "non-conformant broker client events:\n" + "\n".join(failures[:5])


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """The broker's database: a SQLite file (even with ``BROKER_TEST_DATABASE_URL`` set: this
    test runs on both on purpose) or a fresh PostgreSQL database."""
    url: str = request.getfixturevalue("sqlite_db_url" if request.param == "sqlite" else "pg_url")
    return url


@pytest.fixture
async def chaos_broker(
    database_url: str, quiet_emulator: RunningEmulator, tools_config: Path, tmp_path: Path
) -> AsyncIterator[BrokerProcess]:
    async with BrokerLauncher(
        database_url, quiet_emulator.base_url, tools_config, tmp_path
    ) as launcher:
        # A reconnect bound well above the drop pacing: under this load a re-attach can take
        # seconds, and giving up would end the call (a different test).
        yield await launcher.start(BROKER_SIDEBAND_RECONNECT_TIMEOUT="20")


def output_for(order_id: str) -> str:
    return json.dumps({"order_id": order_id, "status": "shipped"}, separators=(",", ":"))


async def run_script(
    index: int, browser: FakeBrowser, enough: asyncio.Event, turns_done: list[int]
) -> None:
    """One caller: a tool call per turn, each answered before the next, until told to stop."""
    turn = 0
    while turn < MAX_TURNS and (turn < MIN_TURNS or not enough.is_set()):
        order_id = f"{index}-{turn}"
        answered = says(output_for(order_id))
        while True:
            before = {id(event) for event in browser.events}
            ask(browser, f'lookup_order {{"order_id": "{order_id}"}}')
            try:
                done = await browser.wait_for(
                    "response.done",
                    lambda e, before=before, answered=answered: (
                        id(e) not in before and (answered(e) or UNVERIFIED in assistant_text(e))
                    ),
                    TURN_TIMEOUT_S,
                )
            except TimeoutError as exc:
                raise AssertionError(f"caller {index} stuck at turn {turn}: {exc}") from None
            if answered(done):
                break
            # The model's call (and its retry) happened while no sideband watched: it was
            # not run, and the model says so. A caller asks again, as a user would.
        turn += 1
        turns_done[index] = turn


async def drop_sidebands(
    http: aiohttp.ClientSession,
    emulator: RunningEmulator,
    call_ids: list[str],
    rng: random.Random,
) -> int:
    """Abort a random call's sidebands, ``DROPS`` times in all (only drops that cut one count)."""
    dropped = 0
    attempts = 0
    while dropped < DROPS and attempts < DROPS * 50:
        attempts += 1
        call_id = rng.choice(call_ids)
        status, body = await request_json(
            http, emulator, "POST", f"/_emulator/calls/{call_id}/drop-sidebands", {"mode": "abort"}
        )
        assert status == 200, body
        dropped += 1 if body["dropped"] else 0
        # Paced so calls make progress between drops (about one drop per call every 4 s);
        # faster, the test measures an overloaded event loop, not the broker's recovery.
        await asyncio.sleep(rng.uniform(0.1, 0.3))
    return dropped


def answers_quoted(call: Call) -> list[str]:
    """Each line of the model's messages that quotes a tool output (one per output answered)."""
    lines: list[str] = []
    for item in call.conversation:
        if item.get("type") != "message" or item.get("role") != "assistant":
            continue
        for part in item.get("content") or []:
            text = part.get("transcript") or part.get("text") or ""
            lines += [
                line for line in text.splitlines() if line.startswith("lookup_order returned:")
            ]
    return lines


def unverified_calls(call: Call) -> set[str]:
    """Call ids answered ``call_unverified`` (not run: the model made them unwatched)."""
    found = set()
    for item in call.conversation:
        if item.get("type") != "function_call_output":
            continue
        try:
            error = json.loads(item["output"]).get("error")
        except (ValueError, AttributeError):
            continue
        if isinstance(error, dict) and error.get("code") == UNVERIFIED:
            found.add(item["call_id"])
    return found


def emitted_calls(call: Call) -> list[str]:
    """The call ids of every function call the model put in the conversation."""
    return [item["call_id"] for item in call.conversation if item.get("type") == "function_call"]


async def test_every_call_gets_one_output_and_every_tool_runs_once_under_random_drops(
    chaos_broker: BrokerProcess,
    quiet_emulator: RunningEmulator,
    tool_backend: ToolBackend,
    http: aiohttp.ClientSession,
) -> None:
    emulator, broker = quiet_emulator, chaos_broker
    rng = random.Random(5)  # fixed drop choices (timing still varies from run to run)
    browsers: list[FakeBrowser] = []
    try:
        async with asyncio.timeout(RUN_TIMEOUT_S):
            sessions = [await broker.create_session(tools=["lookup_order"]) for _ in range(CALLS)]
            for session in sessions:
                browser = FakeBrowser()
                browsers.append(browser)
                await broker.connect(browser, session)
            details = [await broker.get_session(s["id"]) for s in sessions]
            call_ids = [d["call_id"] for d in details]

            enough = asyncio.Event()
            turns_done = [0] * CALLS
            scripts = [
                asyncio.create_task(run_script(i, b, enough, turns_done), name=f"script:{i}")
                for i, b in enumerate(browsers)
            ]
            dropped = await drop_sidebands(http, emulator, call_ids, rng)
            enough.set()
            try:
                await asyncio.gather(*scripts)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{broker.log_tail()}") from None
            assert dropped == DROPS

            # Every sideband came back (and nothing is left to deliver) before checking.
            for session in sessions:
                await wait_connected(broker, session["id"])
    finally:
        for browser in browsers:
            await browser.close()

    executed = Counter(
        (r.headers["X-Session-ID"], r.headers["X-Call-ID"])
        for r in tool_backend.calls_to("lookup_order")
    )
    assert executed and max(executed.values()) == 1, [k for k, n in executed.items() if n > 1]
    total_run = 0
    for session, call_id in zip(sessions, call_ids, strict=True):
        call = emulator.registry.get(call_id)
        assert call is not None
        emitted = emitted_calls(call)
        unverified = unverified_calls(call)
        run = [cid for cid in emitted if cid not in unverified]
        total_run += len(run)
        assert len(emitted) == len(set(emitted)) and len(run) >= MIN_TURNS
        sent = Counter(item["call_id"] for _, item in outputs_received(call))
        assert sent == Counter(emitted), (session["id"], sent, emitted)
        in_conversation = Counter(
            item["call_id"]
            for item in call.conversation
            if item.get("type") == "function_call_output"
        )
        assert in_conversation == Counter(emitted)
        # The model answered each output once: no response was asked for twice. An
        # unverified one it answers by calling again, not by quoting it.
        quoted = Counter(
            line for line in answers_quoted(call) if UNVERIFIED not in line
        )  # an unverified call the model did not retry is read out; it is no tool output
        expected = Counter(
            f"lookup_order returned: {item['output']}"
            for item in call.conversation
            if item.get("type") == "function_call_output" and item["call_id"] not in unverified
        )
        assert quoted == expected, (
            session["id"],
            [line for line, n in quoted.items() if n > 1],
            sorted(unverified),
        )
        ran = {cid for (sid, cid) in executed if sid == session["id"]}
        assert ran == set(run)
        rows = (await broker.get_session(session["id"]))["tool_calls"]
        assert sorted(r["call_id"] for r in rows) == sorted(run)
        assert {(r["status"], r["injected_at"] is not None) for r in rows} == {("succeeded", True)}
    assert sum(executed.values()) == total_run >= CALLS * MIN_TURNS
    reconnects = await broker_reconnects(broker)
    assert reconnects >= DROPS


async def wait_connected(broker: BrokerProcess, session_id: str) -> None:
    async with asyncio.timeout(20):
        while True:
            detail = await broker.get_session(session_id)
            rows: list[dict[str, Any]] = detail["tool_calls"]
            if detail["sideband"]["state"] == "connected" and all(
                r["injected_at"] is not None for r in rows
            ):
                return
            await asyncio.sleep(0.05)


async def broker_reconnects(broker: BrokerProcess) -> int:
    """``broker_sideband_connects_total{kind="reconnect"}`` from the broker's /metrics."""
    reply = await broker.request("GET", "/metrics")
    assert reply.status == 200, reply.text
    for line in reply.text.splitlines():
        if line.startswith('broker_sideband_connects_total{kind="reconnect"}'):
            return int(float(line.split()[-1]))
    return 0
