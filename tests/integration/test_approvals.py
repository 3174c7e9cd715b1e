"""The approval gate, through the whole call (broker + emulator + an aiortc page on loopback).

A tool with ``approval = "required"`` answers the model at once with a pending output and does
not run; an operator's approval runs it once and its result reaches the model as a system note
naming the call id (the model's next answer quotes it); a denial and an expiry are injected
the same way. Every step is in the verified audit chain; the note is the broker's own (never
deleted as a page item, never taken for a second or forged output).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker import app_state
from broker.api.approvals import ApprovalDecision, ApprovalList, ApprovalRecord
from broker.audit.signing import PublicKeys
from broker.audit.verify import verify_records
from broker.db.engine import create_engine, make_sessionmaker
from broker.db.models import ToolCallStatus, ToolPath
from broker.tools import approvals
from broker.tools.dispatch import ToolDispatcher
from broker.tools.executors import ToolContext
from broker.tools.registry import load_registry
from emulator import Call
from tests.integration.test_audit_tool_calls import chained
from tests.support.broker_server import ADMIN_KEY, AUDIT_SIGNER, BrokerFactory, RunningBroker
from tests.support.browser import FakeBrowser
from tests.support.flow import (
    ask,
    assistant_text,
    connect_browser,
    outputs_received,
    says,
    session_events,
)
from tests.support.model_speech import without_model_speech
from tests.support.rows import session_row
from tests.support.servers import RunningEmulator
from tests.support.tenants import make_team
from tests.support.tool_backend import ToolBackend

RAN: list[tuple[str, str]] = []
"""(call id, order id) of every refund the in-process tool carried out."""


async def refund_order(arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
    """The approval-gated test tool: records that it ran."""
    RAN.append((context.call_id, str(arguments["order_id"])))
    return {"order_id": str(arguments["order_id"]), "refund": "r-7781", "status": "refunded"}


CARD = "4111111111111111"


async def card_refund(arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
    """An approval-gated tool whose output carries a redacted field."""
    RAN.append((context.call_id, str(arguments["order_id"])))
    return {"order_id": str(arguments["order_id"]), "card": CARD, "status": "refunded"}


REFUND_TOOL = """
[tools.refund_order]
description = "Refund an order (each refund waits for an operator's approval)."
python = "tests.integration.test_approvals:refund_order"
approval = "required"
[tools.refund_order.parameters]
type = "object"
required = ["order_id"]
additionalProperties = false
properties.order_id = { type = "string" }
"""

APPROVAL_TOOLS = (
    REFUND_TOOL
    + """
[tools.card_refund]
description = "Refund an order to the card it was paid with."
python = "tests.integration.test_approvals:card_refund"
approval = "required"
redact = ["card"]
[tools.card_refund.parameters]
type = "object"
required = ["order_id"]
additionalProperties = false
properties.order_id = { type = "string" }

