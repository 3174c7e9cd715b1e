"""Verifying an audit chain: from the database or an export, with public keys alone.

:class:`ChainVerifier` takes records in ``seq`` order and stops at the first bad one, naming
its ``seq`` and why. Per record, in this order:

1. ``seq`` follows the previous one (``gap``: a record is missing; ``out_of_order``);
2. ``prev_hash`` is the previous record's ``hash`` (``broken_link``: reordered or replaced);
3. ``hash`` is ``sha256(prev_hash ‖ header)`` (``hash_mismatch``: a header field edited);
4. the key id names a trusted key (``unknown_key``) and the signature verifies
   (``bad_signature``: re-signed, or the hash rewritten);
5. the body's canonical JSON hashes to ``body_sha256`` (``body_mismatch``); an erased body
   must be announced by a later ``audit.erased`` record (``body_missing``).

At the end, ``expect_head`` (a checkpoint published outside the database) must be in the
chain with the same hash (``truncated``: the newest records were cut off; ``head_mismatch``:
the chain was rewritten from there).

A **filtered** export (one session, a time range) holds some records of the chain, not all:
each is checked on its own (hash, signature, body) and links are checked between records
whose ``seq`` follow each other. It proves each record is authentic, not that none were left
out; an unfiltered export, or the database, proves that (up to the checkpoint).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from broker.audit.records import (
    GENESIS_HASH,
    AuditKind,
    ChainedRecord,
    body_sha256,
    chain_hash,
)
from broker.audit.signing import PublicKeys

__all__ = [
    "ChainVerifier",
    "Checkpoint",
    "Failure",
    "Problem",
    "VerifyReport",
    "verify_records",
]


class Problem(enum.StrEnum):
    UNREADABLE = "unreadable"
    GAP = "gap"
    OUT_OF_ORDER = "out_of_order"
    BROKEN_LINK = "broken_link"
    HASH_MISMATCH = "hash_mismatch"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    BODY_MISMATCH = "body_mismatch"
    BODY_MISSING = "body_missing"
    TRUNCATED = "truncated"
    HEAD_MISMATCH = "head_mismatch"
    BAD_CHECKPOINT = "bad_checkpoint"


@dataclass(frozen=True)
class Failure:
    seq: int | None
    problem: Problem
    detail: str

    def __str__(self) -> str:
        where = f"seq {self.seq}" if self.seq is not None else "the log"
        return f"{where}: {self.problem} ({self.detail})"


@dataclass(frozen=True)
class Checkpoint:
    """A chain head published outside the database: the head record's seq, hash, signature."""

    seq: int
    hash: str
    key_id: str
    signature: str
    at: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "audit.checkpoint",
            "seq": self.seq,
            "hash": self.hash,
            "key_id": self.key_id,
            "signature": self.signature,
            "at": self.at,
        }

    @classmethod
    def from_json(cls, data: Any) -> Checkpoint:
        """Raises ValueError unless ``data`` is a checkpoint object."""
        if not isinstance(data, dict):
            raise ValueError("a checkpoint is a JSON object")
        try:
            seq, digest = data["seq"], data["hash"]
            key_id, signature = data["key_id"], data["signature"]
        except KeyError as exc:
            raise ValueError(f"a checkpoint needs {exc.args[0]!r}") from None
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise ValueError("a checkpoint's seq is a positive integer")
        if not all(isinstance(v, str) for v in (digest, key_id, signature)):
            raise ValueError("a checkpoint's hash, key_id and signature are strings")
        return cls(seq, digest, key_id, signature, str(data.get("at") or ""))

    @classmethod
    def newest_in(cls, text: str) -> Checkpoint:
        """The last checkpoint of a checkpoint file (JSON lines) or a single JSON object."""
        lines = [line for line in text.splitlines() if line.strip()]
        if not lines:
            raise ValueError("no checkpoint found")
        try:
            return cls.from_json(json.loads(lines[-1]))
        except json.JSONDecodeError as exc:
            raise ValueError(f"the last checkpoint is not JSON: {exc.msg}") from None


