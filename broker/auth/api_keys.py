"""Managing API keys: create (the key is shown once; only its hash is stored), list, revoke.

Also changing the tools a key may put in a session's allowlist (:func:`set_tool_grants`).

Shared by the ``broker keys`` CLI and the admin HTTP endpoints, so both behave the same.
Creating, revoking and changing grants are audited (``key.created``, ``key.revoked``,
``key.grants_changed``) in the transaction that writes the key, by the caller's ``actor``: the
creating key over HTTP, :data:`CLI` on the command line. The record names the key, its scopes
and its tool grants, never the key or its hash.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Collection, Iterable, Sequence
from typing import Final

from sqlalchemy import null, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.audit import trail as audit
from broker.audit.records import Actor, AuditEntry, AuditKind
from broker.auth.principals import ALL_SCOPES, hash_api_key, new_api_key
from broker.db.models import ALL_TOOLS, DEFAULT_TENANT, ApiKey, utcnow

logger = logging.getLogger(__name__)

CLI: Final = Actor.CLI
"""The actor of a key made or revoked with ``broker keys`` (whoever holds the database)."""


class UnknownScopeError(ValueError):
    pass


class UnknownToolError(ValueError):
    """A tool grant names a tool the registry does not have."""

    def __init__(self, tools: Sequence[str]) -> None:
        super().__init__(f"unknown tool(s): {', '.join(tools)}")
        self.tools = list(tools)


def tool_grant_list(tools: Iterable[str], known: Collection[str] | None = None) -> list[str]:
    """``tools`` as stored: sorted, once each; :data:`ALL_TOOLS` alone when it is among them.

    Args:
        tools: tool names, or :data:`ALL_TOOLS` for any tool.
        known: the registry's tool names; ``None``: not checked (the caller has no registry).

    Raises:
        UnknownToolError: a name is neither :data:`ALL_TOOLS` nor in ``known``.
    """
    grants = sorted(set(tools))
    if ALL_TOOLS in grants:
        # "Any tool" covers the names beside it; they would only be noise in the record.
        return [ALL_TOOLS]
    if known is not None:
        unknown = [t for t in grants if t not in known]
        if unknown:
            raise UnknownToolError(unknown)
    return grants


def _key_record(kind: AuditKind, row: ApiKey, actor: str) -> AuditEntry:
    body: dict[str, object] = {"key_id": row.id, "name": row.name, "scopes": list(row.scopes)}
    if kind is AuditKind.KEY_CREATED:
        body["tools"] = list(row.tool_grants)
    return AuditEntry(kind, actor, body)


async def create_api_key(
    sessionmaker: async_sessionmaker[AsyncSession],
    name: str,
    scopes: Iterable[str],
    *,
    actor: str,
    tool_grants: Iterable[str] = (),
    tenant_id: str | None = DEFAULT_TENANT,
) -> tuple[ApiKey, str]:
    """Store a new key; returns the row and the key itself (never retrievable again).

    ``actor``: who creates it, for the audit record (no default: a caller that forgot it
    would be recorded as someone else; ``broker serve --dev``'s keys are the broker's).
    ``tool_grants``: the tools it may put in a session's allowlist (:data:`ALL_TOOLS`: any;
    by default none). Names are not checked here: see :func:`tool_grant_list`.

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
    row.tool_grants = tool_grant_list(tool_grants)
    async with sessionmaker.begin() as s:
        # NULL spelled out: the ORM would take None for "unset" and write the default tenant.
        row.tenant_id = tenant_id if tenant_id is not None else null()
        s.add(row)
        if tenant_id is None:
            # The NULL it wrote, read back (the attribute expired holding the expression).
            await s.flush()
            await s.refresh(row, ["tenant_id"])
        await audit.add(s, _key_record(AuditKind.KEY_CREATED, row, actor))
    logger.info(
        "api key created key_id=%s scopes=%s tools=%s",
        row.id,
        ",".join(scope_list),
        ",".join(row.tool_grants),
    )
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


async def set_tool_grants(
    sessionmaker: async_sessionmaker[AsyncSession],
    key_id: str,
    tool_grants: Iterable[str],
    *,
    actor: str,
    tenant_id: str | None = None,
) -> tuple[ApiKey, list[str]] | None:
    """Replace a key's tool grants; returns the row and its grants before (``None``: no key).

    ``None`` too, with ``tenant_id``, for another tenant's key (as :func:`revoke_api_key`).

    Sessions already made keep their tools: grants are checked when a session is created.
    Audited as ``key.grants_changed`` ``{key_id, before, after}`` when it changed something.
    ``actor``: as for :func:`create_api_key`. Names are not checked here (see
    :func:`tool_grant_list`).
    """
    after = tool_grant_list(tool_grants)
    async with sessionmaker.begin() as s:
        row = await s.get(ApiKey, key_id, with_for_update=True)
        if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
            return None
        before = list(row.tool_grants)
        if before != after:
            row.tool_grants = after
            await audit.add(
                s,
                AuditEntry(
                    AuditKind.KEY_GRANTS_CHANGED,
                    actor,
                    {"key_id": row.id, "before": before, "after": after},
                ),
            )
            logger.info(
                "api key grants changed key_id=%s before=%s after=%s",
                key_id,
                ",".join(before),
                ",".join(after),
            )
    return row, before
