"""The audit trail: records written with their actions, chained and signed in batches.

**Design: an outbox and a sequence with batched signing.** A record is written in the
transaction of the action it records (:func:`add`: one ``INSERT`` into ``audit_pending``,
no lock), so an action and its record commit together or not at all. One chainer per
broker instance (:class:`AuditTrail`) then takes what is pending, in one transaction: it
locks the chain's head row (``audit_head``, ``SELECT … FOR UPDATE`` on PostgreSQL), gives
each record the next ``seq``, links and signs it, inserts the records, deletes their outbox
rows and moves the head. Instances sharing a database take turns on the head's lock; a
chainer that waited finds the outbox already emptied by the other (READ COMMITTED reads
after the lock), so there is one chain: no gap (``seq`` comes from the locked head), no fork
(``seq`` is the primary key). The serialization point is one short transaction per batch,
not one per record: a batch of a thousand costs one lock, one commit and a thousand
Ed25519 signatures (some 60 µs each) — ``make bench`` records the rate.

**Checkpoints.** A chain cannot show that its newest records were cut off, so the head is
published outside the database: appended to ``BROKER_AUDIT_CHECKPOINT_FILE`` every
``BROKER_AUDIT_CHECKPOINT_INTERVAL_S`` when it moved, carried in every ``session.ended``
webhook, and served at ``GET /api/v1/audit/head``. ``broker audit verify --expect-head``
checks a log against one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Final

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.audit.records import (
    Actor,
    AuditEntry,
    AuditKind,
    ChainedRecord,
    at_text,
)
from broker.audit.signing import AuditSigner
from broker.audit.verify import Checkpoint, checkpoint_of
from broker.db.queries import audit as audit_queries
from broker.db.queries._common import Executor
from broker.db.shielded import finish_step
from broker.db.write_gate import WriteGate

__all__ = ["AuditTrail", "add", "append"]

logger = logging.getLogger(__name__)

BATCH: Final = 1000
POLL_S: Final = 0.2
"""How often a chainer looks for pending records (a cheap ``SELECT … LIMIT 1``)."""
RETRY_S: Final = 1.0


async def add(s: Executor, *entries: AuditEntry) -> None:
    """Record ``entries`` in the caller's transaction (chained once it commits)."""
    await audit_queries.add_audit_entries(s, entries)


async def append(sessionmaker: async_sessionmaker[AsyncSession], *entries: AuditEntry) -> None:
    """Record ``entries`` in a transaction of their own (committed when this returns)."""
    async with WriteGate.of(sessionmaker).turn(urgent=True), sessionmaker.begin() as s:
        await audit_queries.add_audit_entries(s, entries)


def chain(signer: AuditSigner, head: tuple[int, str], rows: Sequence[Any]) -> list[ChainedRecord]:
    """Link and sign outbox rows after ``head`` (``(seq, hash)``)."""
    seq, prev = head
    records: list[ChainedRecord] = []
    for offset, row in enumerate(rows, start=1):
        record = ChainedRecord.from_row(row, seq + offset).signed(prev, signer.key_id, signer.sign)
        records.append(record)
        prev = record.hash
    return records


