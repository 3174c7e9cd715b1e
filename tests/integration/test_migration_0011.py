"""Migration 0011 (the audit trail's tables) on SQLite and PostgreSQL.

The migrated schema matches the models, the chain's head row is there from the start (no two
instances race to make it), and the revision downgrades and upgrades again with a working
chain afterwards.
"""

from __future__ import annotations

import asyncio

from alembic import command

from broker.audit.records import GENESIS_HASH, Actor, AuditEntry, AuditKind
from broker.audit.signing import AuditSigner, PublicKeys
from broker.audit.trail import AuditTrail, append
from broker.audit.verify import verify_records
from broker.db.engine import create_engine, make_sessionmaker
from broker.db.migrate import alembic_config, upgrade_database
from broker.db.queries import audit as audit_queries
from tests.support.migrations import execute, schema_diff


async def check_round_trip(url: str) -> None:
    """Invariant: the head row is made by the migration, and a chain written after a
    downgrade and upgrade starts at seq 1 from the genesis hash and verifies."""
    assert await execute(url, "SELECT id, seq, hash FROM audit_head") == [(1, 0, GENESIS_HASH)]
    await asyncio.to_thread(command.downgrade, alembic_config(url), "0010")
    tables = await execute(
        url,
        "SELECT table_name FROM information_schema.tables WHERE table_name LIKE 'audit%'"
        if url.startswith("postgresql")
        else "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'audit%'",
    )
    assert tables == []
    await asyncio.to_thread(upgrade_database, url)
    assert await schema_diff(url) == []
    engine = create_engine(url)
    try:
        sessionmaker = make_sessionmaker(engine)
        signer = AuditSigner.generate()
        trail = AuditTrail(sessionmaker, signer)
        await trail.start()
        await append(sessionmaker, AuditEntry(AuditKind.KEY_CREATED, Actor.key("admin"), {"n": 1}))
        assert await trail.chain_pending() == 2  # the key's publication, then the entry
        async with sessionmaker() as s:
            records = await audit_queries.audit_records(s, audit_queries.AuditFilter())
    finally:
        await engine.dispose()
    assert [r.seq for r in records] == [1, 2]
    assert records[0].prev_hash == GENESIS_HASH
    assert [r.kind for r in records] == ["audit.key_added", "key.created"]
    assert verify_records(records, PublicKeys([signer.public_key])).ok


async def test_the_schema_is_the_models_and_the_data_comes_through(migrated_url: str) -> None:
    assert await schema_diff(migrated_url) == []
    await check_round_trip(migrated_url)
