"""Two tenants on one broker: each tenant's keys see and act on its own sessions and keys only.

Another tenant's session is not found (404, as an unknown one) on every read route (list,
detail with its transcript and tool calls, the event stream, the audit records) and every ops
action; the admin key and a key made cross-tenant explicitly see both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.audit_chain import broker_cli_run, cli_environment
from tests.support.broker_server import ADMIN_KEY, RunningBroker
from tests.support.flow import connect_browser, lookup_42_and_leave, wait_session_ended
from tests.support.tenants import Team, make_key, make_team, make_tenant, new_session


async def two_teams(broker: RunningBroker) -> tuple[Team, Team]:
    """Tenants ``a`` and ``b``, each with a finished call that ran a tool and a new session."""
    teams = (await make_team(broker, "a"), await make_team(broker, "b"))
    for team in teams:
        await lookup_42_and_leave(broker, await new_session(broker, team))
        await wait_session_ended(broker, team.sessions[-1])
        await new_session(broker, team)
    return teams


async def listed(broker: RunningBroker, token: str, query: str = "") -> list[dict[str, Any]]:
    reply = await broker.request("GET", f"/api/v1/sessions{query}", token=token)
    assert reply.status == 200, reply.text
    sessions: list[dict[str, Any]] = reply.json()["sessions"]
    return sessions


async def audit_records(broker: RunningBroker, token: str, query: str = "") -> list[Any]:
    reply = await broker.request("GET", f"/api/v1/audit?limit=500{query}", token=token)
    assert reply.status == 200, reply.text
    records: list[Any] = reply.json()["records"]
    return records


async def stream(
    http: aiohttp.ClientSession, broker: RunningBroker, session_id: str, key: str
) -> tuple[int, str]:
    """The event stream's status and whole body (an ended session's stream closes)."""
    async with http.get(
        f"{broker.base_url}/api/v1/sessions/{session_id}/events",
        headers={"Authorization": f"Bearer {key}", "Accept": "text/event-stream"},
        timeout=aiohttp.ClientTimeout(total=20),
    ) as response:
        return response.status, await response.text()


async def test_every_read_route_shows_a_tenant_only_its_own_sessions(
    broker: RunningBroker, http: aiohttp.ClientSession
) -> None:
    a, b = await two_teams(broker)
    ended_a, ended_b = a.sessions[0], b.sessions[0]

    model = (await broker.get_session(ended_b))["model"]
    for key in (a.app, a.ops):
        # The list, with every filter: never a session of b.
        for query in ("", "?state=ended", "?tool=lookup_order", f"?model={model}", "?limit=1"):
            rows = await listed(broker, key, query)
            assert {row["id"] for row in rows} <= set(a.sessions), query
            assert {row["tenant"] for row in rows} <= {"a"}
        assert {row["id"] for row in await listed(broker, key)} == set(a.sessions)
        [tooled] = await listed(broker, key, "?tool=lookup_order")
        assert tooled["id"] == ended_a
        # Detail, its transcript and tool calls: a's own, b's not found.
        mine = await broker.request("GET", f"/api/v1/sessions/{ended_a}", token=key)
        assert mine.status == 200, mine.text
        detail = mine.json()
        assert detail["tenant"] == "a"
        assert [call["tool"] for call in detail["tool_calls"]] == ["lookup_order"]
        assert detail["transcript"]
        for other in b.sessions:
            reply = await broker.request("GET", f"/api/v1/sessions/{other}", token=key)
            assert (reply.status, reply.code) == (404, "session_not_found")
        # The event stream: a's works, b's is not found (as an unknown session's).
        status, body = await stream(http, broker, ended_a, key)
        assert status == 200 and "response.done" in body
        status, body = await stream(http, broker, ended_b, key)
        assert status == 404 and "session_not_found" in body

    # Paging through a's list one row at a time meets only a's sessions.
    seen: list[str] = []
    query = "?limit=1"
    while True:
        reply = await broker.request("GET", f"/api/v1/sessions{query}", token=a.ops)
        page = reply.json()
        seen += [row["id"] for row in page["sessions"]]
        if page["next_cursor"] is None:
            break
        query = f"?limit=1&cursor={page['next_cursor']}"
    assert sorted(seen) == sorted(a.sessions)

    # The audit trail: a's sessions' records and what a's keys did; nothing of b's.
    records = await audit_records(broker, a.ops)
    assert {r["session_id"] for r in records if r["session_id"]} == set(a.sessions)
    assert {r["actor"] for r in records if r["session_id"] is None} <= {
        f"key:{a.app_id}",
        f"key:{a.ops_id}",
    }
    assert {r["kind"] for r in records} >= {"session.created", "tool.succeeded"}
    assert await audit_records(broker, a.ops, f"&session_id={ended_b}") == []
    everything = await audit_records(broker, ADMIN_KEY)
    assert {r["session_id"] for r in everything} >= set(a.sessions) | set(b.sessions)
    assert "tenant.created" in {r["kind"] for r in everything}

    # Keys: a's admin lists a's keys only.
    keys = (await broker.request("GET", "/api/v1/keys?include=usage", token=a.ops)).json()
    assert {k["id"] for k in keys["keys"]} == {a.app_id, a.ops_id}
    assert {k["tenant"] for k in keys["keys"]} == {"a"}

    # The admin key, and a key made cross-tenant explicitly, see both tenants.
    cross = await make_key(broker, "monitor:read", "audit:read", "admin", tenant="*")
    assert cross["tenant"] is None
    for key in (ADMIN_KEY, cross["key"]):
        rows = await listed(broker, key)
        assert {row["id"] for row in rows} >= set(a.sessions) | set(b.sessions)
        assert {row["tenant"] for row in rows} >= {"a", "b"}
        reply = await broker.request("GET", f"/api/v1/sessions/{ended_b}", token=key)
        assert (reply.status, reply.json()["tenant"]) == (200, "b")
        status, body = await stream(http, broker, ended_b, key)
        assert status == 200 and "response.done" in body
        records = await audit_records(broker, key, f"&session_id={ended_b}")
        assert records and {r["session_id"] for r in records} == {ended_b}
        all_keys = (await broker.request("GET", "/api/v1/keys", token=key)).json()["keys"]
        assert {k["tenant"] for k in all_keys} >= {"a", "b", None}


async def test_every_ops_action_on_another_tenants_session_is_not_found(
    broker: RunningBroker,
) -> None:
    a, b = await make_team(broker, "a"), await make_team(broker, "b")
    session = await new_session(broker, b)
    browser = await connect_browser(broker, session)
    try:
        path = f"/api/v1/sessions/{session['id']}"
        for action, body in (
            ("hangup", {"reason": "not yours"}),
            ("instructions", {"instructions": "Say nothing."}),
        ):
            reply = await broker.request("POST", f"{path}/{action}", json_body=body, token=a.ops)
            assert (reply.status, reply.code) == (404, "session_not_found"), action
        assert (await broker.get_session(session["id"]))["state"] == "live"
        # b's own admin may.
        reply = await broker.request(
            "POST", f"{path}/hangup", json_body={"reason": "ours"}, token=b.ops
        )
        assert reply.status == 200, reply.text
        ended = await wait_session_ended(broker, session["id"])
        assert ended["end_reason"] == "ops_hangup"
    finally:
        await browser.close()

    # Another tenant's key cannot be revoked (not found), and still works.
    reply = await broker.request("DELETE", f"/api/v1/keys/{b.app_id}", token=a.ops)
    assert (reply.status, reply.code) == (404, "key_not_found")
    assert (await broker.request("GET", "/api/v1/sessions", token=b.app)).status == 200
    # Its own tenant's key: revoked.
    reply = await broker.request("DELETE", f"/api/v1/keys/{a.app_id}", token=a.ops)
    assert reply.status == 200 and reply.json()["revoked_at"] is not None

    # What acts on every tenant needs a cross-tenant key.
    for method, route in (
        ("POST", "/api/v1/tools/lookup_order/disable"),
        ("POST", "/api/v1/tools/lookup_order/enable"),
        ("GET", "/api/v1/tenants"),
    ):
        reply = await broker.request(method, route, token=a.ops)
        assert (reply.status, reply.code) == (403, "cross_tenant_required"), route
    assert (await broker.request("GET", "/api/v1/tools", token=a.ops)).status == 200


async def test_tenants_and_the_tenant_of_new_keys_and_sessions(broker: RunningBroker) -> None:
    a = await make_team(broker, "a")
    await make_tenant(broker, "b")
    listing = (await broker.request("GET", "/api/v1/tenants")).json()["tenants"]
    assert [t["id"] for t in listing] == ["default", "a", "b"]
    again = await broker.request("POST", "/api/v1/tenants", json_body={"id": "a", "name": "x"})
    assert (again.status, again.code) == (409, "tenant_exists")
    for bad in ("", "A", "a b", "x" * 41, "a/b"):
        reply = await broker.request("POST", "/api/v1/tenants", json_body={"id": bad, "name": "x"})
        assert reply.status == 422, bad
    refused = await broker.request(
        "POST", "/api/v1/tenants", json_body={"id": "c", "name": "c"}, token=a.ops
    )
    assert (refused.status, refused.code) == (403, "cross_tenant_required")

    # A key's tenant: its creator's by default; another (or "*") only for a cross-tenant one.
    assert (await make_key(broker, "monitor:read", tenant=None))["tenant"] == "default"
    assert (await make_key(broker, "monitor:read", tenant=None, token=a.ops))["tenant"] == "a"
    assert (await make_key(broker, "monitor:read", tenant="b"))["tenant"] == "b"
    for tenant in ("b", "*"):
        reply = await broker.request(
            "POST",
            "/api/v1/keys",
            json_body={"name": "x", "scopes": ["monitor:read"], "tenant": tenant},
            token=a.ops,
        )
        assert (reply.status, reply.code) == (403, "cross_tenant_required"), tenant
    unknown = await broker.request(
        "POST",
        "/api/v1/keys",
        json_body={"name": "x", "scopes": ["monitor:read"], "tenant": "nope"},
    )
    assert (unknown.status, unknown.code) == (422, "unknown_tenant")

    # A session's tenant: its key's; a cross-tenant key's choice, or the default tenant.
    mine = await new_session(broker, a)
    assert (await broker.get_session(mine["id"]))["tenant"] == "a"
    made = await broker.create_session()
    assert (await broker.get_session(made["id"]))["tenant"] == "default"
    for_b = await broker.create_session(tenant="b")
    assert (await broker.get_session(for_b["id"]))["tenant"] == "b"
    reply = await broker.request("POST", "/api/v1/sessions", json_body={"tenant": "nope"})
    assert (reply.status, reply.code) == (422, "unknown_tenant")
    reply = await broker.request("POST", "/api/v1/sessions", json_body={"tenant": "b"}, token=a.app)
    assert (reply.status, reply.code) == (403, "cross_tenant_required")
    records = await audit_records(broker, ADMIN_KEY, "&kind=tenant.created")
    assert [r["actor"] for r in records] == ["key:admin", "key:admin"]


async def test_tenants_and_tenant_keys_on_the_command_line(
    broker: RunningBroker,
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cli_environment(monkeypatch, db_url, tmp_path)
    made = await broker_cli_run(capsys, "tenants", "create", "shop", "--name", "Shop team")
    assert (made.code, made.out) == (0, "created tenant shop (Shop team)\n"), made.err
    twice = await broker_cli_run(capsys, "tenants", "create", "shop", "--name", "again")
    assert twice.code == 2 and "tenant_exists" in twice.err
    listing = await broker_cli_run(capsys, "tenants", "list")
    assert [line.split()[0] for line in listing.out.splitlines()] == ["ID", "default", "shop"]

    create = ("keys", "create", "--name", "ops", "--scopes", "admin", "--tenant")
    made = await broker_cli_run(capsys, *create, "shop")
    assert made.code == 0, made.err
    key = made.out.strip().splitlines()[-1]
    keys = (await broker.request("GET", "/api/v1/keys", token=key)).json()["keys"]
    assert [k["tenant"] for k in keys] == ["shop"]
    cross = await broker_cli_run(capsys, *create, "*")
    assert cross.code == 0, cross.err
    cross_key = cross.out.strip().splitlines()[-1]
    assert (await broker.request("GET", "/api/v1/tenants", token=cross_key)).status == 200
    unknown = await broker_cli_run(capsys, *create, "nope")
    assert unknown.code == 2 and "unknown_tenant" in unknown.err

    records = await audit_records(broker, ADMIN_KEY, "&kind=tenant.created")
    assert [(r["actor"], r["body"]) for r in records] == [
        ("cli", {"tenant": "shop", "name": "Shop team"})
    ]


async def test_the_kill_switch_stays_with_a_single_teams_admin_until_a_second_tenant(
    broker: RunningBroker,
) -> None:
    """The switch acts on every tenant's calls: the only tenant's admin keeps it; once
    another tenant exists, only a cross-tenant key throws it."""
    ops = await make_key(broker, "admin", tenant=None)
    assert ops["tenant"] == "default"
    path = "/api/v1/tools/lookup_order/disable"
    assert (await broker.request("POST", path, token=ops["key"])).status == 200
    await make_tenant(broker, "b")
    refused = await broker.request("POST", path, token=ops["key"])
    assert (refused.status, refused.code) == (403, "cross_tenant_required")
    assert (await broker.request("POST", "/api/v1/tools/lookup_order/enable")).status == 200