[tools.quick_refund]
description = "Refund an order; the operator has one second to approve."
python = "tests.integration.test_approvals:refund_order"
approval = "required"
approval_timeout = 1
[tools.quick_refund.parameters]
type = "object"
required = ["order_id"]
additionalProperties = false
properties.order_id = { type = "string" }
"""
)


@pytest.fixture
async def gated(make_broker: BrokerFactory, tool_backend: ToolBackend, tmp_path: Path) -> Any:
    tools = tmp_path / "approval-tools.toml"
    tools.write_text(tool_backend.config_toml() + APPROVAL_TOOLS)
    RAN.clear()
    return await make_broker(tools_config=tools)


async def held_call(
    broker: RunningBroker, tool: str = "refund_order", token: str | None = None
) -> tuple[dict[str, Any], FakeBrowser, dict[str, Any]]:
    """A live session whose model called ``tool`` and was answered pending: its approval."""
    if token is None:
        session = await broker.create_session(tools=[tool])
    else:
        reply = await broker.request(
            "POST", "/api/v1/sessions", json_body={"tools": [tool]}, token=token
        )
        assert reply.status == 201, reply.text
        session = reply.json()
    browser = await connect_browser(broker, session)
    try:
        ask(browser, f"{tool} 42")
        # The model's immediate answer quotes the pending output; the tool has not run.
        done = await browser.wait_for("response.done", says("pending_approval"))
        assert f"{tool} returned:" in assistant_text(done)
        assert RAN == []
        listed = await broker.request(
            "GET", "/api/v1/approvals?status=pending", token=token or ADMIN_KEY
        )
        assert listed.status == 200, listed.text
        [approval] = [a for a in listed.json()["approvals"] if a["session_id"] == session["id"]]
        assert approval["id"] in assistant_text(done)
    except BaseException:
        await browser.close()
        raise
    return session, browser, approval


def call_of(emulator: RunningEmulator, call_id: str) -> Call:
    call = emulator.registry.get(call_id)
    assert call is not None
    return call


async def records_of(broker: RunningBroker, session_id: str, *kinds: str) -> list[Any]:
    """The session's records of ``kinds`` in the chain, once all of them are there."""
    async with asyncio.timeout(10):
        while True:
            records = await chained(broker)
            mine = [r for r in records if r.session_id == session_id and r.kind in kinds]
            if {r.kind for r in mine} >= set(kinds):
                report = verify_records(records, PublicKeys([AUDIT_SIGNER.public_key]))
                assert report.ok, report
                return mine
            await asyncio.sleep(0.05)


async def test_approval_runs_the_tool_once_and_the_model_quotes_its_result(
    gated: RunningBroker, emulator: RunningEmulator
) -> None:
    broker = gated
    session, browser, approval = await held_call(broker)
    try:
        assert approval["tool"] == "refund_order"
        assert approval["status"] == "pending"
        detail = await broker.get_session(session["id"])
        [held] = detail["tool_calls"]
        assert (held["status"], held["call_id"]) == ("held", approval["call_id"])

        reply = await broker.request(
            "POST", f"/api/v1/approvals/{approval['id']}/approve", json_body={"reason": "ok"}
        )
        assert reply.status == 200, reply.text
        answer = reply.json()
        ApprovalDecision.model_validate(answer)  # as the OpenAPI document says
        assert answer["status"] == "approved"
        assert answer["tool_status"] == "succeeded"
        assert answer["injected"] is True
        assert json.loads(answer["result"])["refund"] == "r-7781"
        assert RAN == [(approval["call_id"], "42")]

        # The model's next answer quotes the decision, the call id and the tool's result.
        note = f"Approval decision for call {approval['call_id']} (refund_order): approved."
        done = await browser.wait_for("response.done", says(note))
        assert "r-7781" in assistant_text(done)

        # A second decision is refused; the tool never runs again.
        again = await broker.request("POST", f"/api/v1/approvals/{approval['id']}/approve")
        assert (again.status, again.code) == (409, "approval_decided")
        deny = await broker.request("POST", f"/api/v1/approvals/{approval['id']}/deny")
        assert (deny.status, deny.code) == (409, "approval_decided")
        assert len(RAN) == 1
        got = await broker.request("GET", f"/api/v1/approvals/{approval['id']}")
        ApprovalRecord.model_validate(got.json())
        assert got.json()["status"] == "approved"
        assert got.json()["decided_by"] is not None
        assert got.json()["reason"] == "ok"
        listed = await broker.request("GET", "/api/v1/approvals?status=approved&limit=5")
        ApprovalList.model_validate(listed.json())
        assert [a["id"] for a in listed.json()["approvals"]] == [approval["id"]]

        # The note is the broker's: still in the conversation (not deleted as a page item),
        # a message and not an output (the call has exactly one function_call_output), and
        # no tamper was reported.
        call = call_of(emulator, (await broker.get_session(session["id"]))["call_id"])
        notes = [
            item
            for item in call.conversation
            if item.get("type") == "message" and item.get("role") == "system"
        ]
        assert [n["content"][0]["text"] for n in notes][-1].startswith(note)
        outputs = [o for _, o in outputs_received(call) if o["call_id"] == approval["call_id"]]
        assert len(outputs) == 1
        assert json.loads(outputs[0]["output"])["status"] == "pending_approval"
        assert await session_events(broker, session["id"], "broker.tamper") == []

        records = await records_of(
            broker,
            session["id"],
            "tool.requested",
            "approval.requested",
            "tool.output_injected",
            "approval.approved",
            "tool.succeeded",
        )
        # The pending output is the call's one output: injected once (recorded by a task of
        # its own when the echo comes, so its place among the others is not fixed).
        assert [r.kind for r in records].count("tool.output_injected") == 1
        records = [r for r in records if r.kind != "tool.output_injected"]
        assert [r.kind for r in records] == [
            "tool.requested",
            "approval.requested",
            "approval.approved",
            "tool.succeeded",
        ]
        assert records[1].actor == "sideband"
        assert records[2].actor.startswith("key:")
        assert records[3].body["output"]["refund"] == "r-7781"
        detail = await broker.get_session(session["id"])
        [ran] = detail["tool_calls"]
        assert ran["status"] == "succeeded"
        assert ran["injected_at"] is not None
        assert json.loads(ran["output"])["status"] == "pending_approval"
    finally:
        await browser.close()


