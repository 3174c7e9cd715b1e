"""The locks that make a count-based cap exact: one owner's cap-spending writes in turn.

A key's or a tenant's cap is counted, then the write that spends it is made; two requests
for one owner must not both count before either writes (:mod:`broker.auth.quotas`).

- PostgreSQL (several instances): :func:`lock_owner` takes a transaction-scoped advisory
  lock, released when the transaction ends.
- SQLite (one process): :class:`OwnerLocks`, an ``asyncio.Lock`` per owner, held around
  the transaction.

Owners are named ``key:<id>`` / ``tenant:<id>`` and always taken in one order (the key's
first): every holder takes at most one of each, so two never wait on each other crosswise.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Sequence
from typing import Final

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

_NAMESPACE: Final = "broker.quota:"
"""Keeps the lock's hash apart from any other advisory lock on the database."""


async def lock_owner(s: AsyncSession, owner: str) -> None:
    """Hold ``owner``'s advisory lock until ``s``'s transaction ends (PostgreSQL only).

    ``hashtextextended``: a 64-bit hash of the name, the lock's key.
    """
    key = func.hashtextextended(_NAMESPACE + owner, 0)
    await s.execute(select(func.pg_advisory_xact_lock(key)))


class OwnerLocks:
    """In-process locks per owner (SQLite); an owner's goes once nobody holds or waits on it."""

    def __init__(self) -> None:
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    @contextlib.asynccontextmanager
    async def held(self, owners: Sequence[str]) -> AsyncIterator[None]:
        """Hold each of ``owners``' locks, taken in the order given."""
        async with contextlib.AsyncExitStack() as stack:
            for owner in owners:
                lock = self._locks.get(owner)
                if lock is None:
                    lock = self._locks[owner] = asyncio.Lock()
                await stack.enter_async_context(lock)
            yield
