"""``broker audit verify`` and ``export`` on real chains: what each kind of tampering shows.

Chains are written by the audit trail itself into a migrated database; tampering is SQL on
the stored rows (what someone with database access can do) or bytes changed in an export.
Must-shows 2, 3 and 7 of the audit issue: an edited, deleted, reordered or re-signed record
fails verification at its ``seq``; an export verifies offline with the public key alone and
fails for any changed byte; a cut-off of the newest records fails against a checkpoint
published before, while an announced erasure keeps the chain verifiable.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Final

import pytest

from broker import app_state
from broker.audit.records import body_sha256
from broker.audit.signing import AuditSigner
from tests.support.audit_chain import (
    AuditStack,
    Run,
    audit_stack,
    broker_cli_run,
    cli_environment,
    main_exit_code,
    rechain_from,
    record_sessions,
    resign,
    rows,
)
from tests.support.broker_server import AUDIT_SIGNER, RunningBroker
from tests.support.migrations import execute

SESSIONS: Final = ("sess_a", "sess_b", "sess_c")
RECORDS: Final = 1 + 9 * len(SESSIONS)
"""The key's record, then nine per session (tests/support/audit_chain.py)."""
BROKEN: Final = re.compile(r"^audit chain broken at seq (\d+): (\w+) \(.+\)$", re.MULTILINE)


