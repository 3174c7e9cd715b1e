"""``broker audit verify|export|public-key|checkpoint``: what a reviewer runs.

``verify`` reads a chain (the database, or an export file offline) through
:class:`~broker.audit.verify.ChainVerifier` and exits 0 (intact), 1 (broken: the first bad
``seq`` and why) or 2 (could not verify: bad usage, an unreadable key or checkpoint, a
database that does not answer). Which keys it trusts decides what a pass proves: keys
pinned with ``--public-key`` (kept away from the broker's host) prove that nobody without
the private key changed the chain; keys read from the database being verified prove only
that nothing changed by accident, since whoever can write the database can add a key of
their own and re-sign. ``verify`` says so each time it trusts the database's keys.

**Filtered exports** are verified with ``--partial``, never recognised on their own: a
verifier that took a missing first record or a gap as "filtered" would pass a full export
with records cut out. Without ``--partial`` a file must be the whole chain from ``seq`` 1;
with it each record is checked alone (hash, signature, body) and links only between
consecutive ``seq``, and the summary says that left-out records do not show.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Final

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.audit.export import (
    PAGE,
    database_pages,
    export_line,
    parse_export_line,
    read_export,
)
from broker.audit.records import Actor, RecordFormatError, at_text
from broker.audit.report import DATABASE_KEYS_WARNING, Progress, Trust, summary
from broker.audit.signing import (
    AuditKeyError,
    AuditSigner,
    PublicKeys,
    load_or_create_signer,
    public_keys_from_pem,
)
from broker.audit.trail import AuditTrail
from broker.audit.verify import ChainVerifier, Checkpoint, Problem, checkpoint_of
from broker.db.engine import create_engine, make_sessionmaker
from broker.db.queries.audit import (
    AuditFilter,
    audit_head,
    audit_keys,
    audit_records,
    count_audit_records,
    last_session_seq,
)
from broker.settings import Settings, SettingsError

__all__ = ["add_audit_parser", "audit_command"]

OK: Final = 0
BROKEN: Final = 1
CANNOT: Final = 2


class UsageError(Exception):
    """Something the command cannot work with (exit 2); the message is safe to print."""


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


# --- the parser ---------------------------------------------------------------------------


def add_audit_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``audit`` and its subcommands to the ``broker`` parser's subcommands."""
    audit = sub.add_parser(
        "audit",
        help="verify, export and anchor the tamper-evident audit trail",
        description="The audit trail: signed, hash-chained records a reviewer verifies with"
        " public keys alone.",
    )
    commands = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    verify = commands.add_parser(
        "verify",
        help="recompute the chain and its signatures; name the first bad seq",
        description="Recompute every record's hash, link and signature, in seq order. Exit 0:"
        " intact; 1: broken (the first bad seq and why); 2: could not verify.",
    )
    source = verify.add_mutually_exclusive_group()
    source.add_argument(
        "--database",
        metavar="URL",
        help="the broker's database (default: BROKER_DATABASE_URL)",
    )
    source.add_argument(
        "--file",
        type=Path,
        metavar="EXPORT",
        help="an export (`broker audit export`), verified offline: needs --public-key",
    )
    verify.add_argument(
        "--public-key",
        type=Path,
        action="append",
        default=[],
        metavar="PEM_FILE",
        help="trust only the Ed25519 public keys in this file (repeatable); without it the"
        " database's own keys are used, which proves far less (a warning says why)",
    )
    verify.add_argument(
        "--expect-head",
        metavar="CHECKPOINT",
        help="a published checkpoint: a checkpoint file (its last line counts), one checkpoint's"
        " JSON, or a session.ended webhook body (its audit_head); the chain must reach it with"
        " the same hash, which shows a cut-off of the newest records",
    )
    verify.add_argument(
        "--partial",
        action="store_true",
        help="the file is a filtered export: check each record and the links between"
        " consecutive ones (left-out records cannot show)",
    )
    verify.add_argument("--quiet", action="store_true", help="no summary and no progress")
    export = commands.add_parser(
        "export",
        help="write records as JSON lines, one canonical record per line, in seq order",
        description="Write records as JSON lines (the canonical form the chain signs), oldest"
        " first. Without filters: the whole chain. A filtered export verifies with"
        " `verify --file … --partial`.",
    )
    export.add_argument("--database", metavar="URL", help="default: BROKER_DATABASE_URL")
    export.add_argument("--session", metavar="ID", help="only this session's records")
    export.add_argument("--since", type=_time, metavar="TIME", help="from TIME (ISO 8601, UTC)")
    export.add_argument("--until", type=_time, metavar="TIME", help="before TIME (ISO 8601, UTC)")
    export.add_argument(
        "--kind", action="append", default=[], metavar="KIND", help="only this kind (repeatable)"
    )
    export.add_argument("--tool", metavar="NAME", help="only this tool's records")
    export.add_argument("--actor", metavar="ACTOR", help="only this actor's (e.g. key:key_…)")
    export.add_argument(
        "-o", "--output", type=Path, metavar="FILE", help="write here (default: stdout)"
    )
    commands.add_parser(
        "public-key",
        help="print this deployment's audit public key (PEM): what a reviewer pins",
        description="Print the public half of BROKER_AUDIT_SIGNING_KEY (or of the key in"
        " BROKER_AUDIT_SIGNING_KEY_FILE). The private key is never printed.",
    )
    checkpoint = commands.add_parser(
        "checkpoint",
        help="print the chain's signed head now, to keep away from this host",
        description="Print the newest chained record's seq, hash and signature as a checkpoint"
        " (one JSON line), for `verify --expect-head` later. The broker also appends them"
        " to BROKER_AUDIT_CHECKPOINT_FILE as the chain grows.",
    )
    checkpoint.add_argument("--database", metavar="URL", help="default: BROKER_DATABASE_URL")
    erase = commands.add_parser(
        "erase",
        help="erase one session's record bodies (a person's request); the chain still verifies",
        description="Set the bodies of every chained record of the session to NULL and record"
        " the erasure (audit.erased, naming the session and the last seq erased, signed with"
        " this deployment's audit key). Headers, hashes and signatures stay, so `verify`"
        " still passes and shows the erasure.",
    )
    erase.add_argument("--session", required=True, metavar="ID", help="the session")
    erase.add_argument("--reason", required=True, metavar="TEXT", help="why (kept, 200 chars)")
    erase.add_argument("--database", metavar="URL", help="default: BROKER_DATABASE_URL")


