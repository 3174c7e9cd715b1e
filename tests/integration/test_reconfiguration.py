"""Must-show 2: a live call's tool set changes mid-call (``POST /api/v1/sessions/{id}/config``).

Real broker, emulator and an aiortc page over loopback. The session starts with
``lookup_order``; its owner's key switches it to ``get_time``. The provider's session then
holds only ``get_time``; the model's call to ``lookup_order`` is denied (``tool_not_allowed``)
and its call to ``get_time`` runs; the page putting ``lookup_order`` back is tampering
(``session_config``), restored to the new set. Refusals: a tool outside the key's grants, an
unknown tool, another tenant's session, a key that neither made the session nor is an admin,
a session not in a call, a provider that never confirms, a provider that refuses the update
(the emulator's ``sideband_session_update_error``). The instructions route is an alias of the
same path.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
from typing import Any

import aiohttp

from broker import app_state
from broker.audit.records import ChainedRecord
from broker.audit.signing import PublicKeys
from broker.audit.verify import verify_records
from broker.db.models import SessionRow
from broker.db.queries.audit import AuditFilter, audit_records
from broker.session.call_actions import INSTRUCTIONS_COMMAND
from emulator import Call
from tests.integration import test_trusted_sessions as trusted
from tests.integration.test_trusted_sessions import STOCK_TOOL
from tests.support.broker_server import AUDIT_SIGNER, BrokerFactory, RunningBroker
from tests.support.flow import (
    LOOKUP_42_OUTPUT,
    ask,
    connect_browser,
    says,
    session_events,
    wait_events,
)
from tests.support.servers import RunningEmulator, request_json, set_faults
from tests.support.tenants import make_team
from tests.support.tool_backend import ToolBackend

LOOKUP_ORDER_DEFINITION = {
    "type": "function",
    "name": "lookup_order",
    "description": "Look up an order.",
    "parameters": {
        "type": "object",
        "required": ["order_id"],
        "additionalProperties": False,
        "properties": {"order_id": {"type": "string"}},
    },
}


async def chained(broker: RunningBroker, **where: Any) -> list[ChainedRecord]:
    """Every chained record matching ``where`` (pending ones chained first)."""
    await broker.app[app_state.AUDIT].chain_pending()
    records: list[ChainedRecord] = []
    after = 0
    while True:
        async with broker.app[app_state.SESSIONMAKER]() as s:
            page = await audit_records(s, AuditFilter(**where), after_seq=after, limit=500)
        if not page:
            return records
        records += page
        after = page[-1].seq


async def wait_record(broker: RunningBroker, kind: str, session_id: str) -> ChainedRecord:
    async with asyncio.timeout(5):
        while not (found := await chained(broker, kinds=(kind,), session_id=session_id)):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    return found[0]


async def session_tools_become(call: Call, names: list[str]) -> None:
    """Poll the emulator's session (in-process) until its tools are ``names`` (bounded)."""
    async with asyncio.timeout(5):
        while [tool.get("name") for tool in call.session.get("tools") or []] != names:  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def updates_answered(call: Call) -> None:
    """Wait until the emulator has answered every ``session.update`` it received (bounded)."""
    async with asyncio.timeout(5):
        while True:
            asked = sum(1 for r in call.received if r.event.get("type") == "session.update")
            answered = sum(
                1 for e in call.sent if e["type"] == "session.updated" or e["type"] == "error"
            )
            if asked and answered >= asked:
                return
            await asyncio.sleep(0.02)


def sideband_updates(call: Call, after: int) -> list[dict[str, Any]]:
    """The ``session.update`` events the call's sidebands sent after its first ``after`` events."""
    return [
        r.event
        for r in list(call.received)[after:]
        if r.source == "sideband" and r.event.get("type") == "session.update"
    ]


def tool_names(session: dict[str, Any]) -> list[str]:
    return [str(tool.get("name")) for tool in session.get("tools") or []]


def digest(text: str) -> dict[str, Any]:
    return {"sha256": hashlib.sha256(text.encode()).hexdigest(), "chars": len(text)}


