"""Tool policy holds against an untrusted browser steering the model, on both paths.

Every refusal is checked through the real stack (broker + emulator + FakeBrowser): the tool
never runs (the backend saw nothing), the call is recorded ``denied`` (or ``failed`` for a tool
that misbehaved) with its stable code, and the model still gets one error output it can explain.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.db import queries
from broker.db.engine import create_engine, make_sessionmaker
from broker.db.models import ToolCall, ToolCallStatus, utcnow
from broker.tools.budget import STALE_RUNNING_AFTER, ToolLimits, grant_locked
from tests.support.broker_server import RunningBroker
from tests.support.flow import ask, connect_browser, outputs_received, says
from tests.support.postgres import fresh_pg_database
from tests.support.rows import session_row
from tests.support.servers import RunningEmulator
from tests.support.tool_backend import HUGE_LIMIT, ToolBackend


async def _only_call(broker: RunningBroker, session: dict[str, Any]) -> dict[str, Any]:
    [row] = (await broker.get_session(session["id"]))["tool_calls"]
    return row


async def _sideband_outputs(
    broker: RunningBroker, emulator: RunningEmulator, session: dict[str, Any]
) -> list[str]:
    """The function_call_output texts the model received, all of which came over the sideband."""
    call = emulator.registry.get((await broker.get_session(session["id"]))["call_id"])
    assert call is not None
    received = outputs_received(call)
    assert {source for source, _ in received} <= {"sideband"}
    return [item["output"] for _, item in received]


def _error(output: str) -> dict[str, str]:
    """The error object of an output; the shape is exactly ``{"error": {code, message}}``."""
    parsed = json.loads(output)
    assert list(parsed) == ["error"] and set(parsed["error"]) == {"code", "message"}
    return parsed["error"]


# --- denied by policy: nothing runs --------------------------------------------------------


async def test_schema_invalid_arguments_are_denied_and_explained_without_echo(
    broker: RunningBroker, emulator: RunningEmulator, tool_backend: ToolBackend
) -> None:
    """Arguments failing the tool's JSON schema never reach the tool; the message the model
    gets names the problem but does not repeat the (attacker-chosen) arguments."""
    session = await broker.create_session(tools=["lookup_order"])
    browser = await connect_browser(broker, session)
    try:
        ask(browser, 'lookup_order {"order_id": "7", "zz_probe_key": "zz-probe-value"}')
        await browser.wait_for("response.done", says("arguments_invalid"))
        row = await _only_call(broker, session)
        assert (row["status"], row["decision"], row["error"]) == (
            "denied",
            "denied",
            "arguments_invalid",
        )
        error = _error(row["output"])
        assert error["code"] == "arguments_invalid"
        assert "zz-probe" not in error["message"] and "zz_probe" not in error["message"]
        assert await _sideband_outputs(broker, emulator, session) == [row["output"]]
        assert tool_backend.requests == []
    finally:
        await browser.close()


async def test_oversized_arguments_are_denied(
    broker: RunningBroker, emulator: RunningEmulator, tool_backend: ToolBackend
) -> None:
    """The session's max_argument_bytes is enforced before the arguments are even parsed."""
    session = await broker.create_session(tools=["lookup_order"], limits={"max_argument_bytes": 64})
    browser = await connect_browser(broker, session)
    try:
        ask(browser, 'lookup_order {"order_id": "' + "9" * 100 + '"}')
        await browser.wait_for("response.done", says("arguments_too_large"))
        row = await _only_call(broker, session)
        assert (row["status"], row["error"]) == ("denied", "arguments_too_large")
        assert "64 bytes" in _error(row["output"])["message"]
        assert await _sideband_outputs(broker, emulator, session) == [row["output"]]
        assert tool_backend.requests == []
    finally:
        await browser.close()


