"""The dispatcher's hot path on a real database (SQLite, then PostgreSQL): what one tool call
costs in statements and commits, and what the cheaper path must still guarantee.

A call the sideband saw early (one INSERT) is decided in one transaction (session lock with its
limits, claim with the kill switch, the budget count, the grant) and settled in a second; the
dispatcher's budget verdict spares the leash a count of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from broker.call.leash import Leash, LeashTerms, tool_budget_spent
from broker.db import queries
from broker.db.engine import create_engine, make_sessionmaker
from broker.db.models import SessionRow, ToolCallStatus, ToolPath
from broker.record.event_log import EventLog, EventRecorder
from broker.session.end_reason import EndReason
from broker.tools.dispatch import BROKER_ERROR_OUTPUT, CallRejectedError, ToolDispatcher
from broker.tools.registry import load_registry
from sideband.events import parse_observed_event
from tests.support.postgres import fresh_pg_database
from tests.support.rows import session_row

SESSION = "sess_hot"
SIDEBAND = ToolPath.SIDEBAND


async def noop(arguments: dict[str, Any], context: Any) -> dict[str, Any]:
    """An in-process tool that does nothing."""
    return {"ok": True}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def any_db_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """The per-test SQLite database (whatever ``BROKER_TEST_DATABASE_URL`` says: these tests
    run on both on purpose), then a PostgreSQL one."""
    if request.param == "sqlite":
        yield request.getfixturevalue("sqlite_db_url")
        return
    async with fresh_pg_database() as url:
        yield url


class _Sql:
    """Statements and commits an engine ran while counting."""

    def __init__(self) -> None:
        self.statements: list[str] = []
        self.commits = 0
        self.committed = asyncio.Event()


@contextmanager
def _counting(engine: AsyncEngine) -> Iterator[_Sql]:
    sql = _Sql()

    def statement(*args: Any) -> None:
        sql.statements.append(" ".join(str(args[2]).split()[:3]))

    def commit(*args: Any) -> None:
        sql.commits += 1
        sql.committed.set()

    event.listen(engine.sync_engine, "before_cursor_execute", statement)
    event.listen(engine.sync_engine, "commit", commit)
    try:
        yield sql
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", statement)
        event.remove(engine.sync_engine, "commit", commit)


@asynccontextmanager
async def _dispatcher(
    url: str, tmp_path: Path, max_tool_calls: int = 10
) -> AsyncIterator[tuple[ToolDispatcher, AsyncEngine, async_sessionmaker[AsyncSession]]]:
    tools = tmp_path / "tools.toml"
    tools.write_text(f'[tools.noop]\npython = "{__name__}:noop"\n')
    engine = create_engine(url)
    try:
        sessionmaker = make_sessionmaker(engine)
        async with sessionmaker.begin() as s:
            s.add(
                session_row(
                    SESSION,
                    ["noop"],
                    sideband_enabled=True,
                    sideband_state="connected",
                    max_tool_calls=max_tool_calls,
                )
            )
        async with httpx.AsyncClient() as http:
            dispatcher = ToolDispatcher(sessionmaker, load_registry(tools, http))
            yield dispatcher, engine, sessionmaker
            await dispatcher.drain()
    finally:
        await engine.dispose()


async def _seen_and_run(dispatcher: ToolDispatcher, call_id: str, tool: str = "noop") -> Any:
    await dispatcher.record_seen(
        SESSION, call_id, tool, "{}", SIDEBAND, "resp_1", f"item_{call_id}"
    )
    return await dispatcher.run(SESSION, ["noop"], call_id, tool, "{}", SIDEBAND, "resp_1")


async def test_a_seen_call_is_decided_in_one_transaction_and_settled_in_another(
    any_db_url: str, tmp_path: Path
) -> None:
    """Seen: one INSERT, and its ``tool.requested`` audit record's. Final: the lock, the claim,
    the count and the grant commit together (``running`` and ``allowed`` durable before the
    tool runs), then one UPDATE settles the outcome with the output's item id (before
    anything is sent), with its ``tool.succeeded`` record's INSERT."""
    async with _dispatcher(any_db_url, tmp_path) as (dispatcher, engine, _):
        with _counting(engine) as seen:
            inserted = await dispatcher.record_seen(
                SESSION, "call_1", "noop", "{}", SIDEBAND, "resp_1", "item_1"
            )
        assert inserted is True
        assert (seen.statements, seen.commits) == (
            ["INSERT INTO tool_calls", "INSERT INTO audit_pending"],
            1,
        )

        with _counting(engine) as final:
            outcome = await dispatcher.run(
                SESSION, ["noop"], "call_1", "noop", "{}", SIDEBAND, "resp_1", item_id="item_1"
            )
        assert final.commits == 2
        assert len(final.statements) == 6, final.statements
        assert final.statements[-1] == "INSERT INTO audit_pending", final.statements
        assert outcome.executed_now and outcome.status is ToolCallStatus.SUCCEEDED
        assert outcome.budget_spent is False

        row = await dispatcher.get_record(SESSION, "call_1")
        assert row is not None
        assert (row.status, row.decision, row.path, row.seen_by) == (
            "succeeded",
            "allowed",
            "sideband",
            "sideband",
        )
        assert (row.item_id, row.response_id) == ("item_1", "resp_1")
        assert row.output_item_id == outcome.output_item_id is not None
        assert row.started_at is not None and row.finished_at is not None
        assert row.output == outcome.output

        # A second report of the same call neither runs it nor answers the model again.
        assert await dispatcher.record_seen(SESSION, "call_1", "other", "{}", SIDEBAND) is False
        again = await dispatcher.run(SESSION, ["noop"], "call_1", "noop", "{}", SIDEBAND)
        assert (again.executed_now, again.status, again.budget_spent) == (
            False,
            ToolCallStatus.SUCCEEDED,
            None,
        )


