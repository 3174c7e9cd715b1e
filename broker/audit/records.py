"""What an audit record is: its kinds and actors, the header its chain hash covers, its line.

A record's **header** is the canonical JSON (RFC 8785) of every field but the body, plus the
SHA-256 of the body's canonical JSON (``body_sha256``) and the id of the signing key::

    hash      = sha256(prev_hash ‖ canonical(header))        (prev_hash as 32 raw bytes)
    signature = Ed25519(hash)                                 (over the 32 raw bytes)

The chain covers the body only through ``body_sha256``: a body can be erased (retention, a
person's request) and the chain still verifies; the erasure itself is a later record
(``audit.erased``), so a missing body that no erasure announces is tampering.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final

from broker.audit.canonical import canonical, canonical_text

__all__ = [
    "GENESIS_HASH",
    "Actor",
    "AuditEntry",
    "AuditKind",
    "ChainedRecord",
    "RecordFormatError",
    "at_text",
    "body_sha256",
    "chain_hash",
    "header",
]

FORMAT_VERSION: Final = 1
GENESIS_HASH: Final = "0" * 64
"""The ``prev_hash`` of the first record."""


class AuditKind(enum.StrEnum):
    TENANT_CREATED = "tenant.created"
    """A team sharing the broker was added: ``{tenant, name}`` (:mod:`broker.auth.tenants`)."""
    SESSION_CREATED = "session.created"
    SESSION_OFFERED = "session.offered"
    SESSION_ENDED = "session.ended"
    SESSION_ERASED = "session.erased"
    """A session's content was erased (retention, or ``DELETE /api/v1/sessions/{id}``)."""
    RETENTION_CHANGED = "tenant.retention_changed"
    """A tenant's own retention period set or cleared: ``{tenant, before, after}``."""
    SIDEBAND_ATTACHED = "sideband.attached"
    SIDEBAND_LOST = "sideband.lost"
    CALL_HANDED_OVER = "call.handed_over"
    TOOL_REQUESTED = "tool.requested"
    TOOL_DENIED = "tool.denied"
    TOOL_SUCCEEDED = "tool.succeeded"
    TOOL_FAILED = "tool.failed"
    TOOL_CANCELLED = "tool.cancelled"
    TOOL_OUTPUT_INJECTED = "tool.output_injected"
    TAMPER_DETECTED = "tamper.detected"
    OPS_HANGUP = "ops.hangup"
    OPS_TOOL_DISABLED = "ops.tool_disabled"
    OPS_TOOL_ENABLED = "ops.tool_enabled"
    OPS_INSTRUCTIONS = "ops.instructions_updated"
    SESSION_RECONFIGURED = "session.reconfigured"
    """A live call's instructions and/or tool set changed (``POST …/config``): ``{before,
    after}`` as instructions' sha256 and length, and tool names."""
    TRUSTED_CONNECTED = "trusted.connected"
    """A trusted session's backend opened its WebSocket through the broker."""
    TRUSTED_DISCONNECTED = "trusted.disconnected"
    TOOL_FORWARDED = "tool.forwarded"
    """A trusted session's server tool call sent to its backend (``broker.tool_call``)."""
    TOOL_ACKNOWLEDGED = "tool.acknowledged"
    """A long-running call's "working on it" response was asked of the model."""
    APPROVAL_REQUESTED = "approval.requested"
    APPROVAL_APPROVED = "approval.approved"
    APPROVAL_DENIED = "approval.denied"
    APPROVAL_EXPIRED = "approval.expired"
    SIP_INCOMING = "sip.incoming"
    """A phone call rang (a verified ``realtime.call.incoming``): ``{call_id, line, action}``,
    the caller as the line's redaction says."""
    CALL_ACCEPTED = "call.accepted"
    CALL_REJECTED = "call.rejected"
    CALL_REFERRED = "call.referred"
    """A phone call handed elsewhere (``refer``): by a line's rule or an operator's transfer."""
    KEY_CREATED = "key.created"
    KEY_REVOKED = "key.revoked"
    QUOTA_CHANGED = "quota.changed"
    """A key's or a tenant's spend caps were set or cleared."""
    QUOTA_EXCEEDED = "quota.exceeded"
    """A spend cap refused a session, or ended a live call at a hard cap."""
    KEY_GRANTS_CHANGED = "key.grants_changed"
    """A key's tool grants replaced: ``{key_id, before, after}``."""
    AUDIT_KEY_ADDED = "audit.key_added"
    """A signing key's first record: its public key, so rotation is in the trail itself."""
    AUDIT_ERASED = "audit.erased"