async def app_key(broker: RunningBroker, tools: list[str]) -> tuple[str, str]:
    """A new app key (``sessions:create`` only) granting ``tools``: the key and its id."""
    reply = await broker.request(
        "POST",
        "/api/v1/keys",
        json_body={"name": "app", "scopes": ["sessions:create"], "tools": tools},
    )
    assert reply.status == 201, reply.text
    return reply.json()["key"], reply.json()["id"]


async def test_a_mid_call_tool_change_is_enforced_and_tamper_guarded(
    broker: RunningBroker, emulator: RunningEmulator, tool_backend: ToolBackend
) -> None:
    """Must-show 2."""
    key, key_id = await app_key(broker, ["lookup_order", "get_time"])
    created = await broker.request(
        "POST",
        "/api/v1/sessions",
        json_body={"tools": ["lookup_order"], "instructions": "Be brief."},
        token=key,
    )
    assert created.status == 201, created.text
    session = created.json()
    sid = session["id"]
    browser = await connect_browser(broker, session)
    try:
        call = emulator.registry.get((await broker.get_session(sid))["call_id"])
        assert call is not None
        reply = await broker.request(
            "POST", f"/api/v1/sessions/{sid}/config", json_body={"tools": ["get_time"]}, token=key
        )
        assert reply.status == 200, reply.text
        assert reply.json() == {
            "id": sid,
            "updated": True,
            "tools": ["get_time"],
            "instructions_changed": False,
        }
        # Confirmed by the provider before the answer: its session holds the new set now.
        assert [tool["name"] for tool in call.session["tools"]] == ["get_time"]
        assert call.session["instructions"] == "Be brief."
        assert (await broker.get_session(sid))["tools"] == ["get_time"]
        [event] = await wait_events(broker, sid, "broker.config_updated")
        assert event["payload"] == {
            "type": "broker.config_updated",
            "by": key_id,
            "tools": ["get_time"],
            "tools_before": ["lookup_order"],
        }

        # The removed tool: the model calls it anyway (a mention outside its tools), denied.
        ask(browser, 'tool:lookup_order {"order_id": "42"}')
        await browser.wait_for("response.done", says("tool_not_allowed"))
        # The added tool runs.
        ask(browser, "get_time")
        await browser.wait_for("response.done", says("get_time returned"))
        assert tool_backend.calls_to("lookup_order") == []
        calls = {row["tool"]: row for row in (await broker.get_session(sid))["tool_calls"]}
        assert calls["lookup_order"]["status"] == "denied"
        assert calls["get_time"]["status"] == "succeeded"

        # The page puts the old tool set back: drift, reported and restored to the NEW set.
        browser.send(
            {
                "type": "session.update",
                "session": {"type": "realtime", "tools": [LOOKUP_ORDER_DEFINITION]},
            }
        )
        [tamper] = await wait_events(broker, sid, "broker.tamper")
        assert tamper["payload"]["kind"] == "session_config"
        assert "tools" in tamper["payload"]["fields"]
        detected = await wait_record(broker, "tamper.detected", sid)
        assert detected.actor == "page"
        assert detected.body is not None and detected.body["kind"] == "session_config"
        await session_tools_become(call, ["get_time"])
        assert (await broker.get_session(sid))["tools"] == ["get_time"]
    finally:
        await browser.close()

    record = await wait_record(broker, "session.reconfigured", sid)
    assert record.actor == f"key:{key_id}"
    assert record.body == {
        "tools": {"before": ["lookup_order"], "after": ["get_time"]},
        "instructions": {"before": digest("Be brief."), "after": digest("Be brief.")},
    }
    denied = [r for r in await chained(broker, session_id=sid) if r.kind == "tool.denied"]
    assert denied and denied[0].body is not None and denied[0].body["code"] == "tool_not_allowed"
    everything = await chained(broker)
    report = verify_records(everything, PublicKeys([AUDIT_SIGNER.public_key]))
    assert report.ok, report.failure