async def test_a_denial_is_injected_and_audited(
    gated: RunningBroker, emulator: RunningEmulator
) -> None:
    broker = gated
    session, browser, approval = await held_call(broker)
    try:
        reply = await broker.request(
            "POST",
            f"/api/v1/approvals/{approval['id']}/deny",
            json_body={"reason": "refund limit reached"},
        )
        assert reply.status == 200, reply.text
        assert reply.json() == {
            "id": approval["id"],
            "status": "denied",
            "tool_status": "denied",
            "injected": True,
        }
        done = await browser.wait_for("response.done", says("): denied."))
        assert "refund limit reached" in assistant_text(done)
        assert approval["call_id"] in assistant_text(done)
        assert RAN == []
        detail = await broker.get_session(session["id"])
        assert [c["status"] for c in detail["tool_calls"]] == ["denied"]
        again = await broker.request("POST", f"/api/v1/approvals/{approval['id']}/approve")
        assert (again.status, again.code) == (409, "approval_decided")
        [denied] = await records_of(broker, session["id"], "approval.denied")
        assert denied.body["reason"] == "refund limit reached"
        assert await session_events(broker, session["id"], "broker.tamper") == []
    finally:
        await browser.close()


async def test_an_unanswered_approval_expires_and_the_model_is_told(
    gated: RunningBroker, emulator: RunningEmulator
) -> None:
    broker = gated
    session, browser, approval = await held_call(broker, "quick_refund")
    try:
        # approval_timeout = 1: sweep (as the sweeper does every few seconds) once it passed.
        async with asyncio.timeout(10):
            while not await broker.app[app_state.APPROVALS].sweep():  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        done = await browser.wait_for("response.done", says("(quick_refund): expired."))
        assert approval["call_id"] in assistant_text(done)
        got = await broker.request("GET", f"/api/v1/approvals/{approval['id']}")
        assert got.json()["status"] == "expired"
        late = await broker.request("POST", f"/api/v1/approvals/{approval['id']}/approve")
        assert (late.status, late.code) == (409, "approval_decided")
        assert RAN == []
        await records_of(broker, session["id"], "approval.requested", "approval.expired")
    finally:
        await browser.close()


