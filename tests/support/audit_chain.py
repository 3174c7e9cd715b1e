"""Real audit chains in a migrated database, ways to tamper with them, and ``broker audit`` runs.

A chain is written the way the broker writes it: :class:`AuditTrail` publishes its key (the
first record), :func:`broker.audit.trail.append` queues entries and the trail chains and
signs them. Tampering is plain SQL on the stored rows, as someone with database access
would do it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker import cli as broker_cli
from broker.audit.records import Actor, AuditEntry, AuditKind, ChainedRecord
from broker.audit.signing import AuditSigner
from broker.audit.trail import AuditTrail, append
from broker.db.engine import create_engine, make_sessionmaker
from tests.support.migrations import execute


@dataclass
class AuditStack:
    url: str
    sessionmaker: async_sessionmaker[AsyncSession]
    trail: AuditTrail
    checkpoint_file: Path
    public_key_file: Path
    """The trail's public key (PEM), as a reviewer keeps it."""

    @property
    def signer(self) -> AuditSigner:
        return self.trail.signer


@asynccontextmanager
async def audit_stack(
    url: str, tmp_path: Path, signer: AuditSigner | None = None
) -> AsyncIterator[AuditStack]:
    """An audit trail on the migrated database at ``url``; its key is published (seq 1)."""
    engine = create_engine(url)
    sessionmaker = make_sessionmaker(engine)
    signer = signer or AuditSigner.generate()
    public_key_file = tmp_path / "audit.pub"
    public_key_file.write_text(signer.public_pem)
    trail = AuditTrail(sessionmaker, signer, checkpoint_file=tmp_path / "checkpoints.jsonl")
    await trail.start()
    await trail.chain_pending()
    try:
        yield AuditStack(url, sessionmaker, trail, tmp_path / "checkpoints.jsonl", public_key_file)
    finally:
        await engine.dispose()


def session_entries(session_id: str, key_id: str = "key_app") -> list[AuditEntry]:
    """What a session with an allowed, a denied and a failed tool call leaves, in order."""
    return [
        AuditEntry(
            AuditKind.SESSION_CREATED, Actor.key(key_id), {"model": "m"}, session_id=session_id
        ),
        AuditEntry(AuditKind.SIDEBAND_ATTACHED, Actor.SIDEBAND, {}, session_id=session_id),
        AuditEntry(
            AuditKind.TOOL_REQUESTED,
            Actor.SIDEBAND,
            {"call_id": "c1", "arguments": {"order_id": "42", "note": "crème brûlée ☕"}},
            session_id=session_id,
            tool="lookup_order",
        ),
        AuditEntry(
            AuditKind.TOOL_SUCCEEDED,
            Actor.BROKER,
            {"call_id": "c1", "duration_ms": 12, "output": {"status": "shipped"}},
            session_id=session_id,
            tool="lookup_order",
            decision="allowed",
        ),
        AuditEntry(
            AuditKind.TOOL_DENIED,
            Actor.BROKER,
            {"call_id": "c2", "reason": "not in the allowlist"},
            session_id=session_id,
            tool="drop_tables",
            decision="denied",
        ),
        AuditEntry(
            AuditKind.TOOL_FAILED,
            Actor.BROKER,
            {"call_id": "c3", "error": "timeout"},
            session_id=session_id,
            tool="lookup_order",
            decision="allowed",
        ),
        AuditEntry(
            AuditKind.TAMPER_DETECTED,
            Actor.PAGE,
            {"event": "session.update"},
            session_id=session_id,
        ),
        AuditEntry(AuditKind.OPS_HANGUP, Actor.key("key_ops"), {}, session_id=session_id),
        AuditEntry(
            AuditKind.SESSION_ENDED, Actor.BROKER, {"reason": "ops_hangup"}, session_id=session_id
        ),
    ]


async def record_sessions(stack: AuditStack, *session_ids: str) -> None:
    """Each session's records, chained (one transaction per session, as actions commit)."""
    for session_id in session_ids:
        await append(stack.sessionmaker, *session_entries(session_id))
    await stack.trail.chain_pending()


async def rows(url: str) -> list[Any]:
    return await execute(url, "SELECT * FROM audit_records ORDER BY seq")


async def resign(url: str, seq: int, signer: AuditSigner, *, key_id: str | None = None) -> None:
    """Rewrite record ``seq``'s hash and signature with ``signer`` (naming ``key_id``, by
    default the signer's own): what someone holding another key can do."""
    (row,) = await execute(url, f"SELECT * FROM audit_records WHERE seq = {seq}")
    named = key_id or signer.key_id
    record = ChainedRecord.from_row(row).signed(row.prev_hash, named, signer.sign)
    digest, signature = record.hash, record.signature
    await execute(
        url,
        f"UPDATE audit_records SET hash = '{digest}', signature = '{signature}',"
        f" key_id = '{named}' WHERE seq = {seq}",
    )


async def rechain_from(url: str, seq: int, signer: AuditSigner) -> None:
    """Re-link and re-sign every record from ``seq`` on with ``signer``, and publish its key
    in ``audit_keys``: a full rewrite by someone who can write the database."""
    (prev,) = await execute(url, f"SELECT hash FROM audit_records WHERE seq = {seq - 1}")
    prev_hash = prev.hash
    for row in await execute(url, f"SELECT * FROM audit_records WHERE seq >= {seq} ORDER BY seq"):
        record = ChainedRecord.from_row(row).signed(prev_hash, signer.key_id, signer.sign)
        await execute(
            url,
            f"UPDATE audit_records SET prev_hash = '{prev_hash}', hash = '{record.hash}',"
            f" signature = '{record.signature}', key_id = '{signer.key_id}'"
            f" WHERE seq = {row.seq}",
        )
        prev_hash = record.hash
    pem = signer.public_pem
    await execute(
        url,
        "INSERT INTO audit_keys (key_id, public_key, added_at) VALUES"
        f" ('{signer.key_id}', '{pem}', '2026-01-01 00:00:00')",
    )


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


def main_exit_code(argv: Sequence[str]) -> int:
    """``broker.cli.main``'s exit code, argparse's exits (``--help``, bad usage: 2) included."""
    try:
        return broker_cli.main(list(argv))
    except SystemExit as exc:  # argparse: --help, or bad usage (2)
        return int(exc.code or 0)


async def broker_cli_run(capsys: pytest.CaptureFixture[str], *argv: str) -> Run:
    """``broker …`` in-process (in a thread: it runs its own event loop); exit code, output."""
    capsys.readouterr()
    async with asyncio.timeout(60):
        code = await asyncio.to_thread(main_exit_code, argv)
    out, err = capsys.readouterr()
    return Run(code, out, err)


def cli_environment(monkeypatch: pytest.MonkeyPatch, url: str | None, tmp_path: Path) -> None:
    """The broker's settings for a command-line run: the database (or none at all), key files
    under ``tmp_path``, and the test's own log capture kept."""
    if url is None:
        monkeypatch.delenv("BROKER_DATABASE_URL", raising=False)
    else:
        monkeypatch.setenv("BROKER_DATABASE_URL", url)
    monkeypatch.setenv("BROKER_SIGNING_KEY_FILE", str(tmp_path / "signing.key"))
    monkeypatch.setenv("BROKER_AUDIT_SIGNING_KEY_FILE", str(tmp_path / "audit-signing.pem"))
    for name in ("BROKER_ADMIN_KEY", "BROKER_AUDIT_SIGNING_KEY", "BROKER_PROVIDER_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(broker_cli, "configure_logging", lambda level, secrets, **_: None)
