"""Managing API keys: create (the key is shown once; only its hash is stored), list, revoke.

Shared by the ``broker keys`` CLI and the admin HTTP endpoints, so both behave the same.
Creating and revoking are audited (``key.created``, ``key.revoked``) in the transaction that
writes the key, by the caller's ``actor``: the creating key over HTTP, :data:`CLI` on the
command line. The record names the key and its scopes, never the key or its hash.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable, Sequence
from typing import Final

from sqlalchemy import null, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.audit import trail as audit
from broker.audit.records import Actor, AuditEntry, AuditKind
from broker.auth.principals import ALL_SCOPES, hash_api_key, new_api_key
from broker.db.models import DEFAULT_TENANT, ApiKey, utcnow

logger = logging.getLogger(__name__)

CLI: Final = Actor.CLI
"""The actor of a key made or revoked with ``broker keys`` (whoever holds the database)."""


class UnknownScopeError(ValueError):
    pass


def _key_record(kind: AuditKind, row: ApiKey, actor: str) -> AuditEntry:
    return AuditEntry(kind, actor, {"key_id": row.id, "name": row.name, "scopes": list(row.scopes)})


async def create_api_key(
    sessionmaker: async_sessionmaker[AsyncSession],
    name: str,
    scopes: Iterable[str],
    *,
    actor: str,
    tenant_id: str | None = DEFAULT_TENANT,
) -> tuple[ApiKey, str]:
    """Store a new key; returns the row and the key itself (never retrievable again).

    ``actor``: who creates it, for the audit record (no default: a caller that forgot it
    would be recorded as someone else; ``broker serve --dev``'s keys are the broker's).

    ``tenant_id``: its tenant, which the caller checked exists (:mod:`broker.auth.tenants`);
    ``None``: a cross-tenant key.

    Raises:
        UnknownScopeError: a scope is not one of :data:`broker.auth.principals.ALL_SCOPES`.
    """
    scope_list = sorted(set(scopes))
    unknown = [s for s in scope_list if s not in ALL_SCOPES]
    if unknown:
        raise UnknownScopeError(f"unknown scope(s): {', '.join(unknown)}")
    key = new_api_key()
    row = ApiKey(
        id="key_" + secrets.token_hex(8), name=name, key_hash=hash_api_key(key), scopes=scope_list
    )
    async with sessionmaker.begin() as s:
        # NULL spelled out: the ORM would take None for "unset" and write the default tenant.
        row.tenant_id = tenant_id if tenant_id is not None else null()
        s.add(row)
        if tenant_id is None:
            # The NULL it wrote, read back (the attribute expired holding the expression).
            await s.flush()
            await s.refresh(row, ["tenant_id"])
        await audit.add(s, _key_record(AuditKind.KEY_CREATED, row, actor))
    logger.info("api key created key_id=%s scopes=%s", row.id, ",".join(scope_list))
    return row, key


async def list_api_keys(
    sessionmaker: async_sessionmaker[AsyncSession], tenant_id: str | None = None
) -> Sequence[ApiKey]:
    """Every stored key, oldest first, revoked ones included (callers never show the hash).

    Only ``tenant_id``'s when given (``None``: every tenant's, cross-tenant keys included).
    """
    query = select(ApiKey)
    if tenant_id is not None:
        query = query.where(ApiKey.tenant_id == tenant_id)
    async with sessionmaker() as s:
        result = await s.scalars(query.order_by(ApiKey.created_at, ApiKey.id))
        return result.all()


async def revoke_api_key(
    sessionmaker: async_sessionmaker[AsyncSession],
    key_id: str,
    *,
    actor: str,
    tenant_id: str | None = None,
) -> ApiKey | None:
    """Revoke a key; the next request with it is refused. ``None`` if no such key.

    With ``tenant_id``, another tenant's key is as if it did not exist (``None``).

    Idempotent: revoking a revoked key keeps its first ``revoked_at`` (and is audited once,
    when it changed something). ``actor``: as for :func:`create_api_key`.
    """
    async with sessionmaker.begin() as s:
        row = await s.get(ApiKey, key_id, with_for_update=True)
        if row is not None and tenant_id is not None and row.tenant_id != tenant_id:
            return None
        if row is not None and row.revoked_at is None:
            row.revoked_at = utcnow()
            await audit.add(s, _key_record(AuditKind.KEY_REVOKED, row, actor))
            logger.info("api key revoked key_id=%s", key_id)
    return row
