"""The audit records of tool calls: what each ``tool_calls`` change says in the trail.

Each is added (:func:`broker.audit.trail.add`) in the transaction of the row change it
describes, so the row and its record commit together or not at all. Bodies hold arguments
and outputs as the row shows them: a tool's ``redact`` fields are keyed hashes
(:mod:`broker.tools.redaction`), never the raw values.

``policy`` says what decided a call: for a denial, the check that refused it and the
session's allowlist; for a granted call (its ``succeeded``/``failed`` record), the allowlist
and the checks it passed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping
from typing import Any, Final

from broker.audit.records import Actor, AuditEntry, AuditKind
from broker.db.models import ToolCallStatus, ToolPath
from broker.tools.budget import ALLOWED, DENIED
from broker.tools.codes import ToolErrorCode

__all__ = [
    "GRANTED_CHECKS",
    "acknowledged",
    "cancelled",
    "check_of",
    "denied",
    "output_injected",
    "requested",
    "settled",
]

_CHECKS: Final = {
    ToolErrorCode.CALL_ID_INVALID: "call_id",
    ToolErrorCode.SESSION_NOT_FOUND: "session",
    ToolErrorCode.TOOL_NOT_ALLOWED: "allowlist",
    ToolErrorCode.TOOL_UNKNOWN: "tool_unknown",
    ToolErrorCode.ARGUMENTS_TOO_LARGE: "argument_size",
    ToolErrorCode.ARGUMENTS_NOT_JSON: "json",
    ToolErrorCode.ARGUMENTS_NOT_OBJECT: "json",
    ToolErrorCode.ARGUMENTS_INVALID: "schema",
    ToolErrorCode.TOOL_MISCONFIGURED: "schema",
    ToolErrorCode.TOOL_DISABLED: "kill_switch",
    ToolErrorCode.TOOL_CIRCUIT_OPEN: "breaker",
    ToolErrorCode.TOOL_BUDGET_EXHAUSTED: "budget",
    ToolErrorCode.TOO_MANY_CONCURRENT_TOOLS: "concurrency",
}
MAX_DEPTH: Final = 32
"""How deep a record's body may nest (the arguments or output in it a little less)."""
_VALUES: Final = frozenset(code.value for code in ToolErrorCode)
GRANTED_CHECKS: Final = (
    "allowlist",
    "tool_unknown",
    "argument_size",
    "json",
    "schema",
    "kill_switch",
    "breaker",
    "budget",
    "concurrency",
)
"""The checks a granted call passed, in the order :mod:`broker.tools.verdict` makes them."""


def check_of(code: str) -> str:
    """The check a denial's code comes from (its code itself if none is known)."""
    return _CHECKS.get(ToolErrorCode(code), code) if code in _VALUES else code


