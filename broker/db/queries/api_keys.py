"""Queries over ``api_keys``."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from broker.db.models import ApiKey


async def get_api_key_by_hash(s: AsyncSession, key_hash: str) -> ApiKey | None:
    return await s.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash))
