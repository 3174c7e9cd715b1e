"""Tenants: the teams sharing one broker, and which tenant a new key or session belongs to.

Shared by the ``broker tenants`` CLI and ``/api/v1/tenants``. A tenant is made once (audited
as ``tenant.created``) and never renamed or removed here: its id is written into every key
and session row it owns. The default tenant (:data:`DEFAULT_TENANT`) exists from migration
0012 on, for single-team use.

Who sees what (enforced by the handlers, decided here): a tenant-bound key sees and acts on
its own tenant's sessions and keys only, and another tenant's are not found (404, no
oracle); a cross-tenant principal (the ``BROKER_ADMIN_KEY``, or a key made with tenant
``"*"``) sees every tenant and is the only one that may make tenants or cross-tenant keys.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Final

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.audit import trail as audit
from broker.audit.records import AuditEntry, AuditKind
from broker.auth.principals import ApiPrincipal
from broker.db.models import DEFAULT_TENANT, Tenant
from broker.errors import ConflictError, ForbiddenError, ValidationFailedError

logger = logging.getLogger(__name__)

CROSS_TENANT: Final = "*"
"""The ``tenant`` a cross-tenant principal names to make a key of every tenant (the column's
``NULL``): never the default, always explicit."""
TENANT_ID: Final = re.compile(r"[a-z0-9_-]{1,40}")
"""A tenant's id: a slug, as wide as the ``tenant_id`` columns."""


def require_cross_tenant(principal: ApiPrincipal, what: str) -> None:
    """Refuse a tenant-bound key what concerns every tenant (403, the route itself is public).

    Raises:
        ForbiddenError: ``cross_tenant_required``.
    """
    if not principal.cross_tenant:
        raise ForbiddenError(
            "cross_tenant_required", f"{what} needs a cross-tenant key (admin key or tenant '*')"
        )


async def require_every_tenants_admin(
    sessionmaker: async_sessionmaker[AsyncSession], principal: ApiPrincipal, what: str
) -> None:
    """Refuse a tenant's key what acts on every tenant's calls (the tool kill switch).

    Unless its tenant is the only one: a single-team broker's admin keys keep the switch.

    Raises:
        ForbiddenError: ``cross_tenant_required``: another tenant exists.
    """
    if principal.cross_tenant:
        return
    async with sessionmaker() as s:
        others = await s.scalar(select(Tenant.id).where(Tenant.id != principal.tenant_id).limit(1))
    if others is not None:
        require_cross_tenant(principal, what)


async def tenant_exists(s: AsyncSession, tenant_id: str) -> bool:
    return await s.get(Tenant, tenant_id) is not None


async def create_tenant(
    sessionmaker: async_sessionmaker[AsyncSession], tenant_id: str, name: str, *, actor: str
) -> Tenant:
    """Store a new tenant, audited as ``tenant.created`` by ``actor``.

    Raises:
        ValidationFailedError: ``invalid_tenant_id`` (not a slug of 1-40 ``[a-z0-9_-]``).
        ConflictError: ``tenant_exists``.
    """
    if not TENANT_ID.fullmatch(tenant_id):
        raise ValidationFailedError(
            "invalid_tenant_id", "a tenant id is 1 to 40 characters of a-z, 0-9, '_' and '-'"
        )
    row = Tenant(id=tenant_id, name=name)
    try:
        async with sessionmaker.begin() as s:
            if await tenant_exists(s, tenant_id):
                raise ConflictError("tenant_exists", "a tenant with this id exists")
            s.add(row)
            await s.flush()
            await audit.add(
                s, AuditEntry(AuditKind.TENANT_CREATED, actor, {"tenant": row.id, "name": name})
            )
    except IntegrityError:
        # Two creators raced past the look-up: the second insert is the one refused.
        raise ConflictError("tenant_exists", "a tenant with this id exists") from None
    logger.info("tenant created tenant=%s", row.id)
    return row


async def list_tenants(sessionmaker: async_sessionmaker[AsyncSession]) -> Sequence[Tenant]:
    """Every tenant, oldest first."""
    async with sessionmaker() as s:
        return (await s.scalars(select(Tenant).order_by(Tenant.created_at, Tenant.id))).all()


async def tenant_for_new_key(
    sessionmaker: async_sessionmaker[AsyncSession],
    creator: ApiPrincipal,
    requested: str | None,
) -> str | None:
    """The tenant of a key ``creator`` makes (``None``: a cross-tenant key).

    Unasked, a key is its creator's tenant's (the default tenant's for a cross-tenant
    creator: a cross-tenant key is only ever made by naming ``"*"``). A tenant-bound creator
    may name only its own tenant.

    Raises:
        ForbiddenError: ``cross_tenant_required``: a tenant-bound creator named another tenant
            or ``"*"``.
        ValidationFailedError: ``unknown_tenant``.
    """
    if requested is None:
        return creator.tenant_id if creator.tenant_id is not None else DEFAULT_TENANT
    if not creator.cross_tenant and requested != creator.tenant_id:
        # 403, not 404: the caller named the tenant, no session's existence is at stake.
        raise ForbiddenError(
            "cross_tenant_required", "a tenant's key makes keys of its own tenant only"
        )
    if requested == CROSS_TENANT:
        return None
    await require_known_tenant(sessionmaker, requested)
    return requested


async def tenant_for_new_session(
    sessionmaker: async_sessionmaker[AsyncSession],
    creator: ApiPrincipal,
    requested: str | None,
) -> str:
    """The tenant of a session ``creator`` makes.

    A tenant's key's own, always; a cross-tenant key's ``requested`` one, or the default.

    Raises:
        ForbiddenError: ``cross_tenant_required``: a tenant-bound key named another tenant.
        ValidationFailedError: ``unknown_tenant``.
    """
    if creator.tenant_id is not None:
        if requested is not None and requested != creator.tenant_id:
            raise ForbiddenError(
                "cross_tenant_required", "a tenant's key makes sessions of its own tenant only"
            )
        return creator.tenant_id
    if requested is None or requested == DEFAULT_TENANT:
        return DEFAULT_TENANT
    await require_known_tenant(sessionmaker, requested)
    return requested


async def require_known_tenant(
    sessionmaker: async_sessionmaker[AsyncSession], tenant_id: str
) -> None:
    """Raises ValidationFailedError ``unknown_tenant`` unless the tenant exists."""
    async with sessionmaker() as s:
        known = TENANT_ID.fullmatch(tenant_id) is not None and await tenant_exists(s, tenant_id)
    if not known:
        # The id is not echoed: a mistyped secret pasted in the wrong field stays out of it.
        raise ValidationFailedError("unknown_tenant", "no tenant with this id")