async def test_refused_reconfigurations(broker: RunningBroker) -> None:
    key, _ = await app_key(broker, ["lookup_order", "get_time"])
    created = await broker.request(
        "POST", "/api/v1/sessions", json_body={"tools": ["lookup_order"]}, token=key
    )
    assert created.status == 201, created.text
    sid = created.json()["id"]
    path = f"/api/v1/sessions/{sid}/config"

    not_granted = await broker.request(
        "POST", path, json_body={"tools": ["delete_account"]}, token=key
    )
    assert (not_granted.status, not_granted.code) == (403, "tool_not_granted")
    unknown = await broker.request("POST", path, json_body={"tools": ["no_such_tool"]}, token=key)
    assert (unknown.status, unknown.code) == (422, "unknown_tool")
    other_team = await make_team(broker, "reconfig-other")
    foreign = await broker.request(
        "POST", path, json_body={"tools": ["get_time"]}, token=other_team.ops
    )
    assert (foreign.status, foreign.code) == (404, "session_not_found")
    stranger, _ = await app_key(broker, ["*"])
    not_owner = await broker.request(
        "POST", path, json_body={"tools": ["get_time"]}, token=stranger
    )
    assert (not_owner.status, not_owner.code) == (403, "insufficient_scope")
    # The alias follows the same rule.
    alias = await broker.request(
        "POST",
        f"/api/v1/sessions/{sid}/instructions",
        json_body={"instructions": "x"},
        token=stranger,
    )
    assert (alias.status, alias.code) == (403, "insufficient_scope")
    not_live = await broker.request("POST", path, json_body={"tools": ["get_time"]}, token=key)
    assert (not_live.status, not_live.code) == (409, "session_not_live")
    for bad in ({}, {"tools": ["get_time"], "voice": "x"}, {"instructions": ""}):
        invalid = await broker.request("POST", path, json_body=bad, token=key)
        assert (invalid.status, invalid.code) == (422, "invalid_request"), bad
    assert (await broker.get_session(sid))["tools"] == ["lookup_order"]


async def test_the_instructions_alias_takes_the_same_path(
    broker: RunningBroker, emulator: RunningEmulator
) -> None:
    """The session's own key (no admin scope) may change its instructions now; audited as a
    reconfiguration."""
    key, key_id = await app_key(broker, ["lookup_order"])
    created = await broker.request(
        "POST", "/api/v1/sessions", json_body={"tools": ["lookup_order"]}, token=key
    )
    session = created.json()
    sid = session["id"]
    browser = await connect_browser(broker, session)
    new = "Answer in one short sentence."
    try:
        before = (await broker.get_session(sid))["call_id"]
        call = emulator.registry.get(before)
        assert call is not None
        reply = await broker.request(
            "POST",
            f"/api/v1/sessions/{sid}/instructions",
            json_body={"instructions": new},
            token=key,
        )
        assert reply.status == 200, reply.text
        assert reply.json() == {"id": sid, "updated": True}
        assert call.session["instructions"] == new
        assert [tool["name"] for tool in call.session["tools"]] == ["lookup_order"]
    finally:
        await browser.close()
    record = await wait_record(broker, "session.reconfigured", sid)
    assert record.actor == f"key:{key_id}"
    assert record.body is not None
    assert record.body["tools"] == {"before": ["lookup_order"], "after": ["lookup_order"]}
    assert record.body["instructions"]["after"] == digest(new)
    assert new not in record.line()


async def test_an_unconfirmed_change_is_reverted_and_not_stored(
    broker: RunningBroker, emulator: RunningEmulator
) -> None:
    """The provider's answer never reaches the sideband: 504 ``provider_timeout``, the old
    tools are asserted again, nothing is stored or audited."""
    session = await broker.create_session(tools=["lookup_order"])
    sid = session["id"]
    browser = await connect_browser(broker, session)
    try:
        call = emulator.registry.get((await broker.get_session(sid))["call_id"])
        assert call is not None
        emulator.faults.update(
            {"sideband_drop_event_types": ["session.updated"], "sideband_drop_event_count": 1}
        )
        reply = await broker.request(
            "POST", f"/api/v1/sessions/{sid}/config", json_body={"tools": ["get_time"]}
        )
        assert (reply.status, reply.code) == (504, "provider_timeout")
        await session_tools_become(call, ["lookup_order"])
        assert (await broker.get_session(sid))["tools"] == ["lookup_order"]
    finally:
        await browser.close()
    assert await chained(broker, kinds=("session.reconfigured",), session_id=sid) == []


