"""Queries over the audit trail's tables: the outbox, the chain, its head, its keys."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

from sqlalchemy import (
    ColumnElement,
    String,
    Table,
    and_,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)

from broker.audit.records import GENESIS_HASH, AuditEntry, ChainedRecord
from broker.db.dialect import conflict_insert, dialect_name
from broker.db.models import (
    ApiKey,
    AuditHead,
    AuditKey,
    AuditPending,
    AuditRecord,
    SessionRow,
    utcnow,
)
from broker.db.queries._common import Executor

AUDIT_PENDING: Final = cast(Table, AuditPending.__table__)
AUDIT_RECORDS: Final = cast(Table, AuditRecord.__table__)
HEAD_ID: Final = 1


async def add_audit_entries(s: Executor, entries: Sequence[AuditEntry]) -> None:
    """Queue entries in the caller's transaction: they are chained once it commits."""
    if entries:
        await s.execute(insert(AUDIT_PENDING), [entry.pending_row() for entry in entries])


async def any_audit_pending(s: Executor) -> bool:
    return (await s.execute(select(AUDIT_PENDING.c.id).limit(1))).first() is not None


async def count_audit_pending(s: Executor) -> int:
    return int((await s.execute(select(func.count()).select_from(AUDIT_PENDING))).scalar_one())


async def lock_audit_head(s: Executor) -> tuple[int, str]:
    """The head's ``(seq, hash)``, locked until the transaction ends (PostgreSQL).

    On SQLite the transaction's write lock serializes chainers (one process anyway).
    """
    dialect = dialect_name(s)
    statement = select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == HEAD_ID)
    row = (await s.execute(statement.with_for_update())).first()
    if row is None:
        # A database made without the migration's row: make it, then lock it.
        await s.execute(
            conflict_insert(AuditHead, dialect)
            .values(id=HEAD_ID, seq=0, hash=GENESIS_HASH)
            .on_conflict_do_nothing()
        )
        row = (await s.execute(statement.with_for_update())).one()
    return int(row.seq), str(row.hash)


async def pending_audit_entries(s: Executor, limit: int) -> Sequence[Any]:
    return (await s.execute(select(AUDIT_PENDING).order_by(AUDIT_PENDING.c.id).limit(limit))).all()


async def store_chained(
    s: Executor, records: Sequence[ChainedRecord], pending_ids: Sequence[int]
) -> None:
    """Insert the chained records, drop their outbox rows and move the head, in one go."""
    await s.execute(
        insert(AUDIT_RECORDS),
        [
            {
                "seq": r.seq,
                "at": r.at,
                "session_id": r.session_id,
                "kind": r.kind,
                "actor": r.actor,
                "tool": r.tool,
                "decision": r.decision,
                "body": r.body_text,
                "body_sha256": r.body_sha256,
                "prev_hash": r.prev_hash,
                "hash": r.hash,
                "key_id": r.key_id,
                "signature": r.signature,
            }
            for r in records
        ],
    )
    await s.execute(delete(AUDIT_PENDING).where(AUDIT_PENDING.c.id.in_(pending_ids)))
    last = records[-1]
    await s.execute(
        update(AuditHead).where(AuditHead.id == HEAD_ID).values(seq=last.seq, hash=last.hash)
    )


def chained_record(row: Any) -> ChainedRecord:
    return ChainedRecord.from_row(row)


@dataclass(frozen=True)
class AuditFilter:
    """What ``GET /api/v1/audit`` and ``broker audit export`` select (all optional, ANDed)."""

    session_id: str | None = None
    tool: str | None = None
    kinds: tuple[str, ...] = ()
    actor: str | None = None
    decision: str | None = None
    since: str | None = None
    """An ``at`` text (inclusive)."""
    until: str | None = None
    """An ``at`` text (exclusive)."""
    tenant_id: str | None = None
    """Only what a tenant's keys may read: its sessions' records, and the records with no
    session its own keys are the actor of (``key.*`` they made); ``None``: every record."""

    @property
    def empty(self) -> bool:
        return self == AuditFilter()


async def audit_records(
    s: Executor, where: AuditFilter, *, after_seq: int = 0, limit: int = 100
) -> list[ChainedRecord]:
    """Records matching ``where`` with ``seq > after_seq``, oldest first."""
    t = AUDIT_RECORDS
    statement = select(t).where(t.c.seq > after_seq)
    if where.session_id is not None:
        statement = statement.where(t.c.session_id == where.session_id)
    if where.tool is not None:
        statement = statement.where(t.c.tool == where.tool)
    if where.kinds:
        statement = statement.where(t.c.kind.in_(where.kinds))
    if where.actor is not None:
        statement = statement.where(t.c.actor == where.actor)
    if where.decision is not None:
        statement = statement.where(t.c.decision == where.decision)
    if where.since is not None:
        statement = statement.where(t.c.at >= where.since)
    if where.until is not None:
        statement = statement.where(t.c.at < where.until)
    if where.tenant_id is not None:
        statement = statement.where(_of_tenant(where.tenant_id))
    rows = (await s.execute(statement.order_by(t.c.seq).limit(limit))).all()
    return [chained_record(row) for row in rows]


def _of_tenant(tenant_id: str) -> ColumnElement[bool]:
    t = AUDIT_RECORDS
    sessions = select(SessionRow.id).where(SessionRow.tenant_id == tenant_id)
    # An actor is "key:<id>" (Actor.key); `+` on strings is SQL's `||` on both databases.
    keys = select(literal("key:", String) + ApiKey.id).where(ApiKey.tenant_id == tenant_id)
    return or_(t.c.session_id.in_(sessions), and_(t.c.session_id.is_(None), t.c.actor.in_(keys)))


async def audit_head(s: Executor) -> ChainedRecord | None:
    """The newest chained record."""
    t = AUDIT_RECORDS
    row = (await s.execute(select(t).order_by(t.c.seq.desc()).limit(1))).first()
    return None if row is None else chained_record(row)


async def count_audit_records(s: Executor) -> int:
    return int((await s.execute(select(func.count()).select_from(AUDIT_RECORDS))).scalar_one())


async def add_audit_key(s: Executor, key_id: str, public_pem: str) -> bool:
    """Publish a public key (if new); whether this added it."""
    result = await s.execute(
        conflict_insert(AuditKey, dialect_name(s))
        .values(key_id=key_id, public_key=public_pem, added_at=utcnow())
        .on_conflict_do_nothing()
    )
    return bool(getattr(result, "rowcount", 0))


async def audit_keys(s: Executor) -> Sequence[Any]:
    return (
        await s.execute(
            select(AuditKey.key_id, AuditKey.public_key, AuditKey.added_at).order_by(
                AuditKey.added_at, AuditKey.key_id
            )
        )
    ).all()


async def erase_audit_bodies(s: Executor, session_id: str, through_seq: int) -> int:
    """Erase the bodies of a session's records up to ``through_seq``; how many were erased."""
    t = AUDIT_RECORDS
    result = await s.execute(
        update(t)
        .where(t.c.session_id == session_id, t.c.seq <= through_seq, t.c.body.is_not(None))
        .values(body=None, erased_at=utcnow())
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def last_session_seq(s: Executor, session_id: str) -> int | None:
    t = AUDIT_RECORDS
    found = (
        await s.execute(select(func.max(t.c.seq)).where(t.c.session_id == session_id))
    ).scalar_one()
    return None if found is None else int(found)
