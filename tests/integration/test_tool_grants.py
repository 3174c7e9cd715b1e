"""Tool grants per key: a key puts in a session's allowlist only the tools it was granted.

Must-show 2 of the tenants issue: a key without the grant cannot create a session with that
tool (403 ``tool_not_granted``, nothing stored); the grant change is an audit record naming
the key that made it, with the grants before and after. Over HTTP and on the command line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from broker import app_state
from broker.audit.records import ChainedRecord
from broker.db.models import SessionRow
from broker.db.queries.audit import AuditFilter, audit_records
from tests.support.audit_chain import broker_cli_run, cli_environment
from tests.support.broker_server import Reply, RunningBroker


async def _key(broker: RunningBroker, tools: list[str] | None, *scopes: str) -> dict[str, Any]:
    """A new key (by the admin key) with ``tools`` (``None``: the request leaves them out)."""
    body: dict[str, Any] = {"name": "widget", "scopes": list(scopes or ("sessions:create",))}
    if tools is not None:
        body["tools"] = tools
    reply = await broker.request("POST", "/api/v1/keys", json_body=body)
    assert reply.status == 201, reply.text
    made: dict[str, Any] = reply.json()
    return made


async def _create(broker: RunningBroker, token: str, tools: list[str]) -> Reply:
    return await broker.request("POST", "/api/v1/sessions", token=token, json_body={"tools": tools})


async def _session_count(broker: RunningBroker, key_id: str) -> int:
    async with broker.app[app_state.SESSIONMAKER]() as s:
        count = await s.scalar(
            select(func.count()).select_from(SessionRow).where(SessionRow.owner_key_id == key_id)
        )
    return int(count or 0)


async def _records(broker: RunningBroker, kind: str) -> list[ChainedRecord]:
    await broker.app[app_state.AUDIT].chain_pending()
    async with broker.app[app_state.SESSIONMAKER]() as s:
        return list(await audit_records(s, AuditFilter(kinds=(kind,)), after_seq=0, limit=500))


async def test_a_key_granted_one_tool_cannot_allowlist_another(broker: RunningBroker) -> None:
    made = await _key(broker, ["lookup_order"])
    assert made["tools"] == ["lookup_order"]

    refused = await _create(broker, made["key"], ["lookup_order", "get_time"])
    assert (refused.status, refused.code) == (403, "tool_not_granted"), refused.text
    assert refused.json()["tools"] == ["get_time"]
    assert "get_time" in refused.json()["detail"]
    # Nothing was made: no session row, no session.created record by that key.
    assert await _session_count(broker, made["id"]) == 0
    actor = f"key:{made['id']}"
    assert [r for r in await _records(broker, "session.created") if r.actor == actor] == []

    allowed = await _create(broker, made["key"], ["lookup_order"])
    assert allowed.status == 201, allowed.text
    assert allowed.json()["tools"] == ["lookup_order"]
    assert await _session_count(broker, made["id"]) == 1
    [record] = [r for r in await _records(broker, "session.created") if r.actor == actor]
    assert record.session_id == allowed.json()["id"]


async def test_a_new_key_grants_no_tool_unless_given(broker: RunningBroker) -> None:
    made = await _key(broker, None)
    assert made["tools"] == []
    refused = await _create(broker, made["key"], ["lookup_order"])
    assert (refused.status, refused.code) == (403, "tool_not_granted")
    assert (await _create(broker, made["key"], [])).status == 201
    # A tool the registry does not have is still 422 first: the grant is not the question.
    unknown = await _create(broker, made["key"], ["no_such_tool"])
    assert (unknown.status, unknown.code) == (422, "unknown_tool")


async def test_every_tool_for_a_star_grant(broker: RunningBroker) -> None:
    made = await _key(broker, ["*", "lookup_order"])
    assert made["tools"] == ["*"]
    assert (await _create(broker, made["key"], ["lookup_order", "get_time"])).status == 201


async def test_a_grant_change_takes_effect_and_is_audited_with_the_acting_key(
    broker: RunningBroker,
) -> None:
    made = await _key(broker, ["lookup_order"])
    operator = await broker.new_key("admin", name="on call")
    [operator_row] = [
        k
        for k in (await broker.request("GET", "/api/v1/keys")).json()["keys"]
        if k["name"] == "on call"
    ]
    assert (await _create(broker, made["key"], ["get_time"])).code == "tool_not_granted"

    changed = await broker.request(
        "PATCH",
        f"/api/v1/keys/{made['id']}",
        token=operator,
        json_body={"tools": ["get_time", "lookup_order"]},
    )
    assert changed.status == 200, changed.text
    assert changed.json()["tools"] == ["get_time", "lookup_order"]
    assert "key" not in changed.json()
    listed = (await broker.request("GET", "/api/v1/keys")).json()["keys"]
    assert [k["tools"] for k in listed if k["id"] == made["id"]] == [["get_time", "lookup_order"]]
    assert (await _create(broker, made["key"], ["get_time"])).status == 201

    [record] = await _records(broker, "key.grants_changed")
    assert record.actor == f"key:{operator_row['id']}"
    assert record.body == {
        "key_id": made["id"],
        "before": ["lookup_order"],
        "after": ["get_time", "lookup_order"],
    }
    # The same record through the audit API.
    page = await broker.request("GET", "/api/v1/audit?kind=key.grants_changed")
    assert [(r["actor"], r["body"]) for r in page.json()["records"]] == [
        (record.actor, record.body)
    ]
    # Taking the grant back: the next session with that tool is refused again.
    back = await broker.request(
        "PATCH", f"/api/v1/keys/{made['id']}", json_body={"tools": ["lookup_order"]}
    )
    assert back.status == 200
    assert (await _create(broker, made["key"], ["get_time"])).code == "tool_not_granted"
    records = await _records(broker, "key.grants_changed")
    assert [(r.actor, r.body) for r in records][1:] == [
        (
            "key:admin",
            {
                "key_id": made["id"],
                "before": ["get_time", "lookup_order"],
                "after": ["lookup_order"],
            },
        )
    ]


async def test_the_key_created_record_carries_the_grants(broker: RunningBroker) -> None:
    made = await _key(broker, ["lookup_order"])
    records = await _records(broker, "key.created")
    expected = {
        "key_id": made["id"],
        "name": "widget",
        "scopes": ["sessions:create"],
        "tools": ["lookup_order"],
    }
    [body] = [r.body for r in records if r.body and r.body["key_id"] == made["id"]]
    assert body is not None
    assert {name: body.get(name) for name in expected} == expected


async def test_an_unchanged_grant_is_not_recorded_again(broker: RunningBroker) -> None:
    made = await _key(broker, ["lookup_order"])
    same = await broker.request(
        "PATCH", f"/api/v1/keys/{made['id']}", json_body={"tools": ["lookup_order"]}
    )
    assert same.status == 200 and same.json()["tools"] == ["lookup_order"]
    assert await _records(broker, "key.grants_changed") == []


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"tools": ["no_such_tool"]}, 422, "unknown_tool"),
        ({"tools": "lookup_order"}, 422, "invalid_request"),
        ({}, 422, "invalid_request"),
        ({"tools": [], "scopes": ["admin"]}, 422, "invalid_request"),
    ],
)
async def test_bad_grant_requests_are_refused(
    broker: RunningBroker, body: dict[str, Any], status: int, code: str
) -> None:
    made = await _key(broker, ["lookup_order"])
    reply = await broker.request("PATCH", f"/api/v1/keys/{made['id']}", json_body=body)
    assert (reply.status, reply.code) == (status, code), reply.text
    assert "no_such_tool" not in reply.text  # input is not echoed back
    assert await _records(broker, "key.grants_changed") == []


async def test_creating_a_key_with_an_unknown_tool_is_422(broker: RunningBroker) -> None:
    reply = await broker.request(
        "POST",
        "/api/v1/keys",
        json_body={"name": "x", "scopes": ["sessions:create"], "tools": ["no_such_tool"]},
    )
    assert (reply.status, reply.code) == (422, "unknown_tool")
    assert "lookup_order" in reply.json()["tools"] and "no_such_tool" not in reply.text
    assert (await broker.request("GET", "/api/v1/keys")).json()["keys"] == []


async def test_changing_grants_needs_admin_and_a_known_key(broker: RunningBroker) -> None:
    made = await _key(broker, ["lookup_order"])
    # Its own key may create sessions, not widen its grants.
    refused = await broker.request(
        "PATCH", f"/api/v1/keys/{made['id']}", token=made["key"], json_body={"tools": ["*"]}
    )
    assert (refused.status, refused.code) == (403, "insufficient_scope")
    monitor = await broker.new_key("monitor:read", "sessions:create", "audit:read")
    refused = await broker.request(
        "PATCH", f"/api/v1/keys/{made['id']}", token=monitor, json_body={"tools": ["*"]}
    )
    assert (refused.status, refused.code) == (403, "insufficient_scope")
    missing = await broker.request(
        "PATCH", "/api/v1/keys/key_0000000000000000", json_body={"tools": ["lookup_order"]}
    )
    assert (missing.status, missing.code) == (404, "key_not_found")
    # The bootstrap key is configuration, not a row.
    admin = await broker.request("PATCH", "/api/v1/keys/admin", json_body={"tools": []})
    assert (admin.status, admin.code) == (404, "key_not_found")
    listed = (await broker.request("GET", "/api/v1/keys")).json()["keys"]
    assert [k["tools"] for k in listed if k["id"] == made["id"]] == [["lookup_order"]]
    assert await _records(broker, "key.grants_changed") == []


async def test_an_admin_key_grants_only_what_it_may_grant_itself(broker: RunningBroker) -> None:
    """A key with ``admin`` but a narrow grant cannot mint or widen a key past it."""
    limited = await broker.new_key("admin", name="team lead", tools=["lookup_order"])
    wider = await broker.request(
        "POST",
        "/api/v1/keys",
        token=limited,
        json_body={"name": "x", "scopes": ["sessions:create"], "tools": ["get_time"]},
    )
    assert (wider.status, wider.code) == (403, "tool_not_granted")
    assert wider.json()["tools"] == ["get_time"]
    star = await broker.request(
        "POST",
        "/api/v1/keys",
        token=limited,
        json_body={"name": "x", "scopes": ["sessions:create"], "tools": ["*"]},
    )
    assert (star.status, star.code) == (403, "tool_not_granted")
    narrow = await broker.request(
        "POST",
        "/api/v1/keys",
        token=limited,
        json_body={"name": "y", "scopes": ["sessions:create"], "tools": ["lookup_order"]},
    )
    assert narrow.status == 201, narrow.text
    widen = await broker.request(
        "PATCH",
        f"/api/v1/keys/{narrow.json()['id']}",
        token=limited,
        json_body={"tools": ["get_time"]},
    )
    assert (widen.status, widen.code) == (403, "tool_not_granted")


# --- the command line ---------------------------------------------------------------------------


@pytest.fixture
def cli_env(
    db_url: str, tools_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``broker`` in-process on the test broker's database and tools file."""
    cli_environment(monkeypatch, db_url, tmp_path)
    monkeypatch.setenv("BROKER_CONFIG", str(tools_config))