@pytest.fixture
async def stack(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[AuditStack]:
    cli_environment(monkeypatch, db_url, tmp_path)
    async with audit_stack(db_url, tmp_path) as made:
        await record_sessions(made, *SESSIONS)
        yield made


async def verify(capsys: pytest.CaptureFixture[str], stack: AuditStack, *extra: str) -> Run:
    return await broker_cli_run(
        capsys, "audit", "verify", "--public-key", str(stack.public_key_file), *extra
    )


def broken_at(run: Run) -> tuple[int, str]:
    """The ``(seq, problem)`` a failed verification names (and that it exited 1)."""
    assert run.code == 1, run
    found = BROKEN.search(run.out)
    assert found is not None, run
    return int(found.group(1)), found.group(2)


# --- an intact chain --------------------------------------------------------------------------


async def test_an_intact_chain_verifies_with_the_pinned_key(
    stack: AuditStack, capsys: pytest.CaptureFixture[str]
) -> None:
    run = await verify(capsys, stack)
    assert run.code == 0, run
    assert f"audit chain intact: {RECORDS} records, seq 1 to {RECORDS}" in run.out
    (last,) = (await rows(stack.url))[-1:]
    assert f"head        seq {RECORDS} hash {last.hash}" in run.out
    assert f"{stack.signer.key_id} (pinned with --public-key)" in run.out
    assert "WARNING" not in run.err
    # stderr is no terminal here: no progress line.
    assert "verifying" not in run.err
    assert run.err == ""


async def test_the_records_are_the_sessions_actions_in_order(stack: AuditStack) -> None:
    kinds = [row.kind for row in await rows(stack.url) if row.session_id == "sess_b"]
    assert kinds == [
        "session.created",
        "sideband.attached",
        "tool.requested",
        "tool.succeeded",
        "tool.denied",
        "tool.failed",
        "tamper.detected",
        "ops.hangup",
        "session.ended",
    ]


async def test_without_a_pinned_key_the_databases_keys_are_used_and_it_says_what_that_proves(
    stack: AuditStack, capsys: pytest.CaptureFixture[str]
) -> None:
    run = await broker_cli_run(capsys, "audit", "verify")
    assert run.code == 0, run
    assert "WARNING" in run.err
    assert "whoever can write the database" in run.err
    assert "--public-key" in run.err
    assert "from the database: see the WARNING" in run.out


async def test_a_rewrite_with_a_key_added_to_the_database_passes_only_without_a_pinned_key(
    stack: AuditStack, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the warning is about: someone who can write the database re-signs the chain
    from seq 5 on with a key of their own and publishes it in ``audit_keys``. Verified with
    the database's keys it passes; with the pinned key it fails at seq 5."""
    await rechain_from(stack.url, 5, AuditSigner.generate())
    trusting_the_database = await broker_cli_run(capsys, "audit", "verify")
    assert trusting_the_database.code == 0, trusting_the_database
    assert "WARNING" in trusting_the_database.err
    assert broken_at(await verify(capsys, stack)) == (5, "unknown_key")


async def test_a_rotated_key_verifies_with_both_public_keys_pinned(
    stack: AuditStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A new signing key continues the chain (its first record publishes it); the old
    records keep verifying under the old key, and pinning only the old one stops at the
    first record the new key signed."""
    new = AuditSigner.generate()
    (tmp_path / "new").mkdir()
    async with audit_stack(stack.url, tmp_path / "new", new) as rotated:
        await record_sessions(rotated, "sess_d")
    both = tmp_path / "both.pub"
    both.write_text(stack.signer.public_pem + new.public_pem)
    run = await broker_cli_run(capsys, "audit", "verify", "--public-key", str(both))
    assert run.code == 0, run
    assert f"{RECORDS + 10} records" in run.out
    assert ", ".join(sorted([stack.signer.key_id, new.key_id])) in run.out
    separate = ("--public-key", str(rotated.public_key_file))
    assert (await verify(capsys, stack, *separate)).code == 0
    assert broken_at(await verify(capsys, stack)) == (RECORDS + 1, "unknown_key")


# --- must-show 2: each kind of tampering in the database, named at its seq --------------------


async def _edit_body(stack: AuditStack) -> None:
    await execute(
        stack.url,
        """UPDATE audit_records SET body = '{"call_id":"c2"}' WHERE seq = 13""",
    )


async def _delete(stack: AuditStack) -> None:
    await execute(stack.url, "DELETE FROM audit_records WHERE seq = 13")


async def _swap(stack: AuditStack) -> None:
    await execute(
        stack.url,
        "UPDATE audit_records SET seq = -1 WHERE seq = 13",
        "UPDATE audit_records SET seq = 13 WHERE seq = 16",
        "UPDATE audit_records SET seq = 16 WHERE seq = -1",
    )


async def _swap_neighbours(stack: AuditStack) -> None:
    await execute(
        stack.url,
        "UPDATE audit_records SET seq = -1 WHERE seq = 13",
        "UPDATE audit_records SET seq = 13 WHERE seq = 14",
        "UPDATE audit_records SET seq = 14 WHERE seq = -1",
    )


async def _resign_unknown_key(stack: AuditStack) -> None:
    await resign(stack.url, 13, AuditSigner.generate())


async def _resign_keeping_the_key_id(stack: AuditStack) -> None:
    await resign(stack.url, 13, AuditSigner.generate(), key_id=stack.signer.key_id)


async def _edit_kind(stack: AuditStack) -> None:
    await execute(stack.url, "UPDATE audit_records SET kind = 'tool.succeeded' WHERE seq = 13")


async def _edit_actor(stack: AuditStack) -> None:
    await execute(stack.url, "UPDATE audit_records SET actor = 'key:key_ops' WHERE seq = 13")


async def _edit_decision(stack: AuditStack) -> None:
    await execute(stack.url, "UPDATE audit_records SET decision = 'allowed' WHERE seq = 13")


async def _rehash_keeping_the_signature(stack: AuditStack) -> None:
    # A new body with its body_sha256 and hash recomputed, the old signature left on it.
    (row,) = await execute(stack.url, "SELECT * FROM audit_records WHERE seq = 13")
    body = '{"call_id":"c1"}'
    await execute(
        stack.url,
        f"UPDATE audit_records SET body = '{body}', body_sha256 = '{body_sha256(body)}'"
        " WHERE seq = 13",
    )
    await resign(stack.url, 13, stack.signer)
    await execute(
        stack.url, f"UPDATE audit_records SET signature = '{row.signature}' WHERE seq = 13"
    )


async def _null_body(stack: AuditStack) -> None:
    await execute(stack.url, "UPDATE audit_records SET body = NULL WHERE seq = 13")


TAMPERING: Final = [
    pytest.param(_edit_body, 13, "body_mismatch", id="edit-body"),
    pytest.param(_delete, 13, "gap", id="delete"),
    pytest.param(_swap, 13, "broken_link", id="swap-two"),
    pytest.param(_swap_neighbours, 13, "broken_link", id="swap-neighbours"),
    pytest.param(_resign_unknown_key, 13, "unknown_key", id="resign-unknown-key"),
    pytest.param(_resign_keeping_the_key_id, 13, "bad_signature", id="resign-same-key-id"),
    pytest.param(_edit_kind, 13, "hash_mismatch", id="edit-kind"),
    pytest.param(_edit_actor, 13, "hash_mismatch", id="edit-actor"),
    pytest.param(_edit_decision, 13, "hash_mismatch", id="edit-decision"),
    pytest.param(_rehash_keeping_the_signature, 13, "bad_signature", id="rehash"),
    pytest.param(_null_body, 13, "body_missing", id="body-null-unannounced"),
]


@pytest.mark.parametrize(("tamper", "seq", "problem"), TAMPERING)
async def test_tampering_in_the_database_fails_at_its_seq(
    stack: AuditStack,
    capsys: pytest.CaptureFixture[str],
    tamper: Callable[[AuditStack], Awaitable[None]],
    seq: int,
    problem: str,
) -> None:
    assert (await verify(capsys, stack)).code == 0
    await tamper(stack)
    run = await verify(capsys, stack)
    assert broken_at(run) == (seq, problem)
    assert "audit chain intact" not in run.out


async def test_a_row_the_database_cannot_read_fails_at_its_seq(
    sqlite_db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Bytes that are not UTF-8 written into a text column: SQLite's driver refuses the
    whole page; verify goes on a record at a time and names the row, instead of giving up."""
    cli_environment(monkeypatch, sqlite_db_url, tmp_path)
    async with audit_stack(sqlite_db_url, tmp_path) as made:
        await record_sessions(made, *SESSIONS)
    await execute(
        sqlite_db_url, "UPDATE audit_records SET actor = CAST(X'FF' AS TEXT) WHERE seq = 13"
    )
    assert broken_at(await verify(capsys, made)) == (13, "unreadable")


async def test_a_signed_erasure_record_that_is_not_an_object_announces_nothing(
    stack: AuditStack, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only a holder of the key could sign it; verify still reads it without crashing."""
    await execute(
        stack.url,
        "UPDATE audit_records SET kind = 'audit.erased', body = '[1]',"
        f" body_sha256 = '{body_sha256('[1]')}' WHERE seq = 13",
    )
    await resign(stack.url, 13, stack.signer)
    assert broken_at(await verify(capsys, stack)) == (14, "broken_link")


async def test_deleting_the_first_record_fails_at_seq_1(
    stack: AuditStack, capsys: pytest.CaptureFixture[str]
) -> None:
    await execute(stack.url, "DELETE FROM audit_records WHERE seq = 1")
    assert broken_at(await verify(capsys, stack)) == (1, "gap")


# --- must-show 3: an export verifies offline; any changed byte fails --------------------------


@pytest.fixture
async def exported(
    sqlite_db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> tuple[Path, Path]:
    """A full export and the public key, the database deleted and its URL unset."""
    cli_environment(monkeypatch, sqlite_db_url, tmp_path)
    async with audit_stack(sqlite_db_url, tmp_path) as made:
        await record_sessions(made, *SESSIONS)
        await made.trail.erase_session("sess_a", "a person's request", "key:key_ops")
        public_key_file = made.public_key_file
    export = tmp_path / "out.jsonl"
    run = await broker_cli_run(capsys, "audit", "export", "-o", str(export))
    assert run.code == 0, run
    assert f"exported {RECORDS + 1:,} records" in run.err
    await asyncio.to_thread(Path(sqlite_db_url.removeprefix("sqlite+aiosqlite:///")).unlink)
    cli_environment(monkeypatch, None, tmp_path)
    return export, public_key_file


async def test_an_export_verifies_offline_with_the_public_key_alone(
    exported: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    export, key = exported
    lines = export.read_bytes().splitlines(keepends=True)
    assert len(lines) == RECORDS + 1  # and the erasure's record
    assert all(line.endswith(b"\n") and line.startswith(b'{"actor":') for line in lines)
    run = await broker_cli_run(
        capsys, "audit", "verify", "--file", str(export), "--public-key", str(key)
    )
    assert run.code == 0, run
    assert f"audit chain intact: {RECORDS + 1} records, seq 1 to {RECORDS + 1}" in run.out
    assert "erased      9 record bodies (seq 2-10), each announced" in run.out
    assert "WARNING" not in run.err


async def test_an_offline_verify_reads_no_settings_and_makes_no_key_file(
    exported: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A reviewer's machine: no broker configuration (a broken one even), and nothing is
    written there (reading the settings would make a signing key file)."""
    export, key = exported
    reviewer = tmp_path / "reviewer"
    reviewer.mkdir()
    monkeypatch.chdir(reviewer)
    monkeypatch.setenv("BROKER_PORT", "not a port")
    for name in ("BROKER_SIGNING_KEY_FILE", "BROKER_AUDIT_SIGNING_KEY_FILE", "BROKER_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    run = await broker_cli_run(
        capsys, "audit", "verify", "--file", str(export), "--public-key", str(key)
    )
    assert run.code == 0, run
    assert list(reviewer.iterdir()) == []
    # Anything that reads the database still needs the configuration, and says so.
    run = await broker_cli_run(capsys, "audit", "verify", "--public-key", str(key))
    assert run.code == 2 and "BROKER_PORT" in run.err, run


async def test_an_export_to_stdout_is_the_same_bytes(
    sqlite_db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    cli_environment(monkeypatch, sqlite_db_url, tmp_path)
    async with audit_stack(sqlite_db_url, tmp_path) as made:
        await record_sessions(made, "sess_a")
    to_file = tmp_path / "out.jsonl"
    assert await asyncio.to_thread(main_exit_code, ["audit", "export", "-o", str(to_file)]) == 0
    capsysbinary.readouterr()
    assert await asyncio.to_thread(main_exit_code, ["audit", "export"]) == 0
    assert capsysbinary.readouterr().out == to_file.read_bytes()


def _positions(export: bytes, count: int) -> list[int]:
    """``count`` byte positions, seeded: a spread over the file plus each member's value
    (and its name, the separators and the newline) of a record in the middle."""
    rng = random.Random(20)
    lines = export.splitlines(keepends=True)
    middle = len(lines) // 2
    start = sum(len(line) for line in lines[:middle])
    line = lines[middle]
    chosen = {start + len(line) - 1, len(export) - 1, 0}  # newlines, the first brace
    for member in json.loads(line):
        at = line.index(f'"{member}":'.encode())
        chosen.update({start + at + 1, start + at + len(member) + 2, start + at + len(member) + 3})
    chosen.update(rng.sample(range(len(export)), count - len(chosen)))
    return sorted(chosen)


async def test_any_changed_byte_of_an_export_fails_verification(
    exported: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """200 positions, every member of a record among them; each byte is changed once (to a
    seeded other byte: a neighbour, a quote, a newline, a non-UTF-8 byte…) and each changed
    export fails, as a failure, never a crash."""
    export, key = exported
    original = export.read_bytes()
    rng = random.Random(3)
    damaged = tmp_path / "damaged.jsonl"
    problems: set[str] = set()
    for position in _positions(original, 200):
        data = bytearray(original)
        was = data[position]
        data[position] = rng.choice(
            [
                was ^ 1,
                ord('"'),
                ord("\n"),
                ord(" "),
                0xFF,
                rng.choice([b for b in range(256) if b != was]),
            ]
        )
        if data[position] == was:
            data[position] = was ^ 2
        damaged.write_bytes(bytes(data))
        run = await broker_cli_run(
            capsys, "audit", "verify", "--file", str(damaged), "--public-key", str(key)
        )
        assert run.code == 1, (position, was, data[position], run)
        problems.add(broken_at(run)[1])
    # Every layer was reached, not just the JSON parser.
    assert {"unreadable", "hash_mismatch", "bad_signature", "body_mismatch"} <= problems, problems


async def test_a_rewritten_line_that_means_the_same_record_fails(
    exported: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Spacing, member order, an escaped character: the same record in other bytes is not
    the export (every byte of which is signed) and fails as unreadable, at its seq."""
    export, key = exported
    lines = export.read_bytes().splitlines(keepends=True)
    record = json.loads(lines[11])
    lines[11] = (json.dumps(record, sort_keys=True) + "\n").encode()
    damaged = tmp_path / "respaced.jsonl"
    damaged.write_bytes(b"".join(lines))
    run = await broker_cli_run(
        capsys, "audit", "verify", "--file", str(damaged), "--public-key", str(key)
    )
    assert broken_at(run) == (12, "unreadable")
    assert "line 12" in run.out


async def test_a_line_left_out_of_a_full_export_fails_unless_declared_partial(
    exported: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export, key = exported
    lines = export.read_bytes().splitlines(keepends=True)
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(b"".join(lines[:5] + lines[6:]))
    args = ("audit", "verify", "--file", str(cut), "--public-key", str(key))
    assert broken_at(await broker_cli_run(capsys, *args)) == (6, "gap")
    partial = await broker_cli_run(capsys, *args, "--partial")
    assert partial.code == 0, partial
    assert "(partial)" in partial.out
    assert "records left out of a filtered export do not show" in partial.out


async def test_a_filtered_export_verifies_with_partial(
    stack: AuditStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "b.jsonl"
    run = await broker_cli_run(capsys, "audit", "export", "--session", "sess_b", "-o", str(out))
    assert run.code == 0, run
    assert "verify it with `broker audit verify --partial`" in run.err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["seq"] for r in records] == list(range(11, 20))
    assert {r["session_id"] for r in records} == {"sess_b"}
    args = ("audit", "verify", "--file", str(out), "--public-key", str(stack.public_key_file))
    whole = await broker_cli_run(capsys, *args)
    assert broken_at(whole) == (1, "gap")
    assert "--partial" in whole.err
    partial = await broker_cli_run(capsys, *args, "--partial")
    assert partial.code == 0, partial
    assert "9 records, seq 11 to 19" in partial.out
    kinds = await broker_cli_run(
        capsys, "audit", "export", "--kind", "tool.denied", "--kind", "tool.failed", "-o", str(out)
    )
    assert kinds.code == 0
    assert [json.loads(line)["kind"] for line in out.read_text().splitlines()] == [
        "tool.denied",
        "tool.failed",
    ] * len(SESSIONS)
    later = await broker_cli_run(capsys, "audit", "export", "--since", "2999-01-01", "-o", str(out))
    assert later.code == 0
    assert out.read_bytes() == b""


# --- must-show 7: truncation against a checkpoint; erasure keeps the chain verifiable ---------


async def test_cutting_off_the_newest_records_fails_against_a_published_checkpoint(
    stack: AuditStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    published = await stack.trail.publish_checkpoint(force=True)
    assert published is not None and published.seq == RECORDS
    head = ("--expect-head", str(stack.checkpoint_file))
    run = await verify(capsys, stack, *head)
    assert run.code == 0, run
    assert f"checkpoint  seq {RECORDS} matched" in run.out
    await execute(stack.url, f"DELETE FROM audit_records WHERE seq > {RECORDS - 3}")
    # The rest of the chain is intact: only the checkpoint shows what is missing.
    assert (await verify(capsys, stack)).code == 0
    assert broken_at(await verify(capsys, stack, *head)) == (RECORDS - 2, "truncated")
    # The checkpoint given as its JSON line, pretty-printed in a file, or inside the
    # session.ended webhook that carried it, works the same.
    line = stack.checkpoint_file.read_text().splitlines()[-1]
    webhook = {"type": "session.ended", "data": {"session_id": "s", "audit_head": json.loads(line)}}
    pretty = tmp_path / "webhook.json"
    pretty.write_text(json.dumps(webhook, indent=2))
    for given in (line, json.dumps(json.loads(line), indent=2), json.dumps(webhook), str(pretty)):
        run = await verify(capsys, stack, "--expect-head", given)
        assert broken_at(run) == (RECORDS - 2, "truncated"), given


async def test_a_chain_rewritten_under_a_checkpoint_fails_as_head_mismatch(
    stack: AuditStack, capsys: pytest.CaptureFixture[str]
) -> None:
    """Cut off and re-signed with a key added to the database: without a pinned key only
    the checkpoint (signed by the real key) catches it."""
    await stack.trail.publish_checkpoint(force=True)
    await execute(stack.url, f"DELETE FROM audit_records WHERE seq > {RECORDS - 1}")
    await rechain_from(stack.url, 20, AuditSigner.generate())
    assert (await broker_cli_run(capsys, "audit", "verify")).code == 0
    run = await broker_cli_run(
        capsys, "audit", "verify", "--expect-head", str(stack.checkpoint_file)
    )
    assert broken_at(run) == (RECORDS, "truncated")
    # Put a record back at the checkpoint's seq: now it is there with another hash.
    await execute(
        stack.url,
        "INSERT INTO audit_records (seq, at, session_id, kind, actor, tool, decision, body,"
        " body_sha256, prev_hash, hash, key_id, signature)"
        f" SELECT {RECORDS}, at, session_id, kind, actor, tool, decision, body, body_sha256,"
        f" hash, hash, key_id, signature FROM audit_records WHERE seq = {RECORDS - 1}",
    )
    await rechain_from(stack.url, RECORDS, AuditSigner.generate())
    run = await broker_cli_run(
        capsys, "audit", "verify", "--expect-head", str(stack.checkpoint_file)
    )
    assert broken_at(run) == (RECORDS, "head_mismatch")


async def test_an_announced_erasure_keeps_the_chain_verifiable_and_shows(
    stack: AuditStack, capsys: pytest.CaptureFixture[str]
) -> None:
    await stack.trail.publish_checkpoint(force=True)
    erased = await stack.trail.erase_session("sess_b", "retention", "key:key_ops")
    assert erased == 9
    bodies = {row.seq: row.body for row in await rows(stack.url)}
    assert all(bodies[seq] is None for seq in range(11, 20))
    assert bodies[RECORDS + 1] is not None  # the erasure's own record
    run = await verify(capsys, stack, "--expect-head", str(stack.checkpoint_file))
    assert run.code == 0, run
    assert "erased      9 record bodies (seq 11-19), each announced by an audit.erased" in run.out
    assert "(1 erasures)" in run.out
    assert f"checkpoint  seq {RECORDS} matched" in run.out
    # The erasure's record is signed like any other: editing what it announces fails.
    await execute(
        stack.url,
        # (\\: is a colon to SQLAlchemy's text(), not a bind parameter.)
        "UPDATE audit_records"
        " SET body = REPLACE(body, '\"through_seq\"\\:19', '\"through_seq\"\\:29')"
        f" WHERE seq = {RECORDS + 1}",
    )
    assert broken_at(await verify(capsys, stack)) == (RECORDS + 1, "body_mismatch")


async def test_broker_audit_erase_erases_a_session_and_signs_the_erasure(
    stack: AuditStack, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command a person's request is carried out with: the chain still verifies with the
    pinned key, and the erasure is the command line's record."""
    monkeypatch.setenv("BROKER_AUDIT_SIGNING_KEY", stack.signer.private_pem())
    run = await broker_cli_run(
        capsys, "audit", "erase", "--session", "sess_b", "--reason", "a person's request"
    )
    assert run.code == 0, run
    assert "erased 9 record bodies of sess_b" in run.out
    assert "PRIVATE" not in run.out + run.err
    stored = await rows(stack.url)
    assert [row.seq for row in stored if row.session_id == "sess_b" and row.body is None] == list(
        range(11, 20)
    )
    last = stored[-1]
    assert (last.kind, last.actor, last.session_id) == ("audit.erased", "cli", "sess_b")
    run = await verify(capsys, stack)
    assert run.code == 0, run
    assert "(seq 11-19), each announced" in run.out
    unknown = await broker_cli_run(
        capsys, "audit", "erase", "--session", "sess_nobody", "--reason", "x"
    )
    assert unknown.code == 2 and "no audit records of session 'sess_nobody'" in unknown.err
    assert (await rows(stack.url))[-1].seq == last.seq  # nothing recorded for it


async def test_a_body_erased_without_an_erasure_record_fails(
    stack: AuditStack, capsys: pytest.CaptureFixture[str]
) -> None:
    await stack.trail.erase_session("sess_a", "retention", "key:key_ops")
    # Another session's body set to NULL by hand: no audit.erased announces it.
    await execute(stack.url, "UPDATE audit_records SET body = NULL WHERE seq = 15")
    assert broken_at(await verify(capsys, stack)) == (15, "body_missing")


# --- exit codes, progress, keys ---------------------------------------------------------------


async def test_bad_usage_exits_2(
    stack: AuditStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = str(stack.public_key_file)
    export = tmp_path / "all.jsonl"
    assert (await broker_cli_run(capsys, "audit", "export", "-o", str(export))).code == 0
    private = tmp_path / "private.pem"
    private.write_text(stack.signer.private_pem())
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key\n")
    cases = [
        (("audit", "verify", "--file", str(export)), "give --public-key"),
        (("audit", "verify", "--file", str(export), "--database", stack.url), "not allowed with"),
        (("audit", "verify", "--partial"), "--partial is for a filtered export"),
        (("audit", "verify", "--public-key", str(private)), "holds a private key"),
        (("audit", "verify", "--public-key", str(garbage)), "not a PEM public key"),
        (("audit", "verify", "--public-key", str(tmp_path / "none.pem")), "cannot read"),
        (("audit", "verify", "--public-key", key, "--expect-head", "{}"), "--expect-head"),
        (
            (
                "audit",
                "verify",
                "--public-key",
                key,
                "--expect-head",
                '{"data":{"audit_head":null}}',
            ),
            "audit_head is null",
        ),
        (
            ("audit", "verify", "--public-key", key, "--expect-head", str(tmp_path / "none")),
            "cannot read the checkpoint",
        ),
        (("audit", "verify", "--database", f"sqlite:///{tmp_path}/none.db"), "no database at"),
        (("audit", "export", "--since", "yesterday"), "not an ISO 8601 time"),
        (("audit",), "required"),
    ]
    for argv, message in cases:
        run = await broker_cli_run(capsys, *argv)
        assert run.code == 2, (argv, run)
        assert message in run.err, (argv, run)
        assert "audit chain" not in run.out
    assert not (tmp_path / "none.db").exists()  # not made by looking for it


class Terminal:
    """A stderr that says it is a terminal, keeping what was written."""

    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> int:
        self.text += text
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True


async def test_progress_shows_on_a_terminal_only(
    stack: AuditStack,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    piped = await verify(capsys, stack)
    assert piped.code == 0 and piped.err == ""
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    run = await verify(capsys, stack)
    assert run.code == 0
    assert f"\rverifying {RECORDS} / {RECORDS} records 100%" in terminal.text
    assert "records/s" in terminal.text
    assert terminal.text.endswith("\n")
    export = tmp_path / "all.jsonl"
    assert (await broker_cli_run(capsys, "audit", "export", "-o", str(export))).code == 0
    terminal.text = ""
    run = await broker_cli_run(
        capsys, "audit", "verify", "--file", str(export), "--public-key", str(stack.public_key_file)
    )
    assert run.code == 0
    assert f"{RECORDS} records," in terminal.text and "MB 100%" in terminal.text
    terminal.text = ""
    assert (await verify(capsys, stack, "--quiet")).out == ""
    assert terminal.text == ""


async def test_public_key_prints_the_public_half_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cli_environment(monkeypatch, None, tmp_path)
    key_file = tmp_path / "audit-signing.pem"
    missing = await broker_cli_run(capsys, "audit", "public-key")
    assert missing.code == 2
    assert "no audit signing key" in missing.err
    assert not key_file.exists()  # not made here: the broker would never sign with it
    signer = AuditSigner.generate()
    monkeypatch.setenv("BROKER_AUDIT_SIGNING_KEY", signer.private_pem())
    run = await broker_cli_run(capsys, "audit", "public-key")
    assert run.code == 0, run
    assert run.out == signer.public_pem
    assert f"audit key id {signer.key_id}" in run.err
    monkeypatch.delenv("BROKER_AUDIT_SIGNING_KEY")
    other = AuditSigner.generate()
    key_file.write_text(other.private_pem())
    key_file.chmod(0o600)
    from_file = await broker_cli_run(capsys, "audit", "public-key")
    assert from_file.out == other.public_pem
    _assert_no_private_key(missing, run, from_file, signers=[signer, other])


def _assert_no_private_key(*runs: Run, signers: list[AuditSigner]) -> None:
    for run in runs:
        text = run.out + run.err
        assert "PRIVATE KEY" not in text
        for signer in signers:
            body = "".join(signer.private_pem().splitlines()[1:-1])
            raw = signer.private_key.private_bytes_raw()
            assert body not in text and raw.hex() not in text


async def test_no_command_prints_private_key_material(
    stack: AuditStack,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BROKER_AUDIT_SIGNING_KEY", stack.signer.private_pem())
    export = tmp_path / "all.jsonl"
    private = tmp_path / "private.pem"
    private.write_text(stack.signer.private_pem())
    runs = [
        await broker_cli_run(capsys, "audit", "public-key"),
        await broker_cli_run(capsys, "audit", "checkpoint"),
        await broker_cli_run(capsys, "audit", "export"),
        await broker_cli_run(capsys, "audit", "export", "-o", str(export)),
        await broker_cli_run(capsys, "audit", "verify"),
        await broker_cli_run(capsys, "audit", "verify", "--public-key", str(private)),
        await broker_cli_run(
            capsys, "audit", "verify", "--file", str(export), "--public-key", str(private)
        ),
        await verify(capsys, stack, "--file", str(export)),
    ]
    await _resign_unknown_key(stack)
    runs.append(await verify(capsys, stack))
    assert [run.code for run in runs] == [0, 0, 0, 0, 0, 2, 2, 0, 1]
    _assert_no_private_key(*runs, signers=[stack.signer])
    assert "PRIVATE KEY" not in export.read_text()


async def test_checkpoint_prints_the_signed_head(
    stack: AuditStack, capsys: pytest.CaptureFixture[str]
) -> None:
    run = await broker_cli_run(capsys, "audit", "checkpoint")
    assert run.code == 0, run
    checkpoint = json.loads(run.out)
    (last,) = (await rows(stack.url))[-1:]
    assert (checkpoint["seq"], checkpoint["hash"], checkpoint["signature"]) == (
        RECORDS,
        last.hash,
        last.signature,
    )
    assert (await verify(capsys, stack, "--expect-head", run.out.strip())).code == 0


# --- a chain a running broker wrote; a real process -------------------------------------------


async def test_a_running_brokers_chain_verifies_and_its_export_offline(
    broker: RunningBroker,
    db_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The chain a broker writes as it works (its key, an API key made, a session made)
    verifies with its pinned key, from the database and as an export; an edited session
    record fails at its seq."""
    await broker.new_key("sessions:create", name="audited")
    session = await broker.create_session(tools=["lookup_order"])
    await broker.app[app_state.AUDIT].chain_pending()
    cli_environment(monkeypatch, db_url, tmp_path)
    key = tmp_path / "audit.pub"
    key.write_text(AUDIT_SIGNER.public_pem)
    run = await broker_cli_run(capsys, "audit", "verify", "--public-key", str(key))
    assert run.code == 0, run
    assert f"{AUDIT_SIGNER.key_id} (pinned with --public-key)" in run.out
    stored = await rows(db_url)
    kinds = [row.kind for row in stored]
    assert kinds[0] == "audit.key_added"
    assert {"key.created", "session.created"} <= set(kinds), kinds
    export = tmp_path / "broker.jsonl"
    assert (await broker_cli_run(capsys, "audit", "export", "-o", str(export))).code == 0
    offline = await broker_cli_run(
        capsys, "audit", "verify", "--file", str(export), "--public-key", str(key)
    )
    assert offline.code == 0, offline
    created = next(
        row.seq
        for row in stored
        if row.kind == "session.created" and row.session_id == session["id"]
    )
    await execute(
        db_url,
        "UPDATE audit_records SET body = REPLACE(body, 'lookup_order', 'drop_tables')"
        f" WHERE seq = {created}",
    )
    run = await broker_cli_run(capsys, "audit", "verify", "--public-key", str(key))
    assert broken_at(run) == (created, "body_mismatch")


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)


async def test_the_installed_command_verifies_in_its_own_process(
    stack: AuditStack, tmp_path: Path
) -> None:
    broker_bin = Path(sys.executable).with_name("broker")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env |= {"BROKER_DATABASE_URL": stack.url, "BROKER_SIGNING_KEY_FILE": str(tmp_path / "s.key")}
    argv = [str(broker_bin), "audit", "verify", "--public-key", str(stack.public_key_file)]
    done = await asyncio.to_thread(_run, argv, env)
    assert done.returncode == 0, done
    assert f"audit chain intact: {RECORDS} records" in done.stdout
    assert done.stderr == ""
    await _delete(stack)
    done = await asyncio.to_thread(_run, argv, env)
    assert done.returncode == 1, done
    assert "audit chain broken at seq 13: gap (seq 13 is missing)" in done.stdout