def _clean(value: Any, depth: int = 0) -> Any:
    """``value`` made canonical-JSON safe: a record must never fail its transaction.

    The model (or a page) chooses tool names, arguments and, through the tool, outputs: a
    lone surrogate, a NaN or a value nested a thousand deep (past the recursion limit of
    whatever walks it next) would make the audit insert, and with it the row change it
    describes, fail. What is nested deeper than :data:`MAX_DEPTH` is replaced by a marker.
    """
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping | list | tuple) and depth >= MAX_DEPTH:
        return {"truncated": f"nested deeper than {MAX_DEPTH} levels"}
    if isinstance(value, Mapping):
        return {_clean(str(key)): _clean(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(item, depth + 1) for item in value]
    return _clean(str(value))


def _entry(
    kind: AuditKind,
    actor: str,
    session_id: str,
    tool: str,
    body: dict[str, Any],
    decision: str | None = None,
) -> AuditEntry:
    return AuditEntry(
        kind,
        actor,
        _clean(body),
        session_id=session_id,
        # A column, not canonical JSON: no NUL (PostgreSQL refuses it in text).
        tool=_clean(tool).replace("\x00", "\ufffd"),
        decision=decision,
    )


def _json_or_text(text: str | None) -> Any:
    """A stored text as a JSON value when it is one (bodies are canonical JSON), else as is."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def _path_actor(path: ToolPath | str) -> str:
    return Actor.PAGE if str(path) == ToolPath.BRIDGE.value else Actor.SIDEBAND


def requested(
    session_id: str,
    call_id: str,
    tool: str,
    arguments_shown: str,
    path: ToolPath | str,
    response_id: str | None,
    item_id: str | None,
) -> AuditEntry:
    """A call first recorded, by the path that reported it (the page, or the sideband)."""
    return _entry(
        AuditKind.TOOL_REQUESTED,
        _path_actor(path),
        session_id,
        tool,
        {
            "call_id": call_id,
            "tool": tool,
            "path": str(path),
            "arguments": _json_or_text(arguments_shown),
            "response_id": response_id,
            "item_id": item_id,
        },
    )


def denied(
    session_id: str,
    call_id: str,
    tool: str,
    path: ToolPath | str,
    code: str,
    output: str,
    allowlist: Collection[str] | None,
) -> AuditEntry:
    """A verdict that refused the call (it never ran)."""
    policy: dict[str, Any] = {"check": check_of(code)}
    if allowlist is not None:
        policy["allowlist"] = sorted(allowlist)
    return _entry(
        AuditKind.TOOL_DENIED,
        Actor.BROKER,
        session_id,
        tool,
        {
            "call_id": call_id,
            "tool": tool,
            "path": str(path),
            "code": str(code),
            "output": _json_or_text(output),
            "policy": policy,
        },
        DENIED,
    )


def settled(
    session_id: str,
    call_id: str,
    tool: str,
    path: ToolPath | str | None,
    status: ToolCallStatus,
    output_shown: str | None,
    error: str | None,
    duration_ms: int | None,
    *,
    allowlist: Collection[str] | None = None,
    granted: bool = True,
) -> AuditEntry:
    """A call's outcome: ``tool.succeeded``, else ``tool.failed``.

    ``allowlist``: the one the grant applied (``None``: not known here, e.g. a call a
    restart's recovery settles). ``granted`` false: the call failed before any verdict
    (its deciding transaction failed), so the record claims no decision.
    """
    body: dict[str, Any] = {
        "call_id": call_id,
        "tool": tool,
        "path": None if path is None else str(path),
        "status": status.value,
        "output": _json_or_text(output_shown),
        "error": None if error is None else str(error),
        "duration_ms": duration_ms,
    }
    if granted:
        policy: dict[str, Any] = {"checks": list(GRANTED_CHECKS)}
        if allowlist is not None:
            policy["allowlist"] = sorted(allowlist)
        body["policy"] = policy
    return _entry(
        AuditKind.TOOL_SUCCEEDED if status is ToolCallStatus.SUCCEEDED else AuditKind.TOOL_FAILED,
        Actor.BROKER,
        session_id,
        tool,
        body,
        ALLOWED if granted else None,
    )


def cancelled(session_id: str, call_id: str, tool: str, reason: str) -> AuditEntry:
    """A call that will never run: the model's response did not complete."""
    return _entry(
        AuditKind.TOOL_CANCELLED,
        Actor.BROKER,
        session_id,
        tool,
        {"call_id": call_id, "tool": tool, "reason": reason},
    )


def output_injected(
    session_id: str, call_id: str, tool: str, output_item_id: str | None
) -> AuditEntry:
    """The call's output is at the provider (sent on the sideband, its echo seen)."""
    return _entry(
        AuditKind.TOOL_OUTPUT_INJECTED,
        Actor.SIDEBAND,
        session_id,
        tool,
        {"call_id": call_id, "tool": tool, "output_item_id": output_item_id},
    )


def acknowledged(session_id: str, call_id: str, tool: str, response_id: str | None) -> AuditEntry:
    """The model was asked (out of band) to say a long call is under way.

    The call ran past its ``ack_after_ms``; its real output still comes, once.
    """
    return _entry(
        AuditKind.TOOL_ACKNOWLEDGED,
        Actor.BROKER,
        session_id,
        tool,
        {"call_id": call_id, "tool": tool, "response_id": response_id},
    )