async def test_approvals_are_tenant_scoped_and_deciding_needs_admin(
    gated: RunningBroker, emulator: RunningEmulator
) -> None:
    broker = gated
    ours = await make_team(broker, "acme")
    theirs = await make_team(broker, "globex")
    session, browser, approval = await held_call(broker, token=ours.app)
    try:
        assert approval["tenant"] == "acme"
        # Another tenant's keys never see it, nor decide it.
        listed = await broker.request("GET", "/api/v1/approvals", token=theirs.ops)
        assert listed.status == 200
        assert listed.json()["approvals"] == []
        for method, path in (
            ("GET", f"/api/v1/approvals/{approval['id']}"),
            ("POST", f"/api/v1/approvals/{approval['id']}/approve"),
            ("POST", f"/api/v1/approvals/{approval['id']}/deny"),
        ):
            reply = await broker.request(method, path, token=theirs.ops)
            assert (reply.status, reply.code) == (404, "approval_not_found"), path
        unknown = await broker.request("POST", "/api/v1/approvals/apr_nope/approve")
        assert (unknown.status, unknown.code) == (404, "approval_not_found")
        # monitor:read reads but cannot decide.
        refused = await broker.request(
            "POST", f"/api/v1/approvals/{approval['id']}/approve", token=ours.app
        )
        assert (refused.status, refused.code) == (403, "insufficient_scope")
        bad = await broker.request("GET", "/api/v1/approvals?status=maybe", token=ours.app)
        assert (bad.status, bad.code) == (400, "invalid_query")
        # The tenant's own admin decides it.
        reply = await broker.request(
            "POST", f"/api/v1/approvals/{approval['id']}/approve", token=ours.ops
        )
        assert reply.status == 200, reply.text
        await browser.wait_for("response.done", says("): approved."))
        assert len(RAN) == 1
    finally:
        await browser.close()


async def test_an_approval_of_an_ended_call_expires(
    gated: RunningBroker, emulator: RunningEmulator
) -> None:
    broker = gated
    session, browser, approval = await held_call(broker)
    hung = await broker.request("POST", f"/api/v1/sessions/{session['id']}/hangup")
    assert hung.status == 200, hung.text
    await browser.close()
    async with asyncio.timeout(10):
        while (await broker.get_session(session["id"]))["state"] != "ended":  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    reply = await broker.request("POST", f"/api/v1/approvals/{approval['id']}/approve")
    assert (reply.status, reply.code) == (409, "session_not_live")
    got = await broker.request("GET", f"/api/v1/approvals/{approval['id']}")
    assert got.json()["status"] == "expired"
    assert RAN == []


async def test_a_bridge_only_session_records_the_approval_but_cannot_be_told(
    gated: RunningBroker, emulator: RunningEmulator
) -> None:
    """No sideband to inject on: the held call answers the page pending (200), the approval is
    listed, and a decision is refused ``sideband_not_connected``; the tool never runs."""
    broker = gated
    session = await broker.create_session(tools=["refund_order"], sideband=False)
    browser = await connect_browser(broker, session)
    try:
        ask(browser, "refund_order 42")
        call = await browser.wait_for("response.function_call_arguments.done")
        reply = await broker.bridge(session, call["name"], call["call_id"], call["arguments"])
        assert reply.status == 200, reply.text
        assert (reply.json()["status"], reply.json()["handled_by"]) == ("held", "bridge")
        pending = json.loads(reply.json()["output"])
        assert pending["status"] == "pending_approval"
        listed = await broker.request("GET", "/api/v1/approvals?status=pending")
        [approval] = [a for a in listed.json()["approvals"] if a["session_id"] == session["id"]]
        assert approval["id"] == pending["approval_id"]
        refused = await broker.request("POST", f"/api/v1/approvals/{approval['id']}/approve")
        assert (refused.status, refused.code) == (409, "sideband_not_connected")
        got = await broker.request("GET", f"/api/v1/approvals/{approval['id']}")
        assert got.json()["status"] == "pending"
        # Reported again (a page retrying): the same pending answer, nothing runs.
        again = await broker.bridge(session, call["name"], call["call_id"], call["arguments"])
        assert (again.status, again.json()["output"]) == (200, reply.json()["output"])
        assert RAN == []
        [requested] = await records_of(broker, session["id"], "approval.requested")
        assert requested.actor == "page"
    finally:
        await browser.close()


