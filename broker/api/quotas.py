"""Spend caps over the API: set a key's or a tenant's (``admin``), read one's own usage.

``PUT /api/v1/keys/{key_id}/quotas`` and ``PUT /api/v1/tenants/{tenant_id}/quotas`` replace
the caps (the body: a caps object, or ``null`` to clear them), audited as ``quota.changed``.
A tenant's admin sets only its own tenant's and its keys' caps: any other is not found (404),
as another tenant's sessions are. ``GET /api/v1/usage`` shows any key what it and its tenant
have spent against their caps, and when each count starts over (:mod:`broker.auth.quotas`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, RootModel

from broker import app_state
from broker.api._auth import api_principal
from broker.api._bodies import MAX_JSON_BYTES, read_body, require_content_type
from broker.api.schemas import respond
from broker.audit.records import Actor
from broker.auth.principals import ApiPrincipal, Scope
from broker.auth.quotas import (
    HARD_CAP_ALONE,
    Quotas,
    QuotasError,
    Standing,
    rfc3339,
    set_quotas,
)
from broker.errors import BadRequestError, NotFoundError, ValidationFailedError
from broker.tools.policy import strict_json_loads


class QuotasBody(RootModel[Quotas | None]):
    """Body of ``PUT …/quotas``: the caps, or ``null`` to clear them.

    The OpenAPI document's; the handler reads the body with :meth:`Quotas.parse`.
    """


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QuotasSet(_Out):
    """``200`` of ``PUT …/quotas``: the caps now in force (``null``: none)."""

    scope: Literal["key", "tenant"]
    id: str
    quotas: Quotas | None


class CapOut(_Out):
    allowed: int
    used: int
    remaining: int
    resets_at: str | None = Field(
        description="RFC 3339 (UTC) time the count starts over; ``null`` for max_live_calls "
        "(it frees up when a call ends)."
    )


class SpentOut(_Out):
    live_calls: int = Field(description="Calls being made or running now.")
    sessions_today: int = Field(description="Sessions created since 00:00 UTC.")
    tokens_today: int = Field(description="Tokens of the sessions created since 00:00 UTC.")
    tokens_this_month: int = Field(description="Tokens of the sessions created this UTC month.")


class StandingOut(_Out):
    id: str
    used: SpentOut
    caps: dict[str, CapOut] = Field(description="Each cap set, by its name (``max_…``).")
    hard_cap: bool = Field(description="Live calls end once a token cap is reached.")


class UsageReport(_Out):
    """``GET /api/v1/usage``: the caller's key and its sessions' tenant."""

    key: StandingOut
    tenant: StandingOut


def _standing_out(owner: Standing) -> StandingOut:
    spent = owner.spent
    return StandingOut(
        id=owner.id,
        used=SpentOut(
            live_calls=spent.live_calls,
            sessions_today=spent.sessions_today,
            tokens_today=spent.tokens_today,
            tokens_this_month=spent.tokens_this_month,
        ),
        caps={
            cap.limit: CapOut(
                allowed=cap.allowed,
                used=cap.used,
                remaining=cap.remaining,
                resets_at=None if cap.resets_at is None else rfc3339(cap.resets_at),
            )
            for cap in owner.caps
        },
        hard_cap=owner.quotas is not None and owner.quotas.hard_cap,
    )


async def usage(request: web.Request) -> web.Response:
    """What the caller's key and its tenant have spent, their caps and what remains."""
    principal = await api_principal(request)
    key, tenant = await request.app[app_state.SESSIONS].quotas.standings(principal)
    return respond(UsageReport(key=_standing_out(key), tenant=_standing_out(tenant)))


def principal_sees(principal: ApiPrincipal) -> Callable[[str | None], bool]:
    """Whether ``principal`` sees a tenant (``None``: no tenant's, a cross-tenant key)."""

    def sees(tenant_id: str | None) -> bool:
        # A cross-tenant key is no tenant's: only a cross-tenant admin sees it.
        return principal.cross_tenant or (
            tenant_id is not None and principal.sees_tenant(tenant_id)
        )

    return sees


async def _read_quotas(request: web.Request) -> Quotas | None:
    """The body: a caps object or ``null``.

    Raises:
        UnsupportedMediaError (415), PayloadTooLargeError (413), RequestTimeoutError (408),
        BadRequestError (``invalid_json``), ValidationFailedError (``invalid_quotas``,
        ``hard_cap_without_token_cap``, with field ``errors``).
    """
    require_content_type(request, "application/json")
    raw = await read_body(request, MAX_JSON_BYTES)
    try:
        data = strict_json_loads(raw)
    except (ValueError, RecursionError):
        raise BadRequestError("invalid_json", "the body is not valid JSON") from None
    if data is not None and not isinstance(data, dict):
        raise BadRequestError("invalid_json", "the body must be a JSON object or null")
    try:
        return Quotas.parse(raw)
    except QuotasError as exc:
        # Each code spelled out: the OpenAPI test finds the codes the broker raises by reading.
        if exc.code == HARD_CAP_ALONE:
            raise ValidationFailedError(
                "hard_cap_without_token_cap",
                "hard_cap ends calls at a token cap: set max_tokens_per_day or _per_month",
                errors=exc.errors,
            ) from None
        raise ValidationFailedError(
            "invalid_quotas", "the quotas are not valid", errors=exc.errors
        ) from None


async def put_key_quotas(request: web.Request) -> web.Response:
    """Replace one key's caps (``admin``; a tenant's admin: its tenant's keys only).

    Raises:
        NotFoundError: ``key_not_found``: no such key, or another tenant's (or a cross-tenant
            key, for a tenant's admin).
    """
    return await _put_quotas(request, "key", request.match_info["key_id"], "key_not_found")


async def put_tenant_quotas(request: web.Request) -> web.Response:
    """Replace one tenant's caps (``admin``; a tenant's admin: its own tenant only).

    Raises:
        NotFoundError: ``tenant_not_found``: no such tenant, or another than the caller's.
    """
    return await _put_quotas(request, "tenant", request.match_info["tenant_id"], "tenant_not_found")


async def _put_quotas(
    request: web.Request, scope: Literal["key", "tenant"], owner: str, not_found: str
) -> web.Response:
    principal = await api_principal(request)
    principal.require(Scope.ADMIN)
    quotas = await _read_quotas(request)
    if not await set_quotas(
        request.app[app_state.SESSIONMAKER],
        scope,
        owner,
        quotas,
        actor=Actor.key(principal.key_id),
        sees=principal_sees(principal),
    ):
        raise NotFoundError(not_found, f"no such {'API key' if scope == 'key' else 'tenant'}")
    return respond(QuotasSet(scope=scope, id=owner, quotas=quotas))
