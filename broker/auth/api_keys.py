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

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.audit import trail as audit
from broker.audit.records import Actor, AuditEntry, AuditKind
from broker.auth.principals import ALL_SCOPES, hash_api_key, new_api_key
from broker.db.models import ApiKey, utcnow

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
) -> tuple[ApiKey, str]:
    """Store a new key; returns the row and the key itself (never retrievable again).

    ``actor``: who creates it, for the audit record (no default: a caller that forgot it
    would be recorded as someone else; ``broker serve --dev``'s keys are the broker's).

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
        s.add(row)
        await audit.add(s, _key_record(AuditKind.KEY_CREATED, row, actor))
    logger.info("api key created key_id=%s scopes=%s", row.id, ",".join(scope_list))
    return row, key


async def list_api_keys(sessionmaker: async_sessionmaker[AsyncSession]) -> Sequence[ApiKey]:
    """Every stored key, oldest first, revoked ones included (callers never show the hash)."""
    async with sessionmaker() as s:
        result = await s.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id))
        return result.all()


async def revoke_api_key(
    sessionmaker: async_sessionmaker[AsyncSession], key_id: str, *, actor: str
) -> ApiKey | None:
    """Revoke a key; the next request with it is refused. ``None`` if no such key.

    Idempotent: revoking a revoked key keeps its first ``revoked_at`` (and is audited once,
    when it changed something). ``actor``: as for :func:`create_api_key`.
    """
    async with sessionmaker.begin() as s:
        row = await s.get(ApiKey, key_id, with_for_update=True)
        if row is not None and row.revoked_at is None:
            row.revoked_at = utcnow()
            await audit.add(s, _key_record(AuditKind.KEY_REVOKED, row, actor))
            logger.info("api key revoked key_id=%s", key_id)
    return row
