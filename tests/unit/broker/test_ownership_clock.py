"""A lease's clock: past it, an instance among others lets the call go; a lone SQLite one keeps
it (nobody else could take it over) and says it is late."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.call.ownership import CallOwnership
from broker.db.engine import create_engine, make_sessionmaker

TTL_S = 3.0


@pytest.fixture
async def sessionmaker(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'broker.db'}")
    try:
        yield make_sessionmaker(engine)
    finally:
        await engine.dispose()


def ownership(
    sessionmaker: async_sessionmaker[AsyncSession], *, single_process: bool
) -> CallOwnership:
    return CallOwnership(
        sessionmaker,
        instance_id="test-instance",
        ttl_s=TTL_S,
        single_process=single_process,
        shared_signing_key=True,
        key_fingerprint="fp",
        version="0",
    )


def held_since_long_ago(owner: CallOwnership, session_id: str) -> None:
    """A lease granted two TTLs ago and never renewed (a stalled loop, a slow disk)."""
    owner.hold(session_id, token=1, since=time.monotonic() - 2 * TTL_S)


async def test_among_instances_a_lease_past_its_clock_lets_the_call_go(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    owner = ownership(sessionmaker, single_process=False)
    held_since_long_ago(owner, "sess_a")
    assert not owner.may_act("sess_a")
    owner._expire_by_clock()
    assert not owner.owns("sess_a")


async def test_alone_on_sqlite_a_late_renewal_keeps_the_call_and_warns_once(
    sessionmaker: async_sessionmaker[AsyncSession], caplog: pytest.LogCaptureFixture
) -> None:
    owner = ownership(sessionmaker, single_process=True)
    held_since_long_ago(owner, "sess_a")
    held_since_long_ago(owner, "sess_b")
    with caplog.at_level(logging.WARNING, logger="broker.call.ownership"):
        owner._expire_by_clock()
        owner._expire_by_clock()
    assert owner.owns("sess_a") and owner.owns("sess_b")
    assert owner.may_act("sess_a") and owner.may_act("sess_b")
    late = [r.getMessage() for r in caplog.records if "renewal late" in r.getMessage()]
    assert late == [
        "lease renewal late for 2 call(s) (the event loop or the database is slow); on SQLite"
        " no other instance can take them, so they are kept"
    ]
    assert not owner.may_act("sess_unknown")