class Actor:
    """Who did it, as a record's ``actor`` says."""

    PAGE: Final = "page"
    """The browser, through the bridge (untrusted)."""
    SIDEBAND: Final = "sideband"
    """The provider's events on the broker's own connection (the model, the call)."""
    BROKER: Final = "broker"
    """The broker itself (a sweep, a limit, a restart's recovery)."""
    CLI: Final = "cli"
    """The ``broker`` command line (whoever holds the database and the keys)."""

    @staticmethod
    def key(key_id: str) -> str:
        """An API key (an app backend's, an operator's, ``admin``)."""
        return f"key:{key_id}"


def at_text(when: datetime | None = None) -> str:
    """A record's time: UTC, microseconds, fixed width, so text order is time order."""
    moment = (when or datetime.now(UTC)).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def body_sha256(body_text: str) -> str:
    return hashlib.sha256(body_text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class AuditEntry:
    """Something to record; it becomes a :class:`ChainedRecord` when the chainer takes it.

    ``body`` must already be redacted (:mod:`broker.audit.redaction`): it is stored as is.
    ``tool`` and ``decision`` are copied out of the body into columns, for filtering.
    """

    kind: AuditKind
    actor: str
    body: Mapping[str, Any] = field(default_factory=dict)
    session_id: str | None = None
    tool: str | None = None
    decision: str | None = None
    at: str = field(default_factory=at_text)

    def pending_row(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "session_id": self.session_id,
            "kind": str(self.kind),
            "actor": self.actor[:120],
            "tool": None if self.tool is None else self.tool[:100],
            "decision": self.decision,
            "body": canonical_text(dict(self.body)),
        }


def header(
    *,
    seq: int,
    at: str,
    session_id: str | None,
    kind: str,
    actor: str,
    tool: str | None,
    decision: str | None,
    body_sha256: str,
    key_id: str,
) -> dict[str, Any]:
    return {
        "v": FORMAT_VERSION,
        "seq": seq,
        "at": at,
        "session_id": session_id,
        "kind": kind,
        "actor": actor,
        "tool": tool,
        "decision": decision,
        "body_sha256": body_sha256,
        "key_id": key_id,
    }


def chain_hash(prev_hash: str, record_header: Mapping[str, Any]) -> str:
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical(dict(record_header))).hexdigest()


class RecordFormatError(ValueError):
    """A line or row that is not an audit record of this format."""


LINE_FIELDS: Final = frozenset(
    {
        "seq",
        "at",
        "session_id",
        "kind",
        "actor",
        "tool",
        "decision",
        "body",
        "body_sha256",
        "prev_hash",
        "hash",
        "key_id",
        "signature",
    }
)