async def test_a_call_never_seen_is_recorded_by_the_run(any_db_url: str, tmp_path: Path) -> None:
    """The bridge (or a sideband whose early record failed) reports a call only once: the run
    records it in its own transaction, with the reporter's path as ``seen_by``."""
    async with _dispatcher(any_db_url, tmp_path) as (dispatcher, _, _):
        outcome = await dispatcher.run(SESSION, ["noop"], "call_b", "noop", "{}", ToolPath.BRIDGE)
        assert outcome.status is ToolCallStatus.SUCCEEDED and outcome.executed_now
        assert outcome.output_item_id is None
        row = await dispatcher.get_record(SESSION, "call_b")
        assert row is not None
        assert (row.status, row.seen_by, row.path, row.output_item_id) == (
            "succeeded",
            "bridge",
            "bridge",
            None,
        )


async def test_two_paths_racing_run_a_call_once(any_db_url: str, tmp_path: Path) -> None:
    async with _dispatcher(any_db_url, tmp_path) as (dispatcher, _, _):
        outcomes = await asyncio.gather(
            dispatcher.run(SESSION, ["noop"], "call_r", "noop", "{}", SIDEBAND, loser_wait=5),
            dispatcher.run(
                SESSION, ["noop"], "call_r", "noop", "{}", ToolPath.BRIDGE, loser_wait=5
            ),
        )
        assert sorted(o.executed_now for o in outcomes) == [False, True]
        assert {o.output for o in outcomes} == {outcomes[0].output}
        assert {o.status for o in outcomes} == {ToolCallStatus.SUCCEEDED}


async def test_the_dispatcher_says_when_the_budget_is_spent(
    any_db_url: str, tmp_path: Path
) -> None:
    """The verdict the leash gets instead of counting: the same answer as the count
    (:func:`broker.call.leash.tool_budget_spent`), or ``None`` when the budget was not counted."""
    async with _dispatcher(any_db_url, tmp_path, max_tool_calls=1) as (dispatcher, _, sm):

        async def counted() -> bool:
            async with sm() as s:
                return await tool_budget_spent(s, SESSION, 1)

        first = await _seen_and_run(dispatcher, "call_1")
        assert (first.status, first.budget_spent) == (ToolCallStatus.SUCCEEDED, False)
        assert await counted() is False

        refused_by_policy = await _seen_and_run(dispatcher, "call_2", tool="unknown")
        assert (refused_by_policy.status, refused_by_policy.budget_spent) == (
            ToolCallStatus.DENIED,
            None,
        )

        over = await _seen_and_run(dispatcher, "call_3")
        assert (over.status, over.budget_spent) == (ToolCallStatus.DENIED, True)
        assert await counted() is True
        row = await dispatcher.get_record(SESSION, "call_3")
        assert row is not None
        assert (row.status, row.decision, row.error) == (
            "denied",
            "denied",
            "tool_budget_exhausted",
        )
        assert row.output_item_id == over.output_item_id is not None


async def test_the_kill_switch_is_read_by_the_claim(any_db_url: str, tmp_path: Path) -> None:
    """No cache: a switch committed before a call is claimed denies it; switched back on,
    the next call runs."""
    async with _dispatcher(any_db_url, tmp_path) as (dispatcher, _, sm):
        async with sm.begin() as s:
            await queries.disable_tool(s, "noop", "key_ops", "incident")
        off = await _seen_and_run(dispatcher, "call_off")
        assert off.status is ToolCallStatus.DENIED
        assert off.output is not None and "tool_disabled" in off.output
        async with sm.begin() as s:
            assert await queries.enable_tool(s, "noop")
        on = await _seen_and_run(dispatcher, "call_on")
        assert on.status is ToolCallStatus.SUCCEEDED


