"""The ``audit_chain`` workload of benchmark 4: signed audit records, appended and chained.

What an action's audit record costs (:mod:`broker.audit.trail`), from the outbox to a
signed, linked row, with the broker's own code on the benchmark's scratch database:

* ``end_to_end``: ``writers`` tasks each append entries through
  :func:`broker.audit.trail.append` (one transaction per entry, as an action's own write)
  while one :class:`~broker.audit.trail.AuditTrail` chainer runs as the broker runs it (its
  default poll and batch). Chained records per second from the first append until the last
  entry is chained and signed.
* ``end_to_end_two_chainers`` (PostgreSQL): the same with two chainers, each on its own
  engine with its own key, as two instances on one database take turns on the head's lock.
* ``chainer_alone``: the outbox pre-filled, then one ``chain_pending()``: the chain rate
  (linking, hashing, signing, inserting, in batches of 1000), with nothing else running.
* ``in_memory`` and ``sign``: :func:`broker.audit.trail.chain` on rows held in memory
  (canonical JSON, SHA-256, Ed25519; no database), and raw ``Ed25519PrivateKey.sign`` of
  32 bytes: the floor, so the other rates read as a ratio of it.

Every loop stops at its count or at ``max_seconds`` (the rate is then over what it did).
The run checks its chain: ``seq`` 1..N with nothing pending, or it raises.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from broker.audit.records import GENESIS_HASH, Actor, AuditEntry, AuditKind
from broker.audit.signing import AuditSigner
from broker.audit.trail import AuditTrail, add, append, chain
from broker.db.engine import create_engine, make_sessionmaker
from broker.db.models import AuditHead, AuditPending, AuditRecord
from broker.db.write_gate import WriteGate

PREFILL_TRANSACTION: Final = 1000
"""Entries per transaction when pre-filling the outbox (its speed is not measured)."""
SETTLE_POLL_S: Final = 0.005


@dataclass(frozen=True)
class ChainOptions:
    writers: int
    entries: int
    """Appended by the writers (end to end), and again pre-filled for the chainer alone."""
    signatures: int
    max_seconds: float


def _entry(n: int) -> AuditEntry:
    """A typical ``tool.requested`` record (its size, its fields)."""
    call_id = f"call_{n:012d}"
    return AuditEntry(
        AuditKind.TOOL_REQUESTED,
        Actor.SIDEBAND,
        {
            "call_id": call_id,
            "tool": "noop",
            "path": "sideband",
            "arguments": {"order_id": str(n), "note": "bench"},
            "response_id": "resp_bench",
            "item_id": f"item_{call_id}",
        },
        session_id=f"sess_bench_{n % 64:024d}",
        tool="noop",
    )


class _Instance:
    """One broker instance's view: its engine, sessionmaker (with the app's write gate)."""

    def __init__(self, url: str) -> None:
        self.engine: AsyncEngine = create_engine(url)
        self.sessionmaker: async_sessionmaker[AsyncSession] = make_sessionmaker(self.engine)
        WriteGate(enabled=self.engine.dialect.name == "sqlite").bind(self.sessionmaker)

    async def close(self) -> None:
        await self.engine.dispose()


async def _chain_state(sessionmaker: async_sessionmaker[AsyncSession]) -> tuple[int, int, int]:
    """``(records, highest seq, pending)``."""
    async with sessionmaker() as s:
        records = int(await s.scalar(select(func.count()).select_from(AuditRecord)) or 0)
        top = int(await s.scalar(select(func.max(AuditRecord.seq))) or 0)
        pending = int(await s.scalar(select(func.count()).select_from(AuditPending)) or 0)
    return records, top, pending


async def _check_chain(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    """The chain's length, once it is ``seq`` 1..N, its head row N and nothing pending."""
    records, top, pending = await _chain_state(sessionmaker)
    async with sessionmaker() as s:
        head = int(await s.scalar(select(AuditHead.seq)) or 0)
    if not records == top == head or pending:
        raise RuntimeError(
            f"audit chain broken: {records} records, highest seq {top}, head {head},"
            f" {pending} pending"
        )
    return records


