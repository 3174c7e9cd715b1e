"""Every tool call in the audit trail, through the whole call: what each path and verdict records.

Allowed, denied and failed calls each leave their records, in order, in the chain the broker
signs, and the chain verifies with the broker's public key alone.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from broker import app_state
from broker.audit.records import ChainedRecord
from broker.audit.signing import PublicKeys
from broker.audit.verify import verify_records
from broker.db import queries
from broker.db.engine import create_engine, make_sessionmaker
from broker.db.models import ToolCallStatus, ToolPath
from broker.db.queries.audit import AuditFilter, audit_records
from broker.tools.dispatch import ToolDispatcher
from broker.tools.registry import load_registry
from tests.support.broker_server import AUDIT_SIGNER, RunningBroker
from tests.support.flow import LOOKUP_42_OUTPUT, ask, connect_browser, says
from tests.support.rows import session_row
from tests.support.tool_backend import ToolBackend


async def chained(broker: RunningBroker) -> list[ChainedRecord]:
    """Every record of the trail, oldest first, once what is pending is chained."""
    await broker.app[app_state.AUDIT].chain_pending()
    records: list[ChainedRecord] = []
    async with broker.app[app_state.SESSIONMAKER]() as s:
        while True:
            after = records[-1].seq if records else 0
            page = await audit_records(s, AuditFilter(), after_seq=after, limit=500)
            records += page
            if len(page) < 500:
                return records


def tool_records(records: list[ChainedRecord], session_id: str) -> list[ChainedRecord]:
    return [r for r in records if r.session_id == session_id and r.kind.startswith("tool.")]


async def chained_with(
    broker: RunningBroker, session_id: str, injected: int
) -> list[ChainedRecord]:
    """:func:`chained`, once the session has ``injected`` ``tool.output_injected`` records.

    Those are written when the provider echoes the output, by a task of their own: the
    model's answer may reach the page first.
    """
    async with asyncio.timeout(10):
        while True:
            records = await chained(broker)
            kinds = [r.kind for r in tool_records(records, session_id)]
            if kinds.count("tool.output_injected") >= injected:
                return records
            await asyncio.sleep(0.05)


def by_call(records: list[ChainedRecord]) -> dict[str, list[ChainedRecord]]:
    calls: dict[str, list[ChainedRecord]] = {}
    for record in records:
        assert record.body is not None
        calls.setdefault(record.body["call_id"], []).append(record)
    return calls


def only(calls: dict[str, list[ChainedRecord]], tool: str) -> list[ChainedRecord]:
    [found] = [records for records in calls.values() if records[0].tool == tool]
    return found


def body(record: ChainedRecord) -> dict[str, Any]:
    assert record.body is not None
    return record.body


async def test_allowed_denied_and_failed_calls_are_recorded_in_order_and_verify(
    broker: RunningBroker, tool_backend: ToolBackend
) -> None:
    session = await broker.create_session(tools=["lookup_order", "explode"])
    browser = await connect_browser(broker, session)
    try:
        ask(browser, "lookup_order 42")
        await browser.wait_for("response.done", says(LOOKUP_42_OUTPUT))
        # Not in the session's allowlist: the model "hallucinates" it.
        ask(browser, "tool:delete_account")
        await browser.wait_for("response.done", says("tool_not_allowed"))
        ask(browser, "explode")
        await browser.wait_for("response.done", says("tool_http_error"))
    finally:
        await browser.close()
    assert tool_backend.calls_to("delete_account") == []

    records = await chained_with(broker, session["id"], injected=3)
    report = verify_records(records, PublicKeys([AUDIT_SIGNER.public_key]))
    assert report.ok, report
    calls = by_call(tool_records(records, session["id"]))
    assert len(calls) == 3

    allowed = only(calls, "lookup_order")
    assert [r.kind for r in allowed] == ["tool.requested", "tool.succeeded", "tool.output_injected"]
    requested, succeeded, injected = allowed
    assert (requested.actor, requested.decision) == ("sideband", None)
    assert body(requested)["arguments"] == {"order_id": "42"}
    assert body(requested)["path"] == "sideband"
    assert (succeeded.actor, succeeded.decision) == ("broker", "allowed")
    assert body(succeeded)["status"] == "succeeded"
    assert body(succeeded)["output"] == {"order_id": "42", "status": "shipped"}
    assert isinstance(body(succeeded)["duration_ms"], int)
    assert body(succeeded)["policy"]["allowlist"] == ["explode", "lookup_order"]
    assert "allowlist" in body(succeeded)["policy"]["checks"]
    assert injected.actor == "sideband"
    assert body(injected)["output_item_id"]

    denied = only(calls, "delete_account")
    assert [r.kind for r in denied] == ["tool.requested", "tool.denied", "tool.output_injected"]
    denial = denied[1]
    assert (denial.actor, denial.decision, denial.tool) == ("broker", "denied", "delete_account")
    assert body(denial)["code"] == "tool_not_allowed"
    assert body(denial)["policy"] == {
        "check": "allowlist",
        "allowlist": ["explode", "lookup_order"],
    }
    assert body(denial)["output"]["error"]["code"] == "tool_not_allowed"

    failed = only(calls, "explode")
    assert [r.kind for r in failed] == ["tool.requested", "tool.failed", "tool.output_injected"]
    assert (failed[1].decision, body(failed[1])["error"]) == ("allowed", "tool_http_error")
    assert body(failed[1])["status"] == "failed"

    # One chain for the session: each call's records in the order its row changed.
    seqs = [r.seq for r in tool_records(records, session["id"])]
    assert seqs == sorted(seqs)


async def test_the_audit_api_filters_a_sessions_tool_records_by_tool_and_decision(
    broker: RunningBroker, tool_backend: ToolBackend
) -> None:
    """``tool`` and ``decision`` are columns of their own, so a reviewer can ask for them."""
    session = await broker.create_session(tools=["lookup_order"])
    browser = await connect_browser(broker, session)
    try:
        ask(browser, "tool:delete_account")
        await browser.wait_for("response.done", says("tool_not_allowed"))
    finally:
        await browser.close()
    await broker.app[app_state.AUDIT].chain_pending()
    reply = await broker.request("GET", f"/api/v1/audit?session_id={session['id']}&decision=denied")
    assert reply.status == 200, reply.text
    [record] = reply.json()["records"]
    assert (record["kind"], record["tool"]) == ("tool.denied", "delete_account")


async def test_a_call_the_page_relays_is_requested_by_the_page(
    broker: RunningBroker, tool_backend: ToolBackend
) -> None:
    """On the bridge (no sideband) the page reports the call: its record's actor and path."""
    session = await broker.create_session(tools=["lookup_order"], sideband=False)
    browser = await connect_browser(broker, session)
    try:
        ask(browser, "lookup_order 42")
        call = await browser.wait_for("response.function_call_arguments.done")
        reply = await broker.bridge(session, call["name"], call["call_id"], call["arguments"])
        assert reply.status == 200, reply.text
    finally:
        await browser.close()
    records = await chained(broker)
    assert verify_records(records, PublicKeys([AUDIT_SIGNER.public_key])).ok
    [calls] = by_call(tool_records(records, session["id"])).values()
    assert [r.kind for r in calls] == ["tool.requested", "tool.succeeded"]
    assert (calls[0].actor, body(calls[0])["path"]) == ("page", "bridge")
    assert (calls[1].actor, body(calls[1])["path"]) == ("broker", "bridge")