async def test_a_refused_change_is_reverted_reasserted_and_not_stored(
    broker: RunningBroker,
    emulator: RunningEmulator,
    tool_backend: ToolBackend,
    http: aiohttp.ClientSession,
) -> None:
    """The provider answers the change with an ``error`` for its event (emulator switch
    ``sideband_session_update_error``): 502 ``provider_refused_update``; the stored config,
    the provider's session and the tool allowlist stay the old ones, and the old config is
    asserted again; the event log holds the change, the refusal and the re-assertion, and
    nothing records a reconfiguration."""
    session = await broker.create_session(tools=["lookup_order"], instructions="Be brief.")
    sid = session["id"]
    browser = await connect_browser(broker, session)
    try:
        call = emulator.registry.get((await broker.get_session(sid))["call_id"])
        assert call is not None
        # The sideband's first assertion answered first, so the refusal meets the change.
        await updates_answered(call)
        before = copy.deepcopy(call.session)
        assert tool_names(before) == ["lookup_order"]
        received_before = len(call.received)
        await set_faults(
            http, emulator, sideband_session_update_error={"code": "invalid_value", "count": 1}
        )

        reply = await broker.request(
            "POST",
            f"/api/v1/sessions/{sid}/config",
            json_body={"tools": ["get_time"], "instructions": "Answer in French."},
        )
        assert (reply.status, reply.code) == (502, "provider_refused_update"), reply.text

        # Nothing stored.
        assert (await broker.get_session(sid))["tools"] == ["lookup_order"]
        async with broker.app[app_state.SESSIONMAKER]() as s:
            row = await s.get(SessionRow, sid)
        assert row is not None
        assert (row.tools, row.instructions) == (["lookup_order"], "Be brief.")
        # The switch refused exactly the change, which the provider never applied; the broker
        # then put its old config back on the sideband, and the provider took that.
        status, faults = await request_json(http, emulator, "GET", "/_emulator/faults")
        assert (status, faults["sideband_session_update_error"]) == (200, None)
        updates = sideband_updates(call, received_before)
        change = updates[0]
        assert tool_names(change["session"]) == ["get_time"]
        assert change["session"]["instructions"] == "Answer in French."
        [refusal] = [e for e in call.sent if e["type"] == "error"]
        assert refusal["error"]["event_id"] == change["event_id"]
        async with asyncio.timeout(5):
            while len(updates) < 2 or call.sent[-1]["type"] != "session.updated":
                await asyncio.sleep(0.02)
                updates = sideband_updates(call, received_before)
        reassertion = updates[1]
        assert tool_names(reassertion["session"]) == ["lookup_order"]
        assert reassertion["session"]["instructions"] == before["instructions"]
        assert call.session == before

        # The old tool still runs; the one the refused change would have added is denied.
        ask(browser, "lookup_order 42")
        await browser.wait_for("response.done", says(LOOKUP_42_OUTPUT))
        ask(browser, "tool:get_time")
        await browser.wait_for("response.done", says("tool_not_allowed"))
        assert tool_backend.calls_to("get_time") == []
        assert len(tool_backend.calls_to("lookup_order")) == 1
        calls = {row["tool"]: row for row in (await broker.get_session(sid))["tool_calls"]}
        assert calls["lookup_order"]["status"] == "succeeded"
        assert calls["get_time"]["status"] == "denied"
        assert calls["get_time"]["error"] == "tool_not_allowed"
    finally:
        await browser.close()

    # The event log: the change went out, the provider's error for it came in, the old config
    # went out again; no config_updated decision. The audit log: no reconfiguration.
    [stored_refusal] = await wait_events(broker, sid, "error")
    assert stored_refusal["direction"] == "in"
    assert stored_refusal["payload"]["error"]["event_id"] == change["event_id"]
    assert stored_refusal["payload"]["error"]["code"] == "invalid_value"
    events = await session_events(broker, sid)
    sent = [
        e["payload"] for e in events if (e["direction"], e["type"]) == ("out", "session.update")
    ]
    at = [p["event_id"] for p in sent].index(change["event_id"])
    assert sent[at + 1]["event_id"] == reassertion["event_id"]
    assert tool_names(sent[at + 1]["session"]) == ["lookup_order"]
    order = [
        (e["direction"], e["type"])
        for e in events
        if e["payload"].get("event_id") in (change["event_id"], reassertion["event_id"])
        or e["payload"].get("error", {}).get("event_id") == change["event_id"]
    ]
    assert order == [("out", "session.update"), ("in", "error"), ("out", "session.update")]
    assert [e for e in events if e["type"] == "broker.config_updated"] == []
    assert await chained(broker, kinds=("session.reconfigured",), session_id=sid) == []