@dataclass
class VerifyReport:
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    last_hash: str | None = None
    links: int = 0
    """Links checked (``prev_hash`` against the previous record's hash)."""
    erased: list[int] = field(default_factory=list)
    erasures: int = 0
    """``audit.erased`` records seen."""
    keys: set[str] = field(default_factory=set)
    failure: Failure | None = None
    checkpoint: Checkpoint | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None


class ChainVerifier:
    """Checks records one at a time (``seq`` order); stops at the first failure.

    Args:
        keys: the trusted public keys.
        contiguous: the records are the whole chain from its start (the database, an
            unfiltered export): a gap or a first record other than ``seq`` 1 fails.
    """

    def __init__(self, keys: PublicKeys, *, contiguous: bool = True) -> None:
        self._keys = keys
        self._contiguous = contiguous
        self.report = VerifyReport()
        self._prev: ChainedRecord | None = None
        self._erased: list[ChainedRecord] = []
        self._announced: list[tuple[int, str | None, int]] = []
        self._hash_at: dict[int, str] = {}
        self._watch: int | None = None

    def expect(self, checkpoint: Checkpoint) -> None:
        """Check ``checkpoint`` at the end (call before the records are added)."""
        self.report.checkpoint = checkpoint
        self._watch = checkpoint.seq

    @property
    def failed(self) -> bool:
        return self.report.failure is not None

    def fail(self, seq: int | None, problem: Problem, detail: str) -> None:
        if self.report.failure is None:
            self.report.failure = Failure(seq, problem, detail)

    def add_line(self, line: str, number: int) -> None:
        """One export line (``number`` counts from 1, for the message)."""
        if self.failed:
            return
        try:
            record = ChainedRecord.from_json(json.loads(line))
        except (ValueError, RecursionError) as exc:
            seq = self._prev.seq + 1 if self._prev is not None else None
            self.fail(seq, Problem.UNREADABLE, f"line {number}: {exc}")
            return
        self.add(record)

    def add(self, record: ChainedRecord) -> None:
        if self.failed:
            return
        report = self.report
        prev = self._prev
        seq = record.seq
        if prev is None:
            if self._contiguous and seq != 1:
                self.fail(1, Problem.GAP, f"the chain starts at seq {seq}, not 1")
                return
            if seq == 1 and record.prev_hash != GENESIS_HASH:
                self.fail(seq, Problem.BROKEN_LINK, "the first record does not start the chain")
                return
        else:
            if seq <= prev.seq:
                self.fail(seq, Problem.OUT_OF_ORDER, f"seq {seq} comes after seq {prev.seq}")
                return
            if seq != prev.seq + 1:
                if self._contiguous:
                    self.fail(prev.seq + 1, Problem.GAP, f"seq {prev.seq + 1} is missing")
                    return
            elif record.prev_hash != prev.hash:
                self.fail(seq, Problem.BROKEN_LINK, "prev_hash is not the previous record's hash")
                return
            else:
                report.links += 1
        if not _is_hex(record.prev_hash, 64) or not _is_hex(record.hash, 64):
            self.fail(seq, Problem.HASH_MISMATCH, "a hash is not 64 lowercase hex digits")
            return
        if chain_hash(record.prev_hash, record.header()) != record.hash:
            self.fail(seq, Problem.HASH_MISMATCH, "the hash does not match the record")
            return
        if record.key_id not in self._keys:
            self.fail(seq, Problem.UNKNOWN_KEY, f"signed by key {record.key_id!r}, not trusted")
            return
        if not _is_hex(record.signature, 128) or not self._keys.verifies(
            record.key_id, bytes.fromhex(record.hash), bytes.fromhex(record.signature)
        ):
            self.fail(seq, Problem.BAD_SIGNATURE, f"not signed by key {record.key_id}")
            return
        if record.body_text is None:
            self._erased.append(record)
            report.erased.append(seq)
        elif body_sha256(record.body_text) != record.body_sha256:
            self.fail(seq, Problem.BODY_MISMATCH, "the body does not match body_sha256")
            return
        elif record.kind == AuditKind.AUDIT_ERASED:
            self._note_erasure(record)
        report.keys.add(record.key_id)
        report.records += 1
        if report.first_seq is None:
            report.first_seq = seq
        report.last_seq, report.last_hash = seq, record.hash
        if self._watch == seq:
            self._hash_at[seq] = record.hash
        self._prev = record

    def _note_erasure(self, record: ChainedRecord) -> None:
        try:
            body = record.body
        except ValueError:
            body = None
        if not isinstance(body, dict):
            # Signed but not an object (only a holder of a trusted key could write it):
            # it announces nothing, so the bodies it claims to erase fail as missing.
            body = {}
        through = body.get("through_seq")
        if isinstance(through, int) and not isinstance(through, bool):
            self._announced.append((record.seq, body.get("session_id"), through))
        self.report.erasures += 1

    def finish(self) -> VerifyReport:
        if not self.failed:
            for record in self._erased:
                if not any(
                    at > record.seq and session == record.session_id and record.seq <= through
                    for at, session, through in self._announced
                ):
                    self.fail(
                        record.seq,
                        Problem.BODY_MISSING,
                        "the body is gone and no audit.erased record announces it",
                    )
                    break
        checkpoint = self.report.checkpoint
        if not self.failed and checkpoint is not None:
            self._check(checkpoint)
        return self.report

    def _check(self, checkpoint: Checkpoint) -> None:
        if not _is_hex(checkpoint.hash, 64) or not _is_hex(checkpoint.signature, 128):
            self.fail(checkpoint.seq, Problem.BAD_CHECKPOINT, "malformed hash or signature")
            return
        if not self._keys.verifies(
            checkpoint.key_id, bytes.fromhex(checkpoint.hash), bytes.fromhex(checkpoint.signature)
        ):
            self.fail(checkpoint.seq, Problem.BAD_CHECKPOINT, "its signature does not verify")
            return
        last = self.report.last_seq or 0
        if last < checkpoint.seq:
            self.fail(
                last + 1,
                Problem.TRUNCATED,
                f"the checkpoint names seq {checkpoint.seq}; the log ends at seq {last}",
            )
            return
        seen = self._hash_at.get(checkpoint.seq)
        if seen is None:
            # A filtered export need not hold the checkpoint's record.
            if self._contiguous:
                self.fail(checkpoint.seq, Problem.TRUNCATED, "the checkpoint's record is missing")
            return
        if seen != checkpoint.hash:
            self.fail(
                checkpoint.seq,
                Problem.HEAD_MISMATCH,
                "the record at the checkpoint's seq has another hash: rewritten",
            )


def verify_records(
    records: Iterable[ChainedRecord],
    keys: PublicKeys,
    *,
    contiguous: bool = True,
    expect_head: Checkpoint | None = None,
) -> VerifyReport:
    verifier = ChainVerifier(keys, contiguous=contiguous)
    if expect_head is not None:
        verifier.expect(expect_head)
    for record in records:
        verifier.add(record)
        if verifier.failed:
            break
    return verifier.finish()


def _is_hex(text: str, length: int) -> bool:
    return len(text) == length and all(c in "0123456789abcdef" for c in text)


def checkpoint_of(record: ChainedRecord | Mapping[str, Any], at: str = "") -> Checkpoint:
    """The checkpoint that publishes ``record`` as the chain's head."""
    if isinstance(record, ChainedRecord):
        return Checkpoint(record.seq, record.hash, record.key_id, record.signature, at)
    return Checkpoint(record["seq"], record["hash"], record["key_id"], record["signature"], at)
