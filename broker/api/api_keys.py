"""API key administration (``admin`` scope): list (usage on request), create, revoke, grant.

Granting replaces the tools a key may put in a session's allowlist (``PATCH``).
"""

from __future__ import annotations

from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from broker import app_state
from broker.api._auth import api_principal
from broker.api._bodies import read_json
from broker.api._times import iso
from broker.api.schemas import KeyCreated, KeyList, KeyRecord, UsageOut, respond
from broker.audit.records import Actor
from broker.auth.api_keys import (
    UnknownScopeError,
    UnknownToolError,
    create_api_key,
    list_api_keys,
    revoke_api_key,
    set_tool_grants,
    tool_grant_list,
)
from broker.auth.principals import (
    ALL_SCOPES,
    RESERVED_SCOPES,
    ApiPrincipal,
    Scope,
    describe_scopes,
)
from broker.auth.tenants import tenant_for_new_key
from broker.db import queries
from broker.db.models import ApiKey
from broker.errors import BadRequestError, ForbiddenError, NotFoundError, ValidationFailedError
from broker.record.usage import Usage

NO_STORE = {"Cache-Control": "no-store"}
MAX_TOOL_GRANTS = 256

# A registry tool's name or ``*``; checked against the registry by the handler (422
# unknown_tool). The bounds are the registry's own rule for names.
ToolGrant = Annotated[str, Field(min_length=1, max_length=64)]


class CreateKeyRequest(BaseModel):
    """Body of ``POST /api/v1/keys``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    # Checked by create_api_key (422 unknown_scope, listing the scopes); the enum is for the
    # OpenAPI document only.
    scopes: list[
        Annotated[str, WithJsonSchema({"type": "string", "enum": sorted(map(str, ALL_SCOPES))})]
    ] = Field(min_length=1, max_length=len(ALL_SCOPES))
    tools: list[ToolGrant] = Field(
        default_factory=list,
        max_length=MAX_TOOL_GRANTS,
        description="The tools it may put in a session's allowlist: registry tool names, or"
        " ``*`` for any tool. Default: none.",
    )
    tenant: str | None = Field(
        default=None,
        min_length=1,
        max_length=40,
        description="Its tenant: the creator's own by default (``default`` for a cross-tenant"
        " creator); another tenant, or ``*`` for a cross-tenant key, only by a cross-tenant key.",
    )


class GrantToolsRequest(BaseModel):
    """Body of ``PATCH /api/v1/keys/{key_id}``."""

    model_config = ConfigDict(extra="forbid")

    tools: list[ToolGrant] = Field(
        max_length=MAX_TOOL_GRANTS,
        description="Replaces the key's tool grants: registry tool names, ``*`` for any tool,"
        " ``[]`` for none.",
    )


def _key_fields(row: ApiKey) -> dict[str, Any]:
    """The fields a key's record and its creation answer share."""
    return {
        "id": row.id,
        "name": row.name,
        "scopes": row.scopes,
        "tools": row.tool_grants,
        "tenant": row.tenant_id,
        "created_at": iso(row.created_at),
        "revoked_at": iso(row.revoked_at),
    }


def key_record(row: ApiKey, usage: Usage | None = None) -> KeyRecord:
    """A key's public record: never the key, never its hash; its ``usage`` when given."""
    record = KeyRecord(**_key_fields(row))
    if usage is not None:
        record.usage = UsageOut.model_validate(usage.as_json())
    return record


async def list_keys(request: web.Request) -> web.Response:
    """Every key; with ``?include=usage`` each also gets its token ``usage``.

    A key's usage is the sum over its sessions, live ones included. It is asked for
    explicitly because it is an aggregate over every session, not a read of the key rows.

    Raises:
        BadRequestError: ``invalid_query``: another ``include`` than ``usage``.
    """
    principal = await api_principal(request)
    principal.require(Scope.ADMIN)
    include = request.query.get("include")
    if include not in (None, "usage"):
        raise BadRequestError("invalid_query", "include may only be 'usage'", param="include")
    sessionmaker = request.app[app_state.SESSIONMAKER]
    # A tenant's admin lists its tenant's keys; a cross-tenant one, every key.
    rows = await list_api_keys(sessionmaker, principal.tenant_id)
    if include is None:
        return respond(KeyList(keys=[key_record(row) for row in rows]))
    async with sessionmaker() as s:
        usage = await queries.usage_by_key(s)
    return respond(KeyList(keys=[key_record(row, usage.get(row.id, Usage())) for row in rows]))