async def test_tool_outside_the_allowlist_is_never_executed(
    broker: RunningBroker, emulator: RunningEmulator, tool_backend: ToolBackend
) -> None:
    """The model (steered by the browser) calls a tool the session never had: the broker knows
    delete_account, but this session did not allow it, so it is refused and never run."""
    session = await broker.create_session(tools=["lookup_order"])
    browser = await connect_browser(broker, session)
    try:
        ask(browser, 'please tool:delete_account {"user": "u1"}')
        await browser.wait_for("response.done", says("tool_not_allowed"))
        row = await _only_call(broker, session)
        assert (row["tool"], row["status"], row["decision"], row["error"]) == (
            "delete_account",
            "denied",
            "denied",
            "tool_not_allowed",
        )
        assert await _sideband_outputs(broker, emulator, session) == [row["output"]]
        assert tool_backend.calls_to("delete_account") == []
    finally:
        await browser.close()


async def test_tool_budget_is_exhausted_after_n_calls(
    broker: RunningBroker, emulator: RunningEmulator, tool_backend: ToolBackend
) -> None:
    """With max_tool_calls = 1 the second call is denied tool_budget_exhausted."""
    session = await broker.create_session(tools=["lookup_order"], limits={"max_tool_calls": 1})
    browser = await connect_browser(broker, session)
    try:
        ask(browser, "lookup_order 1")
        await browser.wait_for("response.done", says('"order_id":"1"'))
        ask(browser, "lookup_order 2")
        await browser.wait_for("response.done", says("tool_budget_exhausted"))
        first, second = (await broker.get_session(session["id"]))["tool_calls"]
        assert (first["status"], first["decision"]) == ("succeeded", "allowed")
        assert (second["status"], second["error"]) == ("denied", "tool_budget_exhausted")
        assert len(await _sideband_outputs(broker, emulator, session)) == 2
        assert [r.arguments for r in tool_backend.calls_to("lookup_order")] == [{"order_id": "1"}]
    finally:
        await browser.close()


async def test_concurrent_calls_over_the_limit_are_denied(
    broker: RunningBroker, tool_backend: ToolBackend
) -> None:
    """Two calls in one response run at once; with max_concurrent_tools = 1 the one that
    finds the other still running is denied (not queued)."""
    tool_backend.delay = 0.5
    session = await broker.create_session(
        tools=["lookup_order"], limits={"max_concurrent_tools": 1}
    )
    browser = await connect_browser(broker, session)
    try:
        ask(browser, "lookup_order 1 lookup_order 2")
        await browser.wait_for("response.done", says("too_many_concurrent_tools"))
        rows = (await broker.get_session(session["id"]))["tool_calls"]
        assert sorted((r["status"], r["error"]) for r in rows) == [
            ("denied", "too_many_concurrent_tools"),
            ("succeeded", None),
        ]
        assert len(tool_backend.calls_to("lookup_order")) == 1
    finally:
        await browser.close()


async def test_the_bridge_applies_the_same_policy_and_budget(
    broker: RunningBroker, tool_backend: ToolBackend
) -> None:
    """The bridge path (a bridge-only session) shares the dispatcher: schema and budget hold
    there too, and a denied call does not spend the budget. A tool outside the allowlist is
    refused outright (403), never recorded or run."""
    session = await broker.create_session(
        tools=["lookup_order"], sideband=False, limits={"max_tool_calls": 1}
    )
    browser = await connect_browser(broker, session)
    try:
        refused = await broker.bridge(session, "delete_account", "call_a", {})
        assert (refused.status, refused.code) == (403, "tool_not_allowed")
        outcomes = []
        for tool, call_id, arguments in [
            ("lookup_order", "call_b", {"order_id": 5}),
            ("lookup_order", "call_c", {"order_id": "5"}),
            ("lookup_order", "call_d", {"order_id": "6"}),
        ]:
            reply = await broker.bridge(session, tool, call_id, arguments)
            assert reply.status == 200, reply.text
            body = reply.json()
            code = _error(body["output"])["code"] if body["status"] == "denied" else None
            outcomes.append((body["status"], code))
        assert outcomes == [
            ("denied", "arguments_invalid"),
            ("succeeded", None),
            ("denied", "tool_budget_exhausted"),
        ]
        assert [r.arguments for r in tool_backend.requests] == [{"order_id": "5"}]
        detail = await broker.get_session(session["id"])
        assert "call_a" not in {c["call_id"] for c in detail["tool_calls"]}
    finally:
        await browser.close()


