"""``PUT /api/v1/tenants/{tenant_id}/retention`` (``admin``): a tenant's own retention period.

``{"retention_days": N}`` erases the tenant's ended sessions' content N days after their end
(:mod:`broker.session.retention`), whatever ``BROKER_RETENTION_DAYS`` says; ``null`` returns
it to the setting. A tenant's admin sets only its own tenant's (any other is not found, as
another tenant's sessions are); audited as ``tenant.retention_changed``.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from broker import app_state
from broker.api._auth import api_principal
from broker.api._bodies import read_json
from broker.api.schemas import respond
from broker.audit.records import Actor
from broker.auth.principals import Scope
from broker.errors import NotFoundError
from broker.session.retention import set_tenant_retention


class RetentionRequest(BaseModel):
    """Body of ``PUT /api/v1/tenants/{tenant_id}/retention``."""

    model_config = ConfigDict(extra="forbid")

    retention_days: int | None = Field(
        ge=1,
        le=36_500,
        description="Days after its end a session's content is erased; ``null``: as"
        " ``BROKER_RETENTION_DAYS`` says.",
    )


class RetentionSet(BaseModel):
    """``200`` of ``PUT /api/v1/tenants/{tenant_id}/retention``: the tenant's own period."""

    model_config = ConfigDict(extra="forbid")

    tenant: str
    retention_days: int | None = Field(
        description="``null``: the tenant follows ``BROKER_RETENTION_DAYS``."
    )


async def put_tenant_retention(request: web.Request) -> web.Response:
    """Set or clear one tenant's retention period.

    Raises:
        ForbiddenError: ``insufficient_scope`` (no ``admin``).
        NotFoundError: ``tenant_not_found``: no such tenant, or another than the caller's.
    """
    principal = await api_principal(request)
    principal.require(Scope.ADMIN)
    body = await read_json(request, RetentionRequest)
    tenant_id = request.match_info["tenant_id"]
    if not principal.sees_tenant(tenant_id):
        raise NotFoundError("tenant_not_found", "no such tenant")
    if not await set_tenant_retention(
        request.app[app_state.SESSIONMAKER],
        tenant_id,
        body.retention_days,
        Actor.key(principal.key_id),
    ):
        raise NotFoundError("tenant_not_found", "no such tenant")
    return respond(RetentionSet(tenant=tenant_id, retention_days=body.retention_days))