@pytest.mark.usefixtures("cli_env")
async def test_keys_create_and_grant_on_the_command_line(
    broker: RunningBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    run = await broker_cli_run(
        capsys,
        "keys",
        "create",
        "--name",
        "widget",
        "--scopes",
        "sessions:create",
        "--tools",
        "lookup_order",
    )
    assert run.code == 0, run
    found = re.search(r"created (key_\w+)", run.out)
    assert found is not None, run
    key_id, key = found.group(1), run.out.strip().splitlines()[-1]
    assert (await _create(broker, key, ["lookup_order"])).status == 201
    refused = await _create(broker, key, ["get_time"])
    assert (refused.status, refused.code) == (403, "tool_not_granted")

    run = await broker_cli_run(capsys, "keys", "grant", key_id, "--tools", "lookup_order,get_time")
    assert run.code == 0, run
    assert "get_time,lookup_order" in run.out and "(was: lookup_order)" in run.out
    assert (await _create(broker, key, ["get_time"])).status == 201

    listing = await broker_cli_run(capsys, "keys", "list")
    [row] = [line for line in listing.out.splitlines() if line.startswith(key_id)]
    assert " get_time,lookup_order " in row

    [record] = await _records(broker, "key.grants_changed")
    assert record.actor == "cli"
    assert record.body == {
        "key_id": key_id,
        "before": ["lookup_order"],
        "after": ["get_time", "lookup_order"],
    }

    everything = await broker_cli_run(capsys, "keys", "grant", key_id, "--tools", "*")
    assert everything.code == 0, everything
    assert (await _create(broker, key, ["delete_account", "get_time"])).status == 201
    nothing = await broker_cli_run(capsys, "keys", "grant", key_id, "--tools", "")
    assert nothing.code == 0, nothing
    assert (await _create(broker, key, ["lookup_order"])).code == "tool_not_granted"


@pytest.mark.usefixtures("cli_env")
async def test_the_command_line_refuses_unknown_tools_and_keys(
    broker: RunningBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    run = await broker_cli_run(
        capsys, "keys", "create", "--name", "x", "--scopes", "sessions:create", "--tools", "nope"
    )
    assert run.code == 2 and run.out == ""
    assert "unknown tool(s): nope" in run.err
    assert (await broker.request("GET", "/api/v1/keys")).json()["keys"] == []
    run = await broker_cli_run(capsys, "keys", "grant", "key_nope", "--tools", "lookup_order")
    assert run.code == 2 and "no API key with id 'key_nope'" in run.err
    # Without --tools a key made on the command line grants nothing.
    run = await broker_cli_run(
        capsys, "keys", "create", "--name", "bare", "--scopes", "sessions:create"
    )
    assert run.code == 0, run
    key = run.out.strip().splitlines()[-1]
    assert (await _create(broker, key, ["lookup_order"])).code == "tool_not_granted"