# --- ran, and the tool misbehaved ----------------------------------------------------------


async def test_a_redirect_from_the_tool_backend_is_refused(
    broker: RunningBroker, emulator: RunningEmulator, tool_backend: ToolBackend
) -> None:
    """A 3xx is a failure: the broker never follows it (the signed call would go elsewhere)."""
    session = await broker.create_session(tools=["redirect"])
    browser = await connect_browser(broker, session)
    try:
        ask(browser, "redirect")
        await browser.wait_for("response.done", says("tool_redirect_refused"))
        row = await _only_call(broker, session)
        assert (row["status"], row["decision"], row["error"]) == (
            "failed",
            "allowed",
            "tool_redirect_refused",
        )
        assert await _sideband_outputs(broker, emulator, session) == [row["output"]]
        assert [r.tool for r in tool_backend.requests] == ["redirect"]
    finally:
        await browser.close()


async def test_an_endless_tool_response_is_cut_at_the_cap(
    broker: RunningBroker, emulator: RunningEmulator, tool_backend: ToolBackend
) -> None:
    """The body is read while it streams and abandoned past the cap: an answer that never
    ends fails tool_response_too_large (not a timeout, not a broker reading without end)."""
    session = await broker.create_session(tools=["huge"])
    browser = await connect_browser(broker, session)
    try:
        ask(browser, "huge")
        await browser.wait_for("response.done", says("tool_response_too_large"))
        row = await _only_call(broker, session)
        assert (row["status"], row["error"]) == ("failed", "tool_response_too_large")
        assert await _sideband_outputs(broker, emulator, session) == [row["output"]]
        assert tool_backend.huge_bytes_sent < HUGE_LIMIT
    finally:
        await browser.close()


async def test_tools_that_outlive_their_timeout_fail_tool_timeout(
    broker: RunningBroker, emulator: RunningEmulator, tool_backend: ToolBackend
) -> None:
    """The per-tool timeout holds for HTTP (slow, 0.5 s) and in-process (sleepy, 0.3 s) tools."""
    session = await broker.create_session(tools=["slow", "sleepy"])
    browser = await connect_browser(broker, session)
    try:
        async with asyncio.timeout(5):
            ask(browser, "slow sleepy")
            await browser.wait_for("response.done", says("tool_timeout"))
        rows = (await broker.get_session(session["id"]))["tool_calls"]
        assert sorted((r["tool"], r["status"], r["error"]) for r in rows) == [
            ("sleepy", "failed", "tool_timeout"),
            ("slow", "failed", "tool_timeout"),
        ]
        messages = {_error(r["output"])["message"] for r in rows}
        assert messages == {"the tool did not finish in 0.5s", "the tool did not finish in 0.3s"}
        assert len(await _sideband_outputs(broker, emulator, session)) == 2
    finally:
        await browser.close()