async def _pending_records(sessionmaker: Any) -> list[tuple[str, str, dict[str, Any]]]:
    async with sessionmaker() as s:
        rows = (
            await s.execute(text("SELECT kind, actor, body FROM audit_pending ORDER BY id"))
        ).all()
    return [(row.kind, row.actor, json.loads(row.body)) for row in rows]


async def test_cancelled_recovered_and_injected_calls_are_recorded_once(
    sqlite_db_url: str, tmp_path: Path
) -> None:
    """At the dispatcher: an abandoned call, a call a restart finds running (not idempotent:
    ``outcome_unknown``), and an output marked sent twice (recorded the first time only)."""
    tools = tmp_path / "tools.toml"
    tools.write_text('[tools.get_time]\npython = "broker.tools.demo:get_time"\n')
    engine = create_engine(sqlite_db_url)
    try:
        sessionmaker = make_sessionmaker(engine)
        async with sessionmaker.begin() as s:
            s.add(session_row("sess_a", ["get_time"], sideband_enabled=True))
        async with httpx.AsyncClient() as http:
            dispatcher = ToolDispatcher(sessionmaker, load_registry(tools, http))
            for call_id in ("gone", "cut", "sent"):
                await dispatcher.record_seen(
                    "sess_a", call_id, "get_time", "{}", ToolPath.SIDEBAND, "resp", call_id
                )
            await dispatcher.abandon("sess_a", "gone", "cancelled")
            await dispatcher.abandon("sess_a", "gone", "cancelled")  # settled already
            async with sessionmaker.begin() as s:
                assert await queries.claim_tool_call_returning(s, "sess_a", "cut", "sideband")
            assert await dispatcher.recover_interrupted("sess_a") == [
                ("cut", ToolCallStatus.FAILED)
            ]
            outcome = await dispatcher.run(
                "sess_a", ["get_time"], "sent", "get_time", "{}", ToolPath.SIDEBAND
            )
            assert outcome.status is ToolCallStatus.SUCCEEDED
            await dispatcher.mark_injected("sess_a", "sent")
            await dispatcher.mark_injected("sess_a", "sent")
            await dispatcher.drain()
        records = [
            (kind, actor, body["call_id"])
            for kind, actor, body in await _pending_records(sessionmaker)
        ]
        assert records == [
            ("tool.requested", "sideband", "gone"),
            ("tool.requested", "sideband", "cut"),
            ("tool.requested", "sideband", "sent"),
            ("tool.cancelled", "broker", "gone"),
            ("tool.failed", "broker", "cut"),
            ("tool.succeeded", "broker", "sent"),
            ("tool.output_injected", "sideband", "sent"),
        ]
        failed = (await _pending_records(sessionmaker))[4][2]
        assert (failed["error"], failed["duration_ms"]) == ("outcome_unknown", None)
    finally:
        await engine.dispose()