async def test_an_approval_on_another_instance_is_carried_out_by_the_calls_owner(
    make_broker: BrokerFactory,
    tool_backend: ToolBackend,
    tmp_path: Path,
    pg_url: str,
    emulator: RunningEmulator,
) -> None:
    """Two instances on one PostgreSQL: the one that does not own the call records nothing
    itself; it asks the owner (an ``approval`` call command), which runs the tool and tells
    the model. Its answer comes back through the other instance."""
    tools = tmp_path / "approval-tools.toml"
    tools.write_text(tool_backend.config_toml() + APPROVAL_TOOLS)
    RAN.clear()
    owner = await make_broker(tools_config=tools, database_url=pg_url, instance_id="apr-owner")
    other = await make_broker(tools_config=tools, database_url=pg_url, instance_id="apr-other")
    session, browser, approval = await held_call(owner)
    try:
        reply = await other.request("POST", f"/api/v1/approvals/{approval['id']}/approve")
        assert reply.status == 200, reply.text
        assert (reply.json()["status"], reply.json()["injected"]) == ("approved", True)
        done = await browser.wait_for("response.done", says("(refund_order): approved."))
        assert "r-7781" in assistant_text(done)
        assert len(RAN) == 1
        again = await other.request("POST", f"/api/v1/approvals/{approval['id']}/deny")
        assert (again.status, again.code) == (409, "approval_decided")
    finally:
        await browser.close()


async def test_recovery_delivers_a_held_calls_pending_output_and_never_reruns_it(
    sqlite_db_url: str, tmp_path: Path
) -> None:
    """At the dispatcher, as a restarted broker sees it: a held call is in the backlog's
    undelivered outputs (its pending output), never among the calls to run; once delivered,
    its echo is a known output. An approved call a restart found running ends failed
    (``outcome_unknown``) and keeps its pending output: nothing new is sent for it."""
    tools = tmp_path / "tools.toml"
    tools.write_text(REFUND_TOOL)
    RAN.clear()
    engine = create_engine(sqlite_db_url)
    try:
        sessionmaker = make_sessionmaker(engine)
        async with sessionmaker.begin() as s:
            s.add(session_row("sess_r", ["refund_order"], sideband_enabled=True))
        async with httpx.AsyncClient() as http:
            dispatcher = ToolDispatcher(sessionmaker, load_registry(tools, http))
            for call_id in ("held", "approved"):
                await dispatcher.record_seen(
                    "sess_r",
                    call_id,
                    "refund_order",
                    '{"order_id":"42"}',
                    ToolPath.SIDEBAND,
                    "resp",
                    f"item_{call_id}",
                )
                outcome = await dispatcher.run(
                    "sess_r",
                    ["refund_order"],
                    call_id,
                    "refund_order",
                    '{"order_id":"42"}',
                    ToolPath.SIDEBAND,
                )
                assert (outcome.status, outcome.executed_now) == (ToolCallStatus.HELD, True)
            seen, undelivered = await dispatcher.unfinished("sess_r")
            assert seen == []
            assert sorted(row.call_id for row in undelivered) == ["approved", "held"]
            pending = {row.call_id: row.output for row in undelivered}
            # "approved": its output delivered, then approved, and the broker died mid-run.
            await dispatcher.mark_injected("sess_r", "approved")
            async with sessionmaker.begin() as s:
                assert await approvals.release_held(s, "sess_r", "approved") is not None
            assert await dispatcher.recover_interrupted("sess_r") == [
                ("approved", ToolCallStatus.FAILED)
            ]
            seen, undelivered = await dispatcher.unfinished("sess_r")
            assert (seen, [row.call_id for row in undelivered]) == ([], ["held"])
            row = await dispatcher.get_record("sess_r", "approved")
            assert row is not None
            assert (row.status, row.error, row.output) == (
                "failed",
                "outcome_unknown",
                pending["approved"],
            )
            assert ("approved", pending["approved"]) in await dispatcher.answered_outputs("sess_r")
            # A later report of the held call (a resync) answers it again, runs nothing.
            again = await dispatcher.run(
                "sess_r",
                ["refund_order"],
                "held",
                "refund_order",
                '{"order_id":"42"}',
                ToolPath.SIDEBAND,
            )
            assert (again.status, again.executed_now) == (ToolCallStatus.HELD, False)
            await dispatcher.drain()
        assert RAN == []
    finally:
        await engine.dispose()