# --- the budget check is atomic ------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def any_db_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """The per-test SQLite database (whatever ``BROKER_TEST_DATABASE_URL`` says: these tests
    run on both on purpose), then a PostgreSQL one."""
    if request.param == "sqlite":
        yield request.getfixturevalue("sqlite_db_url")
        return
    async with fresh_pg_database() as url:
        yield url


@asynccontextmanager
async def _database(url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(url)
    try:
        yield make_sessionmaker(engine)
    finally:
        await engine.dispose()


async def _session_with_calls(
    sessionmaker: async_sessionmaker[AsyncSession], count: int, started_at: datetime | None = None
) -> tuple[str, list[str]]:
    """A session with ``count`` claimed (running) calls that have not been granted yet."""
    session_id, call_ids = "sess_budget", [f"call_{i}" for i in range(count)]
    async with sessionmaker.begin() as s:
        s.add(session_row(session_id, ["lookup_order"], max_tool_calls=3, max_concurrent_tools=64))
        await s.flush()
        for call_id in call_ids:
            s.add(
                ToolCall(
                    session_id=session_id,
                    call_id=call_id,
                    tool="lookup_order",
                    arguments="{}",
                    status=ToolCallStatus.RUNNING,
                    seen_by="bridge",
                    started_at=started_at or utcnow(),
                )
            )
    return session_id, call_ids


async def _grant(
    sessionmaker: async_sessionmaker[AsyncSession],
    session_id: str,
    call_id: str,
    limits: ToolLimits,
) -> str | None:
    """One grant as the dispatcher makes it: the session's tool lock, then the grant, then
    the commit."""
    async with sessionmaker.begin() as s:
        assert await queries.lock_session_for_tools(s, session_id) is not None
        refused, _ = await grant_locked(s, session_id, call_id, limits)
        return refused


async def _grant_all(
    sessionmaker: async_sessionmaker[AsyncSession],
    session_id: str,
    call_ids: list[str],
    limits: ToolLimits,
) -> list[str | None]:
    async with asyncio.timeout(10):
        return list(
            await asyncio.gather(
                *(_grant(sessionmaker, session_id, call_id, limits) for call_id in call_ids)
            )
        )


async def test_concurrent_grants_never_exceed_the_budget(any_db_url: str) -> None:
    """Ten calls asking for a budget of three at the same moment: exactly three get it
    (the per-session lock, not luck, decides; on both databases)."""
    async with _database(any_db_url) as sessionmaker:
        session_id, call_ids = await _session_with_calls(sessionmaker, 10)
        limits = ToolLimits(max_tool_calls=3, max_concurrent_tools=64, max_argument_bytes=1024)
        results = await _grant_all(sessionmaker, session_id, call_ids, limits)
    assert results.count(None) == 3
    assert set(results) == {None, "tool_budget_exhausted"}


async def test_concurrency_counts_granted_running_calls_and_forgets_debris(db_url: str) -> None:
    """Granted calls still running fill the concurrency limit; a ``running`` row older than
    any tool could run (a broker that died mid-call) does not hold a slot forever."""
    limits = ToolLimits(max_tool_calls=100, max_concurrent_tools=2, max_argument_bytes=1024)
    async with _database(db_url) as sessionmaker:
        session_id, call_ids = await _session_with_calls(sessionmaker, 5)
        results = await _grant_all(sessionmaker, session_id, call_ids, limits)
        assert results.count(None) == 2
        assert set(results) == {None, "too_many_concurrent_tools"}

    async with _database(db_url) as sessionmaker:
        async with sessionmaker.begin() as s:
            await s.execute(update(ToolCall).values(started_at=utcnow() - STALE_RUNNING_AFTER * 2))
        assert await _grant(sessionmaker, session_id, call_ids[-1], limits) is None


async def test_a_session_records_a_bounded_number_of_calls(
    broker: RunningBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Denied calls cost no budget, so the number of recorded calls is capped on its own:
    a browser on the bridge cannot make a session store rows without end."""
    monkeypatch.setattr("broker.tools.ledger.MAX_RECORDED_CALLS", 3)
    session = await broker.create_session(tools=["lookup_order"], sideband=False)
    browser = await connect_browser(broker, session)
    try:
        for index in range(3):
            reply = await broker.bridge(session, "lookup_order", f"call_{index}", {"order_id": 1})
            assert (reply.status, reply.json()["status"]) == (200, "denied")
        again = await broker.bridge(session, "lookup_order", "call_0", {"order_id": 1})
        assert again.status == 200  # an existing call id is still answered
        refused = await broker.bridge(session, "lookup_order", "call_3", {"order_id": 1})
        assert (refused.status, refused.code) == (422, "too_many_tool_calls")
        assert len((await broker.get_session(session["id"]))["tool_calls"]) == 3
    finally:
        await browser.close()
