"""The stable codes a denied or failed tool call carries (in its output and its ``error``).

They are part of the contract with the model's instructions, dashboards and tool backends:
add codes, never rename them. ``StrEnum`` so a code is also the plain string stored and sent.
"""

from __future__ import annotations

import enum


class ToolErrorCode(enum.StrEnum):
    """Why a call was denied (never ran) or failed (ran, or may have, and did not succeed)."""

    # Denied by policy: nothing was executed.
    CALL_ID_INVALID = "call_id_invalid"
    """The call's id is not 1-128 characters of ``A-Z a-z 0-9 _ . -``
    (:mod:`broker.tools.call_ids`); checked first, on both paths."""
    TOOL_NOT_ALLOWED = "tool_not_allowed"
    """The tool is not in the session's allowlist (whether or not the broker knows it)."""
    TOOL_UNKNOWN = "tool_unknown"
    ARGUMENTS_TOO_LARGE = "arguments_too_large"
    """Over the session's ``max_argument_bytes`` (UTF-8 bytes of the arguments text)."""
    ARGUMENTS_NOT_JSON = "arguments_not_json"
    ARGUMENTS_NOT_OBJECT = "arguments_not_object"
    ARGUMENTS_INVALID = "arguments_invalid"
    """Valid JSON that fails the tool's JSON Schema."""
    TOOL_BUDGET_EXHAUSTED = "tool_budget_exhausted"
    """The session already started ``max_tool_calls`` calls."""
    TOO_MANY_CONCURRENT_TOOLS = "too_many_concurrent_tools"
    """``max_concurrent_tools`` calls of the session are running right now."""
    SESSION_NOT_FOUND = "session_not_found"
    TOOL_DISABLED = "tool_disabled"
    """An operator switched the tool off for every session (the kill switch)."""
    TOOL_CIRCUIT_OPEN = "tool_circuit_open"
    """The tool failed repeatedly and is paused (:mod:`broker.tools.breaker`); the message
    says when it will be tried again."""

    # Failed while (or after) running.
    TOOL_TIMEOUT = "tool_timeout"
    TOOL_UNREACHABLE = "tool_unreachable"
    TOOL_HTTP_ERROR = "tool_http_error"
    TOOL_REDIRECT_REFUSED = "tool_redirect_refused"
    TOOL_RESPONSE_TOO_LARGE = "tool_response_too_large"
    TOOL_BAD_RESPONSE = "tool_bad_response"
    """A 2xx whose body breaks the webhook contract: empty, not text in its charset, or
    declared JSON (``Content-Type``) and not JSON."""
    OUTPUT_TOO_LARGE = "output_too_large"
    """An in-process tool returned more than the output limit."""
    TOOL_MISCONFIGURED = "tool_misconfigured"
    """The tool's own schema could not be applied (e.g. a ``$ref`` that resolves nowhere)."""
    TOOL_ERROR = "tool_error"
    """An in-process tool raised."""
    OUTCOME_UNKNOWN = "outcome_unknown"
    """The broker stopped mid-run: the tool may have acted; it is never run again."""
    TOOL_REQUEST_INVALID = "tool_request_invalid"
    """The call could not be made into a request to its tool backend (a value it carries
    cannot go into a header, say); nothing was sent. The call's fault, not the tool's: it
    never counts against the tool's circuit breaker."""