async def test_another_instance_has_the_calls_owner_reconfigure_it(
    make_broker: BrokerFactory, pg_url: str, emulator: RunningEmulator
) -> None:
    """Two instances on one PostgreSQL: the one that does not own the call asks its owner (a
    ``config`` call command); an ``instructions`` command, what an instance from before this
    release sends, is still carried out."""
    owner = await make_broker(database_url=pg_url, instance_id="cfg-owner")
    other = await make_broker(database_url=pg_url, instance_id="cfg-other")
    session = await owner.create_session(tools=["lookup_order"])
    sid = session["id"]
    browser = await connect_browser(owner, session)
    try:
        call = emulator.registry.get((await owner.get_session(sid))["call_id"])
        assert call is not None
        reply = await other.request(
            "POST", f"/api/v1/sessions/{sid}/config", json_body={"tools": ["get_time"]}
        )
        assert reply.status == 200, reply.text
        assert [tool["name"] for tool in call.session["tools"]] == ["get_time"]
        ask(browser, "get_time")
        await browser.wait_for("response.done", says("get_time returned"))
        row = await other.get_session(sid)
        assert row["tools"] == ["get_time"]
        assert [c["status"] for c in row["tool_calls"]] == ["succeeded"]
        # An instance of before reconfiguration asks with the old command kind.
        actions = other.app[app_state.SESSIONS]._calls
        await actions.ask_owner(
            sid, "cfg-owner", INSTRUCTIONS_COMMAND, {"by": "admin", "instructions": "Be terse."}
        )
        assert call.session["instructions"] == "Be terse."
        assert [tool["name"] for tool in call.session["tools"]] == ["get_time"]
    finally:
        await browser.close()
    records = await chained(other, kinds=("session.reconfigured",), session_id=sid)
    assert [r.body["tools"]["after"] for r in records if r.body is not None] == [
        ["get_time"],
        ["get_time"],
    ]


async def test_a_trusted_sessions_server_tools_stay_through_a_tool_change(
    broker: RunningBroker,
) -> None:
    """The registry tools change; the session's own server tools are not the registry's: they
    stay offered, and their calls still go to the backend."""
    key = await broker.new_key("sessions:trusted", name="order-service")
    reply = await broker.request(
        "POST",
        "/api/v1/sessions",
        token=key,
        json_body={
            "connection_type": "trusted_server",
            "service_id": "order-service",
            "server_tools": [STOCK_TOOL],
            "tools": ["lookup_order"],
        },
    )
    assert reply.status == 201, reply.text
    session = reply.json()
    backend = await trusted.connect(broker, session)
    try:
        await backend.next(trusted.of_type("session.updated"))
        changed = await broker.request(
            "POST",
            f"/api/v1/sessions/{session['id']}/config",
            json_body={"tools": ["get_time"]},
            token=key,
        )
        assert changed.status == 200, changed.text

        def new_tools(event: dict[str, Any]) -> bool:
            return event.get("type") == "session.updated" and {
                tool["name"] for tool in event["session"].get("tools") or ()
            } == {"get_time", "check_stock"}

        await backend.next(new_tools)
        await backend.say("check_stock ABC-1")
        call = await backend.next(trusted.of_type("broker.tool_call"))
        assert call["name"] == "check_stock"
    finally:
        await backend.ws.close()