class AuditTrail:
    """This instance's chainer, its signing key and its checkpoint publisher.

    Args:
        checkpoint_file: where the head is appended (JSON lines); ``None``: not published
            to a file.
        checkpoint_interval_s: how often, at most, the head is published there.
    """

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        signer: AuditSigner,
        *,
        checkpoint_file: Path | None = None,
        checkpoint_interval_s: float = 60.0,
        poll_s: float = POLL_S,
        batch: int = BATCH,
    ) -> None:
        self._sessionmaker = sessionmaker
        self.signer = signer
        self._checkpoint_file = checkpoint_file
        self._checkpoint_interval_s = checkpoint_interval_s
        self._poll_s = poll_s
        self._batch = batch
        self._lock = asyncio.Lock()
        self._published_seq = 0
        self._published_at = 0.0
        self.chained = 0
        """Records this instance chained (for metrics and the benchmark)."""
        self.pending = 0
        """Records left in the outbox after this instance's last batch (for a metric)."""

    async def start(self) -> None:
        """Publish this instance's public key (a new key is itself an audit record)."""
        async with self._sessionmaker.begin() as s:
            added = await audit_queries.add_audit_key(s, self.signer.key_id, self.signer.public_pem)
            if added:
                await add(
                    s,
                    AuditEntry(
                        AuditKind.AUDIT_KEY_ADDED,
                        Actor.BROKER,
                        {"key_id": self.signer.key_id, "public_key": self.signer.public_pem},
                    ),
                )
        if added:
            logger.info("audit signing key published key_id=%s", self.signer.key_id)

    async def run(self) -> None:
        """Chain what is pending, forever; publish checkpoints as the head moves."""
        while True:
            try:
                # Cancelled at shutdown, a batch under way still commits (close() chains the
                # rest): cut mid-statement, it would hold SQLite's write lock.
                chained = await finish_step(self.chain_pending())
            except SQLAlchemyError as exc:
                logger.warning("audit chaining failed, retrying error=%s", type(exc).__name__)
                await asyncio.sleep(RETRY_S)
                continue
            try:
                await self.publish_checkpoint()
            except (OSError, SQLAlchemyError) as exc:
                logger.warning("audit checkpoint not published error=%s", exc)
            if not chained:
                await asyncio.sleep(self._poll_s)

    async def chain_pending(self) -> int:
        """Chain every pending record (in batches); how many this call chained."""
        total = 0
        async with self._lock:
            while True:
                count = await self._chain_batch()
                total += count
                if count < self._batch:
                    return total

    async def _chain_batch(self) -> int:
        async with self._sessionmaker() as s:
            if not await audit_queries.any_audit_pending(s):
                self.pending = 0
                return 0
        async with (
            WriteGate.of(self._sessionmaker).turn(urgent=False),
            self._sessionmaker.begin() as s,
        ):
            head = await audit_queries.lock_audit_head(s)
            rows = await audit_queries.pending_audit_entries(s, self._batch)
            if not rows:
                self.pending = 0
                return 0
            records = chain(self.signer, head, rows)
            await audit_queries.store_chained(s, records, [row.id for row in rows])
        self.chained += len(records)
        # A short batch emptied the outbox as it stood. A full one may have left more: that is
        # counted, outside the head's lock (an idle poll stays one `SELECT … LIMIT 1`).
        self.pending = 0
        if len(records) == self._batch:
            async with self._sessionmaker() as s:
                self.pending = await audit_queries.count_audit_pending(s)
        return len(records)

    async def head(self) -> Checkpoint | None:
        """The chain's head as a checkpoint (``None``: nothing chained yet)."""
        async with self._sessionmaker() as s:
            record = await audit_queries.audit_head(s)
        return None if record is None else checkpoint_of(record, at_text())

    async def current_head(self) -> Checkpoint | None:
        """The head once every pending record is chained.

        What an action that already returned is under: the API's head and the
        ``session.ended`` webhook publish it.
        """
        await self.chain_pending()
        return await self.head()

    async def publish_checkpoint(self, *, force: bool = False) -> Checkpoint | None:
        """Append the head to the checkpoint file if it moved and the interval passed."""
        if self._checkpoint_file is None:
            return None
        now = time.monotonic()
        if not force and now - self._published_at < self._checkpoint_interval_s:
            return None
        checkpoint = await self.head()
        self._published_at = now
        if checkpoint is None or checkpoint.seq == self._published_seq:
            return None
        line = json.dumps(checkpoint.to_json(), separators=(",", ":")) + "\n"
        await asyncio.to_thread(_append_line, self._checkpoint_file, line)
        self._published_seq = checkpoint.seq
        return checkpoint

    async def erase_session(self, session_id: str, reason: str, actor: str) -> int:
        """Erase a session's record bodies; the chain keeps their hashes.

        The erasure is itself recorded (``audit.erased``, naming the session and the last
        ``seq`` erased), so a verifier tells an announced erasure from a body removed in
        secret. Returns how many bodies were erased.
        """
        async with (
            self._lock,
            WriteGate.of(self._sessionmaker).turn(urgent=False),
            self._sessionmaker.begin() as s,
        ):
            # One transaction under the head's lock: the session's pending records are
            # chained first (so all of them are erased), and the erasure's own record is
            # chained with the erasure, so no reader ever sees a body gone unannounced.
            head = await audit_queries.lock_audit_head(s)
            while True:
                rows = await audit_queries.pending_audit_entries(s, self._batch)
                if rows:
                    records = chain(self.signer, head, rows)
                    await audit_queries.store_chained(s, records, [row.id for row in rows])
                    head = (records[-1].seq, records[-1].hash)
                    self.chained += len(records)
                if len(rows) < self._batch:
                    break
            through = await audit_queries.last_session_seq(s, session_id)
            if through is None:
                return 0
            erased = await audit_queries.erase_audit_bodies(s, session_id, through)
            announcement = AuditEntry(
                AuditKind.AUDIT_ERASED,
                actor,
                {
                    "session_id": session_id,
                    "through_seq": through,
                    "count": erased,
                    "reason": reason[:200],
                },
                session_id=session_id,
            )
            records = chain(self.signer, head, [SimpleNamespace(**announcement.pending_row())])
            await audit_queries.store_chained(s, records, [])
            self.chained += 1
        logger.info(
            "audit bodies erased session_id=%s count=%d through_seq=%d",
            session_id,
            erased,
            through,
        )
        return erased

    async def close(self) -> None:
        """Chain what is left and publish the final head (best effort)."""
        with contextlib.suppress(SQLAlchemyError, OSError):
            await self.chain_pending()
            await self.publish_checkpoint(force=True)


def _append_line(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
