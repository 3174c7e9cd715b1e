"""Whether a function call may run: allowlist, tool known, argument size, strict JSON, schema.

These checks are pure (no I/O). The per-session budget and concurrency limits need the
database and live in :mod:`broker.tools.budget`; the dispatcher applies them after these.
Denials are decisions, not exceptions: the model gets an explanation and the record says why.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Final

from jsonschema.exceptions import ValidationError, best_match
from referencing.exceptions import Unresolvable

from broker.tools.codes import ToolErrorCode
from broker.tools.registry import ToolRegistry, ToolSpec

logger = logging.getLogger(__name__)

MAX_ARGUMENT_BYTES: Final = 32 * 1024
"""Default argument limit when a caller gives none (sessions carry their own)."""
_MAX_WHERE: Final = 80
_MAX_PATH_PART: Final = 32


@dataclass(frozen=True)
class Decision:
    """``allowed`` with the parsed arguments and the tool, or a denial with a stable code."""

    allowed: bool
    code: ToolErrorCode | None = None
    message: str | None = None
    tool: ToolSpec | None = None
    arguments: dict[str, Any] | None = None


def deny(code: ToolErrorCode, message: str) -> Decision:
    """A denial; ``message`` is shown to the model, so it never carries internal details."""
    return Decision(allowed=False, code=code, message=message)


def decide(
    registry: ToolRegistry,
    allowed_tools: Collection[str],
    name: str,
    arguments: str,
    *,
    max_argument_bytes: int = MAX_ARGUMENT_BYTES,
) -> Decision:
    """Check one call against the session's allowlist, its argument limit and the tool's schema.

    The order matters: the allowlist comes first (a tool outside it is refused whatever its
    arguments), and the size check comes before parsing, so an oversized text is never parsed.
    """
    if name not in allowed_tools:
        # The name may be anything the model made up: shown clipped.
        return deny(
            ToolErrorCode.TOOL_NOT_ALLOWED,
            f"the tool '{_clip(name, 64)}' is not available in this session",
        )
    tool = registry.get(name)
    if tool is None:
        return deny(ToolErrorCode.TOOL_UNKNOWN, f"the tool '{_clip(name, 64)}' does not exist")
    if len(arguments.encode("utf-8", "surrogatepass")) > max_argument_bytes:
        return deny(
            ToolErrorCode.ARGUMENTS_TOO_LARGE,
            f"the arguments exceed this session's limit of {max_argument_bytes} bytes",
        )
    try:
        parsed = strict_json_loads(arguments) if arguments.strip() else {}
    except (ValueError, RecursionError):
        return deny(ToolErrorCode.ARGUMENTS_NOT_JSON, "the arguments are not valid JSON")
    if not isinstance(parsed, dict):
        return deny(ToolErrorCode.ARGUMENTS_NOT_OBJECT, "the arguments must be a JSON object")
    try:
        error = best_match(tool.validator.iter_errors(parsed))
    except Unresolvable:
        # The operator's schema is broken ($ref to nowhere): say so without the details.
        logger.error("tool schema has an unresolvable $ref tool=%s", name)
        return deny(ToolErrorCode.TOOL_MISCONFIGURED, "the tool's schema could not be applied")
    if error is not None:
        return deny(ToolErrorCode.ARGUMENTS_INVALID, schema_message(error))
    return Decision(allowed=True, tool=tool, arguments=parsed)


def schema_message(error: ValidationError) -> str:
    """A short explanation of a schema failure that never quotes the arguments.

    jsonschema's own messages repr the offending value (``'…' is not of type 'integer'``,
    ``('admin' was unexpected)``): text the model or a browser chose, of any length. This
    names the location and the failed keyword, with values taken from the schema only.
    """
    where = "/".join(_clip(str(part), _MAX_PATH_PART) for part in error.absolute_path)
    where = _clip(where, _MAX_WHERE) or "(root)"
    keyword, expected = error.validator, error.validator_value
    if keyword == "type":
        kinds = expected if isinstance(expected, list) else [expected]
        detail = "must be of type " + " or ".join(str(k) for k in kinds)
    elif keyword == "required" and isinstance(expected, list) and isinstance(error.instance, dict):
        missing = [str(p) for p in expected if p not in error.instance]
        detail = "missing required " + ", ".join(f"'{_clip(p, _MAX_PATH_PART)}'" for p in missing)
    elif keyword in ("additionalProperties", "unevaluatedProperties"):
        detail = "has properties the schema does not allow"
    elif keyword in ("enum", "const"):
        detail = "is not one of the allowed values"
    elif keyword == "pattern":
        detail = "does not match the required pattern"
    elif keyword == "format":
        detail = f"is not a valid {_clip(str(expected), _MAX_PATH_PART)}"
    elif isinstance(expected, int | float) and not isinstance(expected, bool):
        detail = f"fails {keyword} {expected}"
    else:
        detail = f"fails the schema keyword '{keyword}'"
    return f"arguments fail the schema at {where}: {detail}"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A duplicate key means two readers may see two different values (first wins in some
    # parsers, last in Python's): refuse rather than guess which one the model meant.
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key in object")
    return result


def strict_json_loads(text: str | bytes) -> Any:
    """``json.loads`` without NaN/Infinity and without duplicate object keys.

    Raises:
        ValueError: not strict JSON. RecursionError: nested too deeply (callers catch both).
    """
    return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)


def error_output(code: str, message: str) -> str:
    """The output a denied or failed call gets: JSON the model can read and explain.

    Shape: ``{"error": {"code": "<stable code>", "message": "<short, safe text>"}}``.
    """
    return json.dumps({"error": {"code": str(code), "message": message}}, separators=(",", ":"))