async def test_two_operators_deciding_at_once_one_decision_wins(
    gated: RunningBroker, emulator: RunningEmulator
) -> None:
    broker = gated
    _, browser, approval = await held_call(broker)
    try:
        path = f"/api/v1/approvals/{approval['id']}"
        replies = await asyncio.gather(
            broker.request("POST", path + "/approve"),
            broker.request("POST", path + "/deny"),
            broker.request("POST", path + "/approve"),
        )
        assert sorted(r.status for r in replies) == [200, 409, 409], [r.text for r in replies]
        assert {r.code for r in replies if r.status == 409} == {"approval_decided"}
        [won] = [r.json() for r in replies if r.status == 200]
        assert len(RAN) == (1 if won["status"] == "approved" else 0)
        await browser.wait_for("response.done", says(f"(refund_order): {won['status']}."))
    finally:
        await browser.close()


async def test_a_redacting_tools_result_reaches_the_model_in_clear_and_the_log_hashed(
    gated: RunningBroker, emulator: RunningEmulator
) -> None:
    """As for any call's output: the model gets the approved result as the tool answered it;
    the operator's answer and the event log (the note sent, the provider's echoes of it) have
    a ``redact`` field's value only as its keyed hash. (The model's own words are not
    redacted, for any call: it may repeat what it was told.)"""
    broker = gated
    session, browser, approval = await held_call(broker, "card_refund")
    try:
        reply = await broker.request("POST", f"/api/v1/approvals/{approval['id']}/approve")
        assert reply.status == 200, reply.text
        result = json.loads(reply.json()["result"])
        assert result["card"]["redacted"].startswith("hmac-sha256:")
        done = await browser.wait_for("response.done", says("(card_refund): approved."))
        assert CARD in assistant_text(done)
        assert len(RAN) == 1
        [call] = emulator.registry.calls.values()
        [note] = [
            r.event["item"]["content"][0]["text"]
            for r in call.received
            if r.event.get("type") == "conversation.item.create"
            and r.event["item"].get("role") == "system"
        ]
        assert CARD in note
        async with asyncio.timeout(5):
            while True:
                events = await session_events(broker, session["id"])
                notes = [
                    e
                    for e in events
                    if e["type"] in ("conversation.item.create", "conversation.item.done")
                    and e["payload"]["item"].get("role") == "system"
                ]
                if len(notes) >= 2:  # the note sent, and the provider's echo of it
                    break
                await asyncio.sleep(0.05)
        for stored in notes:
            text = stored["payload"]["item"]["content"][0]["text"]
            assert "hmac-sha256:" in text and CARD not in text
        assert CARD not in json.dumps(without_model_speech([e["payload"] for e in events]))
    finally:
        await browser.close()


async def test_a_tool_taken_off_the_session_while_held_is_not_run_when_approved(
    gated: RunningBroker, emulator: RunningEmulator
) -> None:
    """Approval does not outrank the session's allowlist as it is at the decision."""
    broker = gated
    session, browser, approval = await held_call(broker)
    try:
        reconfigured = await broker.request(
            "POST", f"/api/v1/sessions/{session['id']}/config", json_body={"tools": []}
        )
        assert reconfigured.status == 200, reconfigured.text
        reply = await broker.request("POST", f"/api/v1/approvals/{approval['id']}/approve")
        assert reply.status == 200, reply.text
        assert reply.json()["tool_status"] == "failed"
        assert json.loads(reply.json()["result"])["error"]["code"] == "tool_not_allowed"
        assert RAN == []
        done = await browser.wait_for("response.done", says("tool_not_allowed"))
        assert approval["call_id"] in assistant_text(done)
    finally:
        await browser.close()