def _time(text: str) -> str:
    """An ISO 8601 time (naive: UTC) as a record's ``at`` text, for comparing with it."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 time: {text!r} (e.g. 2026-05-01 or 2026-05-01T12:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return at_text(moment)


def is_offline(args: argparse.Namespace) -> bool:
    """Whether the command is ``verify --file``, which reads no settings.

    Reading them would make a signing key file on a reviewer's machine.
    """
    return bool(args.audit_command == "verify" and args.file is not None)


def audit_command(args: argparse.Namespace, settings: Settings | None) -> int:
    """Run ``broker audit …``; the exit code. ``settings``: ``None`` only when offline."""
    try:
        if args.audit_command == "verify":
            return _verify(args, settings)
        assert settings is not None
        if args.audit_command == "export":
            return _export(args, settings)
        if args.audit_command == "public-key":
            return _public_key(settings)
        if args.audit_command == "erase":
            return _erase(args, settings)
        return _checkpoint(args.database or settings.database_url)
    except UsageError as exc:
        _err(f"broker audit: {exc}")
        return CANNOT
    except SQLAlchemyError as exc:
        # The class only: a driver's message may carry the URL, and with it a password.
        _err(f"broker audit: could not read the database ({type(exc).__name__})")
        return CANNOT


# --- verify -------------------------------------------------------------------------------


def _pinned_keys(paths: Sequence[Path]) -> PublicKeys:
    keys = []
    for path in paths:
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read the public key file {path}: {exc}") from None
        if "PRIVATE KEY" in text:
            # Refused outright: a reviewer's key file is public, and a private key handed
            # to a verifier has gone somewhere it should not be.
            raise UsageError(f"{path} holds a private key; give the public key only")
        try:
            keys.extend(public_keys_from_pem(text))
        except AuditKeyError as exc:
            raise UsageError(f"{path}: {exc}") from None
    return PublicKeys(keys)


def _expected_head(value: str | None) -> Checkpoint | None:
    if value is None:
        return None
    if value.lstrip().startswith("{"):
        text = value
    else:
        try:
            text = Path(value).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read the checkpoint {value}: {exc}") from None
    try:
        return _checkpoint_in(text)
    except ValueError as exc:
        raise UsageError(f"--expect-head: {exc}") from None


def _checkpoint_in(text: str) -> Checkpoint:
    """The checkpoint ``text`` holds.

    ``text`` is a checkpoint file (its newest line counts), one checkpoint (pretty-printed
    too), or the body of a ``session.ended`` webhook (its ``data.audit_head``).
    """
    try:
        whole = json.loads(text)
    except (ValueError, RecursionError):
        # JSON lines: several checkpoints, the last one counts.
        return Checkpoint.newest_in(text)
    if isinstance(whole, dict) and "seq" not in whole:
        data = whole.get("data")
        if isinstance(data, dict) and isinstance(data.get("audit_head"), dict):
            return Checkpoint.from_json(data["audit_head"])
        if isinstance(data, dict) and "audit_head" in data:
            raise ValueError("the webhook's audit_head is null: the chain was empty then")
    return Checkpoint.from_json(whole)


def _verify(args: argparse.Namespace, settings: Settings | None) -> int:
    expect = _expected_head(args.expect_head)
    pinned = _pinned_keys(args.public_key) if args.public_key else None
    if args.file is not None:
        if pinned is None:
            raise UsageError(
                "--file verifies offline with the keys you trust: give --public-key PEM_FILE"
            )
        trust = Trust(pinned, pinned=True)
        verifier = ChainVerifier(trust.keys, contiguous=not args.partial)
        if expect is not None:
            verifier.expect(expect)
        _verify_file(args.file, verifier, quiet=args.quiet, whole=not args.partial)
    else:
        if args.partial:
            raise UsageError("--partial is for a filtered export (--file); the database is whole")
        assert settings is not None
        url = args.database or settings.database_url
        verifier, trust = asyncio.run(_verify_database(url, pinned, expect, quiet=args.quiet))
    report = verifier.finish()
    if report.failure is not None:
        failure = report.failure
        where = f" at seq {failure.seq}" if failure.seq is not None else ""
        _out(f"audit chain broken{where}: {failure.problem} ({failure.detail})")
        if args.file is not None and not args.partial and failure.problem is Problem.GAP:
            _err("broker audit: a filtered export (--session, --since…) verifies with --partial")
        return BROKEN
    if not args.quiet:
        for line in summary(report, trust, partial=args.partial):
            _out(line)
    return OK


def _verify_file(path: Path, verifier: ChainVerifier, *, quiet: bool, whole: bool) -> None:
    try:
        stream: BinaryIO = path.open("rb")
    except OSError as exc:
        raise UsageError(f"cannot read the export {path}: {exc}") from None
    with stream:
        size = _size(stream)
        progress = Progress(sys.stderr, total=size, unit="bytes", enabled=not quiet)
        done = 0
        try:
            for number, raw in read_export(stream):
                done += len(raw)
                try:
                    record = parse_export_line(raw)
                except RecordFormatError as exc:
                    seq = _next_seq(verifier, whole)
                    verifier.fail(seq, Problem.UNREADABLE, f"line {number}: {exc}")
                    break
                verifier.add(record)
                if verifier.failed:
                    break
                progress.update(verifier.report.records, done)
            progress.update(verifier.report.records, done, final=True)
        finally:
            progress.close()


def _size(stream: BinaryIO) -> int:
    try:
        return stream.seek(0, 2)
    finally:
        stream.seek(0)


def _next_seq(verifier: ChainVerifier, whole: bool) -> int | None:
    """The seq an unreadable line most likely held: the one after the last good record."""
    last = verifier.report.last_seq
    if last is None:
        return 1 if whole else None
    return last + 1


async def _verify_database(
    url: str, pinned: PublicKeys | None, expect: Checkpoint | None, *, quiet: bool
) -> tuple[ChainVerifier, Trust]:
    _require_database(url)
    engine = create_engine(url)
    try:
        sessionmaker = make_sessionmaker(engine)
        async with sessionmaker() as s:
            total = await count_audit_records(s)
            if pinned is None:
                rows = await audit_keys(s)
        if pinned is not None:
            trust = Trust(pinned, pinned=True)
        else:
            trust = Trust(_database_keys(rows), pinned=False)
            _err(DATABASE_KEYS_WARNING)
        verifier = ChainVerifier(trust.keys, contiguous=True)
        if expect is not None:
            verifier.expect(expect)
        progress = Progress(sys.stderr, total=total, unit="records", enabled=not quiet)
        try:
            await _feed(sessionmaker, verifier, progress)
        finally:
            progress.close()
        return verifier, trust
    finally:
        await engine.dispose()


async def _feed(
    sessionmaker: async_sessionmaker[AsyncSession], verifier: ChainVerifier, progress: Progress
) -> None:
    report = verifier.report
    try:
        async for page in database_pages(sessionmaker):
            for record in page:
                verifier.add(record)
                if verifier.failed:
                    return
            progress.update(report.records, report.records)
    except SQLAlchemyError as exc:
        await _pinpoint(sessionmaker, verifier, type(exc).__name__)
    progress.update(report.records, report.records, final=True)


async def _pinpoint(
    sessionmaker: async_sessionmaker[AsyncSession], verifier: ChainVerifier, error: str
) -> None:
    """A page could not be read: go on one record at a time, to name the row that cannot.

    A row the driver cannot even decode (bytes that are not text, written behind the
    broker's back) is a bad record like any other, and fails at its ``seq``: the one after
    the last record read, as far as can be told without reading it.
    """
    for _ in range(PAGE + 1):
        last = verifier.report.last_seq or 0
        try:
            async with sessionmaker() as s:
                records = await audit_records(s, AuditFilter(), after_seq=last, limit=1)
        except SQLAlchemyError:
            verifier.fail(
                last + 1,
                Problem.UNREADABLE,
                f"the database cannot read the record after seq {last} ({error})",
            )
            return
        if not records:
            return
        verifier.add(records[0])
        if verifier.failed:
            return
    raise UsageError(f"reading the audit records failed after seq {last} ({error}), then not")


def _database_keys(rows: Sequence[object]) -> PublicKeys:
    keys = []
    for row in rows:
        try:
            keys.extend(public_keys_from_pem(str(getattr(row, "public_key", ""))))
        except AuditKeyError:
            # A garbled stored key trusts nothing: its records fail as signed by an
            # unknown key, at their seq, which says more than refusing to start.
            continue
    return PublicKeys(keys)


def _require_database(url: str) -> None:
    """Refuse a SQLite file that is not there (opening it would make an empty one)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        if not Path(parsed.database).exists():
            raise UsageError(f"no database at {parsed.database}")


# --- export, public-key, checkpoint -----------------------------------------------------


def _export(args: argparse.Namespace, settings: Settings) -> int:
    where = AuditFilter(
        session_id=args.session,
        tool=args.tool,
        kinds=tuple(args.kind),
        actor=args.actor,
        since=args.since,
        until=args.until,
    )
    url = args.database or settings.database_url
    _require_database(url)
    if args.output is not None:
        try:
            with args.output.open("wb") as stream:
                count = asyncio.run(_write_export(url, where, stream))
        except OSError as exc:
            raise UsageError(f"cannot write {args.output}: {exc}") from None
    else:
        sys.stdout.flush()
        try:
            count = asyncio.run(_write_export(url, where, sys.stdout.buffer))
        except BrokenPipeError:
            # `… | head`: the reader stopped. Point stdout at nothing, so the interpreter's
            # last flush does not fail again (the Python docs' recipe for SIGPIPE).
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return BROKEN
    note = "" if where.empty else "; filtered: verify it with `broker audit verify --partial`"
    _err(f"exported {count:,} records{note}")
    return OK


async def _write_export(url: str, where: AuditFilter, stream: BinaryIO) -> int:
    engine = create_engine(url)
    count = 0
    try:
        async for page in database_pages(make_sessionmaker(engine), where):
            # Bytes, not text: the export is the signed bytes whatever the locale or OS.
            stream.write(b"".join(export_line(record) for record in page))
            count += len(page)
        stream.flush()
    finally:
        await engine.dispose()
    return count


def _existing_signer(settings: Settings) -> AuditSigner:
    """This deployment's audit key; never a new one (the broker would not sign with it)."""
    configured = settings.audit_signing_key
    path = settings.audit_signing_key_file
    if configured is None and not path.exists():
        raise UsageError(
            f"no audit signing key: BROKER_AUDIT_SIGNING_KEY is unset and {path} does not"
            " exist (the broker makes it on first start)"
        )
    try:
        return load_or_create_signer(configured.reveal() if configured is not None else None, path)
    except SettingsError as exc:
        raise UsageError(str(exc)) from None


def _public_key(settings: Settings) -> int:
    signer = _existing_signer(settings)
    sys.stdout.write(signer.public_pem)
    sys.stdout.flush()
    _err(f"audit key id {signer.key_id}")
    return OK


def _erase(args: argparse.Namespace, settings: Settings) -> int:
    signer = _existing_signer(settings)
    url = args.database or settings.database_url
    _require_database(url)
    erased = asyncio.run(_erase_session(url, signer, args.session, args.reason))
    if erased is None:
        raise UsageError(f"no audit records of session {args.session!r}")
    _out(f"erased {erased} record bodies of {args.session}; the erasure is recorded")
    return OK


async def _erase_session(url: str, signer: AuditSigner, session_id: str, reason: str) -> int | None:
    engine = create_engine(url)
    try:
        sessionmaker = make_sessionmaker(engine)
        async with sessionmaker() as s:
            if await last_session_seq(s, session_id) is None:
                return None
        trail = AuditTrail(sessionmaker, signer)
        await trail.start()
        return await trail.erase_session(session_id, reason, Actor.CLI)
    finally:
        await engine.dispose()


def _checkpoint(url: str) -> int:
    _require_database(url)
    record = asyncio.run(_head(url))
    if record is None:
        raise UsageError("the audit chain is empty: nothing to checkpoint")
    _out(json.dumps(record.to_json(), separators=(",", ":")))
    return OK


async def _head(url: str) -> Checkpoint | None:
    engine = create_engine(url)
    try:
        async with make_sessionmaker(engine)() as s:
            record = await audit_head(s)
    finally:
        await engine.dispose()
    return None if record is None else checkpoint_of(record, at_text())
