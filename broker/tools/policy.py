"""Whether a function call may run: allowlist, tool known, arguments valid JSON matching the schema.

Denials are decisions, not exceptions: the model gets an explanation and the record says why.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Final

from jsonschema.exceptions import best_match

from broker.tools.registry import ToolRegistry, ToolSpec

MAX_ARGUMENT_BYTES: Final = 32 * 1024


@dataclass(frozen=True)
class Decision:
    """``allowed`` with the parsed arguments and the tool, or a denial with a stable code."""

    allowed: bool
    code: str | None = None
    message: str | None = None
    tool: ToolSpec | None = None
    arguments: dict[str, Any] | None = None


def _deny(code: str, message: str) -> Decision:
    return Decision(allowed=False, code=code, message=message)


def decide(
    registry: ToolRegistry, allowed_tools: Collection[str], name: str, arguments: str
) -> Decision:
    """Check one call against the session's allowlist and the tool's schema."""
    if name not in allowed_tools:
        return _deny("tool_not_allowed", f"the tool '{name}' is not available in this session")
    tool = registry.get(name)
    if tool is None:
        return _deny("tool_unknown", f"the tool '{name}' does not exist")
    if len(arguments.encode()) > MAX_ARGUMENT_BYTES:
        return _deny("arguments_too_large", f"arguments exceed {MAX_ARGUMENT_BYTES} bytes")
    try:
        parsed = strict_json_loads(arguments) if arguments.strip() else {}
    except (ValueError, RecursionError):
        return _deny("arguments_not_json", "the arguments are not valid JSON")
    if not isinstance(parsed, dict):
        return _deny("arguments_not_object", "the arguments must be a JSON object")
    error = best_match(tool.validator.iter_errors(parsed))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return _deny("arguments_invalid", f"arguments fail the schema at {where}: {error.message}")
    return Decision(allowed=True, tool=tool, arguments=parsed)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json_loads(text: str | bytes) -> Any:
    """``json.loads`` without the NaN/Infinity extensions (databases and tools reject them).

    Raises:
        ValueError: not strict JSON. RecursionError: nested too deeply (callers catch both).
    """
    return json.loads(text, parse_constant=_reject_constant)


def error_output(code: str, message: str) -> str:
    """The output a denied or failed call gets: JSON the model can read and explain."""
    return json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":"))