async def _end_to_end(url: str, options: ChainOptions, chainers: int) -> dict[str, Any]:
    instances = [_Instance(url) for _ in range(chainers)]
    trails = [AuditTrail(i.sessionmaker, AuditSigner.generate()) for i in instances]
    try:
        for trail in trails:
            await trail.start()
            await trail.chain_pending()  # its key record: not part of what is timed
        start_length = await _check_chain(instances[0].sessionmaker)
        each_before = [t.chained for t in trails]
        before = sum(each_before)
        per_writer = max(1, options.entries // options.writers)
        numbers = itertools.count()
        appended = 0
        deadline = time.monotonic() + options.max_seconds

        async def writer(w: int) -> None:
            nonlocal appended
            sessionmaker = instances[w % len(instances)].sessionmaker
            for _ in range(per_writer):
                if time.monotonic() > deadline:
                    return
                await append(sessionmaker, _entry(next(numbers)))
                appended += 1

        async with asyncio.TaskGroup() as tasks:
            chaining = [
                tasks.create_task(t.run(), name=f"bench-audit-chainer-{n}")
                for n, t in enumerate(trails)
            ]
            started = time.perf_counter()
            async with asyncio.TaskGroup() as writers:
                for w in range(options.writers):
                    writers.create_task(writer(w), name=f"bench-audit-writer-{w}")
            appended_s = time.perf_counter() - started
            # Bounded: the chainers get as long again as the writers had to catch up.
            catch_up_deadline = time.monotonic() + options.max_seconds
            while sum(t.chained for t in trails) - before < appended:
                if time.monotonic() > catch_up_deadline:
                    break
                await asyncio.sleep(SETTLE_POLL_S)
            elapsed = time.perf_counter() - started
            for task in chaining:
                task.cancel()
        chained = sum(t.chained for t in trails) - before
        length = await _check_chain(instances[0].sessionmaker)
    finally:
        for instance in instances:
            await instance.close()
    result: dict[str, Any] = {
        "writers": options.writers,
        "chainers": chainers,
        "appended": appended,
        "chained": chained,
        "chain_start": start_length,
        "chain_length": length,
        "appends_per_s": round(appended / appended_s, 1) if appended_s else None,
        "seconds": round(elapsed, 3),
        "chained_per_s": round(chained / elapsed, 1) if elapsed else None,
        "catch_up_s": round(elapsed - appended_s, 3),
    }
    if chainers > 1:
        result["chained_by_each"] = [
            t.chained - b for t, b in zip(trails, each_before, strict=True)
        ]
    return result


async def _chainer_alone(url: str, options: ChainOptions) -> dict[str, Any]:
    instance = _Instance(url)
    trail = AuditTrail(instance.sessionmaker, AuditSigner.generate())
    try:
        await trail.start()
        await trail.chain_pending()
        numbers = itertools.count()
        for start in range(0, options.entries, PREFILL_TRANSACTION):
            count = min(PREFILL_TRANSACTION, options.entries - start)
            async with instance.sessionmaker.begin() as s:
                await add(s, *(_entry(next(numbers)) for _ in range(count)))
        before = trail.chained
        started = time.perf_counter()
        await trail.chain_pending()
        elapsed = time.perf_counter() - started
        chained = trail.chained - before
        await _check_chain(instance.sessionmaker)
    finally:
        await instance.close()
    return {
        "records": chained,
        "seconds": round(elapsed, 3),
        "records_per_s": round(chained / elapsed, 1) if elapsed else None,
    }


@dataclass(frozen=True)
class _Row:
    """What :func:`chain` reads of an outbox row."""

    at: str
    session_id: str | None
    kind: str
    actor: str
    tool: str | None
    decision: str | None
    body: str


def _in_memory(options: ChainOptions) -> dict[str, Any]:
    signer = AuditSigner.generate()
    rows = []
    for n in range(options.entries):
        row = _entry(n).pending_row()
        rows.append(_Row(**row))
    deadline = time.monotonic() + options.max_seconds
    done = 0
    head = (0, GENESIS_HASH)
    started = time.perf_counter()
    for start in range(0, len(rows), PREFILL_TRANSACTION):
        if time.monotonic() > deadline:
            break
        records = chain(signer, head, rows[start : start + PREFILL_TRANSACTION])
        head = (records[-1].seq, records[-1].hash)
        done += len(records)
    elapsed = time.perf_counter() - started
    return {
        "records": done,
        "seconds": round(elapsed, 3),
        "records_per_s": round(done / elapsed, 1) if elapsed else None,
    }


def _sign(options: ChainOptions) -> dict[str, Any]:
    signer = AuditSigner.generate()
    digest = os.urandom(32)
    deadline = time.monotonic() + options.max_seconds
    done = 0
    started = time.perf_counter()
    while done < options.signatures and time.monotonic() <= deadline:
        for _ in range(min(1000, options.signatures - done)):
            signer.private_key.sign(digest)
        done += min(1000, options.signatures - done)
    elapsed = time.perf_counter() - started
    return {
        "signatures": done,
        "seconds": round(elapsed, 3),
        "signatures_per_s": round(done / elapsed, 1) if elapsed else None,
    }


def _ratio(rate: float | None, floor: float | None) -> float | None:
    return round(rate / floor, 3) if rate and floor else None


async def audit_chain(url: str, dialect: str, options: ChainOptions) -> dict[str, Any]:
    """Every part of the workload on the database at ``url``; rates and their ratios."""
    result: dict[str, Any] = {"end_to_end": await _end_to_end(url, options, 1)}
    if dialect == "postgres":  # SQLite: one file, one broker process, one chainer
        result["end_to_end_two_chainers"] = await _end_to_end(url, options, 2)
    result["chainer_alone"] = await _chainer_alone(url, options)
    # CPU only: run on the loop's thread like the chainer's own signing, after the DB parts.
    result["in_memory"] = _in_memory(options)
    result["sign"] = _sign(options)
    floor = result["sign"]["signatures_per_s"]
    result["ratio_to_sign"] = {
        name: _ratio(result[name].get("chained_per_s") or result[name].get("records_per_s"), floor)
        for name in ("end_to_end", "end_to_end_two_chainers", "chainer_alone", "in_memory")
        if name in result
    }
    return result
