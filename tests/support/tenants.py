"""Tenants in tests: a tenant made over the API, its keys, and sessions its app key made."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.support.broker_server import ADMIN_KEY, RunningBroker


@dataclass
class Team:
    """A tenant, its app key (``sessions:create``, ``monitor:read``) and its ops key (``admin``
    within the tenant), and the sessions its app made."""

    tenant: str
    app: str
    app_id: str
    ops: str
    ops_id: str
    sessions: list[str] = field(default_factory=list)


async def make_tenant(broker: RunningBroker, tenant_id: str) -> None:
    reply = await broker.request(
        "POST", "/api/v1/tenants", json_body={"id": tenant_id, "name": f"team {tenant_id}"}
    )
    assert reply.status == 201, reply.text
    assert reply.json()["id"] == tenant_id


async def make_key(
    broker: RunningBroker, *scopes: str, tenant: str | None, token: str = ADMIN_KEY
) -> dict[str, Any]:
    body: dict[str, Any] = {"name": f"{tenant} key", "scopes": list(scopes), "tools": ["*"]}
    if tenant is not None:
        body["tenant"] = tenant
    reply = await broker.request("POST", "/api/v1/keys", json_body=body, token=token)
    assert reply.status == 201, reply.text
    created: dict[str, Any] = reply.json()
    return created


async def make_team(broker: RunningBroker, tenant: str) -> Team:
    await make_tenant(broker, tenant)
    app = await make_key(broker, "sessions:create", "monitor:read", tenant=tenant)
    ops = await make_key(broker, "admin", tenant=tenant)
    assert (app["tenant"], ops["tenant"]) == (tenant, tenant)
    return Team(tenant, app["key"], app["id"], ops["key"], ops["id"])


async def new_session(broker: RunningBroker, team: Team) -> dict[str, Any]:
    reply = await broker.request(
        "POST", "/api/v1/sessions", json_body={"tools": ["lookup_order"]}, token=team.app
    )
    assert reply.status == 201, reply.text
    session: dict[str, Any] = reply.json()
    team.sessions.append(session["id"])
    return session
