"""Creating API keys (the key is shown once; only its hash is stored)."""

from __future__ import annotations

import secrets
from collections.abc import Iterable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.auth import ALL_SCOPES, hash_api_key, new_api_key
from broker.db.models import ApiKey


class UnknownScopeError(ValueError):
    pass


async def create_api_key(
    sessionmaker: async_sessionmaker[AsyncSession], name: str, scopes: Iterable[str]
) -> tuple[ApiKey, str]:
    """Store a new key; returns the row and the key itself (never retrievable again)."""
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
    return row, key