async def test_the_cap_on_recorded_calls_holds_on_the_one_statement_path(
    any_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("broker.tools.ledger.MAX_RECORDED_CALLS", 2)
    async with _dispatcher(any_db_url, tmp_path) as (dispatcher, _, _):
        assert await dispatcher.record_seen(SESSION, "c0", "noop", "{}", SIDEBAND) is True
        assert await dispatcher.record_seen(SESSION, "c1", "noop", "{}", SIDEBAND) is True
        assert await dispatcher.record_seen(SESSION, "c0", "noop", "{}", SIDEBAND) is False
        with pytest.raises(CallRejectedError) as seen:
            await dispatcher.record_seen(SESSION, "c2", "noop", "{}", SIDEBAND)
        assert seen.value.code == "too_many_tool_calls"
        with pytest.raises(CallRejectedError):
            await dispatcher.run(SESSION, ["noop"], "c2", "noop", "{}", ToolPath.BRIDGE)
        # Recorded calls still run.
        outcome = await dispatcher.run(SESSION, ["noop"], "c1", "noop", "{}", SIDEBAND)
        assert outcome.status is ToolCallStatus.SUCCEEDED


class _NoDatabase:
    """A sessionmaker the leash must not use when the dispatcher has told it the verdict."""

    def __call__(self) -> Any:
        raise AssertionError("the leash counted tool calls it had been told about")


async def _leash_ended_by(settled: bool | None, replies: bool) -> str:
    ended: list[str] = []

    async def end_call(reason: str) -> None:
        ended.append(reason)

    no_db: Any = _NoDatabase()
    leash = Leash(
        SESSION,
        LeashTerms(max_duration_s=600, idle_timeout_s=1, max_tool_calls=1, live_at=None),
        no_db,
        EventRecorder(no_db, SESSION),
        end_call,
    )
    async with asyncio.timeout(5):
        task = asyncio.create_task(leash.run())
        await asyncio.sleep(0)
        leash.tool_call_settled(settled)
        if replies:
            reply = {"id": "resp_reply", "status": "in_progress"}
            leash.saw(parse_observed_event({"type": "response.created", "response": reply}))
            reply = {"id": "resp_reply", "status": "completed"}
            leash.saw(parse_observed_event({"type": "response.done", "response": reply}))
        await task
    [reason] = ended
    return reason


async def test_the_leash_trusts_the_dispatchers_verdict() -> None:
    """Spent: the leash ends the call after the model's reply, without counting; not spent:
    it counts nothing and the call goes on (here until its idle timeout)."""
    assert await _leash_ended_by(True, replies=True) == EndReason.TOOL_BUDGET
    assert await _leash_ended_by(False, replies=False) == EndReason.IDLE_TIMEOUT


async def test_the_event_log_writes_events_that_come_together_in_one_batch(
    db_url: str, tmp_path: Path
) -> None:
    """Events recorded within the writer's tick share one transaction; stopping writes at
    once."""
    async with _dispatcher(db_url, tmp_path) as (_, engine, sm):
        # A long linger, so that neither half depends on how busy the machine is: the three
        # events come well within it, and a stop that waited it out would show.
        linger = 2.0
        EventLog(tick=linger).bind(sm)
        recorder = EventRecorder(sm, SESSION)
        await recorder.start()
        with _counting(engine) as sql:
            writer = asyncio.create_task(recorder.run())
            for index in range(3):
                recorder.record("in", {"type": "response.done", "index": index})
                await asyncio.sleep(0.01)
            await asyncio.wait_for(sql.committed.wait(), 5 * linger)  # the linger's write
            assert sql.statements.count("INSERT INTO session_events") == 1
            recorder.record("broker", {"type": "broker.tool_call"})
            loop = asyncio.get_running_loop()
            stopped_at = loop.time()
            recorder.stop()
            await asyncio.wait_for(writer, 5)
            assert loop.time() - stopped_at < linger / 2  # the stop did not wait out the linger
        assert sql.statements.count("INSERT INTO session_events") == 2
        assert sql.commits == 2
        async with sm() as s:
            row = await s.get(SessionRow, SESSION)
            assert row is not None and row.usage_responses == 3
            assert await queries.next_event_seq(s, SESSION) == 5


async def test_a_call_whose_decision_failed_is_settled_failed_and_never_runs_later(
    any_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deciding transaction fails (the database blips) and rolls back: the model is told
    ``broker_error``, so the call is settled ``failed`` with that output rather than left
    ``pending`` for a resync or a restarted broker to run and answer a second time."""
    async with _dispatcher(any_db_url, tmp_path) as (dispatcher, _, _):
        await dispatcher.record_seen(SESSION, "call_x", "noop", "{}", SIDEBAND, "resp_1", "i_x")
        real = queries.lock_session_for_tools
        calls = {"n": 0}

        async def blip(*args: Any, **kwargs: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 1:
                raise OperationalError("SELECT", {}, Exception("database is locked"))
            return await real(*args, **kwargs)

        monkeypatch.setattr(queries, "lock_session_for_tools", blip)
        with pytest.raises(OperationalError):
            await dispatcher.run(SESSION, ["noop"], "call_x", "noop", "{}", SIDEBAND, "resp_1")
        row = await dispatcher.get_record(SESSION, "call_x")
        assert row is not None
        assert (row.status, row.error, row.output) == (
            "failed",
            "broker_error",
            BROKER_ERROR_OUTPUT,
        )
        again = await dispatcher.run(SESSION, ["noop"], "call_x", "noop", "{}", SIDEBAND)
        assert (again.executed_now, again.status) == (False, ToolCallStatus.FAILED)
