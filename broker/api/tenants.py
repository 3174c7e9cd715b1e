"""Tenants (cross-tenant ``admin``): ``POST /api/v1/tenants`` makes one, ``GET`` lists them.

Only a cross-tenant principal (the ``BROKER_ADMIN_KEY``, or a key made with tenant ``*``)
may: a tenant's own keys get ``403 cross_tenant_required``, not 404, since the route is no
one's session and its existence is no secret (:mod:`broker.auth.tenants`).
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from broker import app_state
from broker.api._auth import api_principal
from broker.api._bodies import read_json
from broker.api._times import iso
from broker.api.schemas import TenantList, TenantOut, respond
from broker.audit.records import Actor
from broker.auth.principals import ApiPrincipal, Scope
from broker.auth.tenants import create_tenant, list_tenants, require_cross_tenant
from broker.db.models import Tenant


class CreateTenantRequest(BaseModel):
    """Body of ``POST /api/v1/tenants``."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(
        min_length=1,
        max_length=40,
        pattern=r"^[a-z0-9_-]+$",
        description="A slug: the tenant's keys and sessions carry it.",
    )
    name: str = Field(min_length=1, max_length=200)


def tenant_json(row: Tenant) -> TenantOut:
    return TenantOut(id=row.id, name=row.name, created_at=iso(row.created_at))


async def _cross_tenant_admin(request: web.Request) -> ApiPrincipal:
    principal = await api_principal(request)
    principal.require(Scope.ADMIN)
    require_cross_tenant(principal, "managing tenants")
    return principal


async def list_tenants_route(request: web.Request) -> web.Response:
    await _cross_tenant_admin(request)
    rows = await list_tenants(request.app[app_state.SESSIONMAKER])
    return respond(TenantList(tenants=[tenant_json(row) for row in rows]))


async def create_tenant_route(request: web.Request) -> web.Response:
    """Raises: ConflictError ``tenant_exists``; ValidationFailedError ``invalid_request``."""
    principal = await _cross_tenant_admin(request)
    body = await read_json(request, CreateTenantRequest)
    row = await create_tenant(
        request.app[app_state.SESSIONMAKER], body.id, body.name, actor=Actor.key(principal.key_id)
    )
    return respond(tenant_json(row), status=201)
