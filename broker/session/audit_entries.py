"""The audit records of a session's life and of operators' actions on it (issue 20).

Each builder returns the :class:`~broker.audit.records.AuditEntry` its caller writes in the
transaction of the change it records (:func:`broker.audit.trail.add`). What goes in a body is
chosen here, in one place, so a reviewer reading one finds every session record's shape:

- ``session.created``: the server-owned config the call will run with, its limits and
  policies, and the app's metadata (the app's own data, at most 32 small values, which the
  app chose to attach to the session). The **instructions** are recorded as their SHA-256 and
  length only: they can be 32,000 characters of the app's private prompt, and the trail is
  exported to reviewers; the digest still proves which prompt ran (a reviewer who holds it
  can check) and that an operator's change later replaced it.
- ``session.offered``: the provider call the offer created.
- ``session.ended``: how it ended and the usage the provider reported, once per session.
- ``ops.hangup`` / ``ops.instructions_updated``: the operator's key is the actor.
- ``call.referred``: a phone call transferred (SIP ``refer``) by an operator's key: the
  provider's call id and the target URI.
- ``session.reconfigured``: a live call's new config (``POST /api/v1/sessions/{id}/config``
  or its ``/instructions`` alias), by the key that changed it: the tool names before and
  after, and the instructions before and after as digests.

No body holds a secret: not the client secret, not an API key, not a hash of one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from broker.audit.records import Actor, AuditEntry, AuditKind
from broker.db.models import SessionRow
from broker.db.usage import Usage
from broker.session.end_reason import EndReason

__all__ = [
    "call_referred",
    "end_actor",
    "instructions_digest",
    "ops_hangup",
    "ops_instructions",
    "session_created",
    "session_ended",
    "session_offered",
    "session_reconfigured",
]


def instructions_digest(instructions: str) -> dict[str, Any]:
    """Instructions as the trail keeps them: their SHA-256 (UTF-8) and length, not the text."""
    return {
        "sha256": hashlib.sha256(instructions.encode("utf-8")).hexdigest(),
        "chars": len(instructions),
    }


def session_created(row: SessionRow) -> AuditEntry:
    """``session.created``, by the key that created it (the row as it is first stored)."""
    return AuditEntry(
        AuditKind.SESSION_CREATED,
        Actor.key(row.owner_key_id),
        {
            "provider": row.provider,
            "model": row.model,
            "voice": row.voice,
            "instructions": instructions_digest(row.instructions),
            "tools": list(row.tools),
            "sideband": row.sideband_enabled,
            "limits": {
                "max_duration_s": row.max_duration_s,
                "idle_timeout_s": row.idle_timeout_s,
                "max_tool_calls": row.max_tool_calls,
                "max_concurrent_tools": row.max_concurrent_tools,
                "max_argument_bytes": row.max_argument_bytes,
            },
            "tamper_policy": row.tamper_policy,
            "page_items": row.page_items,
            "page_responses": row.page_responses,
            "input_transcription": (
                None if row.input_transcription is None else dict(row.input_transcription)
            ),
            "metadata": dict(row.metadata_),
        },
        session_id=row.id,
    )


def session_offered(
    session_id: str, call_id: str, provider: str, instance_id: str | None
) -> AuditEntry:
    """``session.offered``: the page's offer made the provider call ``call_id``."""
    return AuditEntry(
        AuditKind.SESSION_OFFERED,
        Actor.PAGE,
        {"call_id": call_id, "provider": provider, "instance_id": instance_id},
        session_id=session_id,
    )


def end_actor(reason: EndReason) -> str:
    """Who ended a session, as far as its reason says.

    The page's hangup is the page's; a call the provider closed (the user left, the
    provider's own limit) was seen on the sideband; every other end is the broker's decision
    (a limit, a tamper policy, a sweep, a failed offer). An operator's hangup names the key,
    which the reason alone does not: its callers pass it (:func:`session_ended`'s ``actor``).
    """
    if reason is EndReason.HANGUP:
        return Actor.PAGE
    if reason in (EndReason.PROVIDER_CLOSED, EndReason.CALL_GONE):
        return Actor.SIDEBAND
    return Actor.BROKER


def session_ended(row: SessionRow, reason: EndReason, actor: str | None = None) -> AuditEntry:
    """``session.ended``, from the row as its end left it (state, end reason, usage)."""
    return AuditEntry(
        AuditKind.SESSION_ENDED,
        actor or end_actor(reason),
        {
            "state": row.state,
            "end_reason": row.end_reason,
            "call_id": row.call_id,
            "usage": Usage.from_columns(row).as_json(),
        },
        session_id=row.id,
    )


def ops_hangup(session_id: str, by_key: str, why: str, call_id: str | None) -> AuditEntry:
    """``ops.hangup``: an operator ordered the call hung up, saying ``why``."""
    return AuditEntry(
        AuditKind.OPS_HANGUP,
        Actor.key(by_key),
        {"reason": why, "call_id": call_id},
        session_id=session_id,
    )


def ops_instructions(session_id: str, by_key: str, instructions: str) -> AuditEntry:
    """``ops.instructions_updated``: the new instructions' digest (see the module docstring)."""
    return AuditEntry(
        AuditKind.OPS_INSTRUCTIONS,
        Actor.key(by_key),
        {"instructions": instructions_digest(instructions)},
        session_id=session_id,
    )


def session_reconfigured(
    session_id: str,
    by_key: str,
    *,
    tools: tuple[Sequence[str], Sequence[str]],
    instructions: tuple[str, str],
) -> AuditEntry:
    """``session.reconfigured``: the (before, after) tool names and instructions' digests."""
    return AuditEntry(
        AuditKind.SESSION_RECONFIGURED,
        Actor.key(by_key),
        {
            "tools": {"before": list(tools[0]), "after": list(tools[1])},
            "instructions": {
                "before": instructions_digest(instructions[0]),
                "after": instructions_digest(instructions[1]),
            },
        },
        session_id=session_id,
    )


def call_referred(session_id: str, by_key: str, call_id: str, target_uri: str) -> AuditEntry:
    """``call.referred``: an operator transferred the phone call and the provider took it."""
    return AuditEntry(
        AuditKind.CALL_REFERRED,
        Actor.key(by_key),
        {"call_id": call_id, "target_uri": target_uri},
        session_id=session_id,
    )