def _grants(request: web.Request, principal: ApiPrincipal, tools: list[str]) -> list[str]:
    """``tools`` as a key's grants, checked: known tools, and only what the granter has.

    A key gives no more than it may grant itself, so grants never widen by way of a new key.

    Raises:
        ValidationFailedError: ``unknown_tool``, listing the registry's tools (the request's
            names are not echoed).
        ForbiddenError: ``tool_not_granted``, naming the tools the acting key lacks.
    """
    registry = request.app[app_state.TOOLS]
    try:
        grants = tool_grant_list(tools, known=registry)
    except UnknownToolError:
        raise ValidationFailedError(
            "unknown_tool",
            "tools must be configured tools, or '*' for any tool",
            tools=sorted(registry),
        ) from None
    lacking = [t for t in grants if not principal.may_grant(t)]
    if lacking:
        raise ForbiddenError(
            "tool_not_granted",
            f"this API key may not grant tool(s): {', '.join(lacking)}",
            tools=lacking,
        )
    return grants


async def create_key(request: web.Request) -> web.Response:
    principal = await api_principal(request)
    principal.require(Scope.ADMIN)
    body = await read_json(request, CreateKeyRequest)
    grants = _grants(request, principal, body.tools)
    sessionmaker = request.app[app_state.SESSIONMAKER]
    tenant_id = await tenant_for_new_key(sessionmaker, principal, body.tenant)
    try:
        row, key = await create_api_key(
            sessionmaker,
            body.name,
            body.scopes,
            actor=Actor.key(principal.key_id),
            tool_grants=grants,
            tenant_id=tenant_id,
        )
    except UnknownScopeError:
        # The known scopes, not the unknown ones: input is never echoed (it could be a secret).
        known = sorted(str(s) for s in ALL_SCOPES)
        raise ValidationFailedError(
            "unknown_scope",
            f"scopes must be among: {describe_scopes()}",
            scopes=known,
            reserved=sorted(str(s) for s in RESERVED_SCOPES),
        ) from None
    created = KeyCreated(**_key_fields(row), key=key)
    return respond(created, status=201, headers=NO_STORE)


async def revoke_key(request: web.Request) -> web.Response:
    principal = await api_principal(request)
    principal.require(Scope.ADMIN)
    row = await revoke_api_key(
        request.app[app_state.SESSIONMAKER],
        request.match_info["key_id"],
        actor=Actor.key(principal.key_id),
        # Another tenant's key is not found, as if it did not exist.
        tenant_id=principal.tenant_id,
    )
    if row is None:
        # The BROKER_ADMIN_KEY bootstrap key is configuration, not a row: it is not found here.
        raise NotFoundError("key_not_found", "no such API key")
    return respond(key_record(row))


async def grant_tools(request: web.Request) -> web.Response:
    """Replace a key's tool grants (audited ``key.grants_changed``); the key's record.

    Sessions it already made keep their tools; its next session is checked against these.

    Raises:
        NotFoundError: ``key_not_found`` (the BROKER_ADMIN_KEY is configuration, not a row).
    """
    principal = await api_principal(request)
    principal.require(Scope.ADMIN)
    body = await read_json(request, GrantToolsRequest)
    grants = _grants(request, principal, body.tools)
    changed = await set_tool_grants(
        request.app[app_state.SESSIONMAKER],
        request.match_info["key_id"],
        grants,
        actor=Actor.key(principal.key_id),
        # Another tenant's key is not found, as if it did not exist.
        tenant_id=principal.tenant_id,
    )
    if changed is None:
        raise NotFoundError("key_not_found", "no such API key")
    row, _ = changed
    return respond(key_record(row))