@dataclass(frozen=True)
class ChainedRecord:
    """One record of the chain, as stored and as exported (one JSON line)."""

    seq: int
    at: str
    session_id: str | None
    kind: str
    actor: str
    tool: str | None
    decision: str | None
    body_text: str | None
    """The body's canonical JSON; ``None`` once erased."""
    body_sha256: str
    prev_hash: str
    hash: str
    key_id: str
    signature: str

    @property
    def erased(self) -> bool:
        return self.body_text is None

    @property
    def body(self) -> dict[str, Any] | None:
        return None if self.body_text is None else json.loads(self.body_text)

    def header(self) -> dict[str, Any]:
        return header(
            seq=self.seq,
            at=self.at,
            session_id=self.session_id,
            kind=self.kind,
            actor=self.actor,
            tool=self.tool,
            decision=self.decision,
            body_sha256=self.body_sha256,
            key_id=self.key_id,
        )

    @classmethod
    def from_row(cls, row: Any, seq: int | None = None) -> ChainedRecord:
        """A record from an ``audit_records`` row, or (``seq`` given) from an outbox row.

        One from the outbox (``audit_pending``) is unsigned: only :meth:`signed` gives it
        its link, hash and signature.
        """
        if seq is None:
            chained = (int(row.seq), row.body_sha256, row.prev_hash, row.hash, row.key_id)
            signature = row.signature
        else:
            chained, signature = (seq, body_sha256(row.body), "", "", ""), ""
        number, digest, prev_hash, hashed, key_id = chained
        return cls(
            seq=number,
            at=row.at,
            session_id=row.session_id,
            kind=row.kind,
            actor=row.actor,
            tool=row.tool,
            decision=row.decision,
            body_text=row.body,
            body_sha256=digest,
            prev_hash=prev_hash,
            hash=hashed,
            key_id=key_id,
            signature=signature,
        )

    def signed(self, prev_hash: str, key_id: str, sign: Callable[[bytes], str]) -> ChainedRecord:
        """This record linked after ``prev_hash`` and signed by ``sign`` (as key ``key_id``)."""
        linked = replace(self, prev_hash=prev_hash, key_id=key_id)
        digest = chain_hash(prev_hash, linked.header())
        return replace(linked, hash=digest, signature=sign(bytes.fromhex(digest)))

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at,
            "session_id": self.session_id,
            "kind": self.kind,
            "actor": self.actor,
            "tool": self.tool,
            "decision": self.decision,
            "body": self.body,
            "body_sha256": self.body_sha256,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
            "key_id": self.key_id,
            "signature": self.signature,
        }

    def line(self) -> str:
        """The export's line: canonical (compact, members sorted), so any changed byte shows."""
        return canonical_text(self.to_json())

    @classmethod
    def from_json(cls, data: Any) -> ChainedRecord:
        """A record from an export line's parsed JSON.

        Raises:
            RecordFormatError: not an object with exactly the record's members, each of its
                type (an extra or a missing member is not a record: nothing unsigned rides
                along).
        """
        if not isinstance(data, dict):
            raise RecordFormatError("not a JSON object")
        if set(data) != LINE_FIELDS:
            extra = sorted(set(data) - LINE_FIELDS)
            missing = sorted(LINE_FIELDS - set(data))
            raise RecordFormatError(f"members differ (extra {extra}, missing {missing})")
        _typed(data, "seq", int)
        for name in ("at", "kind", "actor", "body_sha256", "prev_hash", "hash", "key_id"):
            _typed(data, name, str)
        _typed(data, "signature", str)
        for name in ("session_id", "tool", "decision"):
            if data[name] is not None:
                _typed(data, name, str)
        body = data["body"]
        if body is not None and not isinstance(body, dict):
            raise RecordFormatError("body is neither an object nor null")
        return cls(
            seq=data["seq"],
            at=data["at"],
            session_id=data["session_id"],
            kind=data["kind"],
            actor=data["actor"],
            tool=data["tool"],
            decision=data["decision"],
            body_text=None if body is None else canonical_text(body),
            body_sha256=data["body_sha256"],
            prev_hash=data["prev_hash"],
            hash=data["hash"],
            key_id=data["key_id"],
            signature=data["signature"],
        )


def _typed(data: Mapping[str, Any], name: str, kind: type) -> None:
    value = data[name]
    # bool is an int in Python, never a seq.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise RecordFormatError(f"{name} is not a {kind.__name__}")
