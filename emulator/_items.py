"""Validation of client-created conversation items (``conversation.item.create``)."""

from __future__ import annotations

import copy
from typing import Any, Final

from ._ids import new_function_call_id, new_item_id
from .errors import ClientEventError

# Content part types each role may carry (GA item types, docs/protocol.md §3.4).
PART_TYPES: Final[dict[str, frozenset[str]]] = {
    "user": frozenset({"input_text", "input_audio", "input_image"}),
    "system": frozenset({"input_text"}),
    "assistant": frozenset({"output_text", "output_audio"}),
}


def _missing(param: str) -> ClientEventError:
    return ClientEventError(
        "missing_required_parameter", f"Missing required parameter: '{param}'.", param=param
    )


def _invalid(param: str, what: str) -> ClientEventError:
    return ClientEventError("invalid_value", f"Invalid value for '{param}': {what}.", param=param)


def _require_str(raw: dict[str, Any], key: str) -> str:
    if key not in raw:
        raise _missing(f"item.{key}")
    value = raw[key]
    if not isinstance(value, str):
        raise ClientEventError(
            "invalid_type",
            f"Invalid type for 'item.{key}': expected a string.",
            param=f"item.{key}",
        )
    return value


def normalize_client_item(raw: Any) -> dict[str, Any]:
    """Validate a client item and return the stored form (id, object, status completed).

    A client-supplied ``id`` is kept (the API lets clients choose item ids); otherwise one
    is assigned.

    Raises:
        ClientEventError: ``missing_required_parameter``, ``invalid_type`` or
            ``invalid_value`` naming the offending ``item.*`` parameter.
    """
    if raw is None:
        raise _missing("item")
    if not isinstance(raw, dict):
        raise ClientEventError(
            "invalid_type", "Invalid type for 'item': expected an object.", param="item"
        )
    item_id = raw.get("id")
    if item_id is not None and (not isinstance(item_id, str) or not item_id):
        raise _invalid("item.id", "expected a non-empty string")
    base: dict[str, Any] = {
        "id": item_id or new_item_id(),
        "object": "realtime.item",
        "type": raw.get("type"),
        "status": "completed",
    }
    match raw.get("type"):
        case "message":
            return {**base, **_message_fields(raw)}
        case "function_call_output":
            return {
                **base,
                "call_id": _require_str(raw, "call_id"),
                "output": _require_str(raw, "output"),
            }
        case "function_call":
            call_id = raw.get("call_id") or new_function_call_id()
            return {
                **base,
                "name": _require_str(raw, "name"),
                "call_id": call_id,
                "arguments": _require_str(raw, "arguments"),
            }
        case None:
            raise _missing("item.type")
        case other:
            raise _invalid("item.type", f"unsupported item type {other!r}")


def _message_fields(raw: dict[str, Any]) -> dict[str, Any]:
    role = raw.get("role")
    if role is None:
        raise _missing("item.role")
    if role not in PART_TYPES:
        raise _invalid("item.role", "expected 'user', 'system' or 'assistant'")
    content = raw.get("content")
    if content is None:
        raise _missing("item.content")
    if not isinstance(content, list):
        raise ClientEventError(
            "invalid_type",
            "Invalid type for 'item.content': expected an array.",
            param="item.content",
        )
    for index, part in enumerate(content):
        param = f"item.content[{index}].type"
        if not isinstance(part, dict) or "type" not in part:
            raise _missing(param)
        if part["type"] not in PART_TYPES[role]:
            allowed = ", ".join(sorted(PART_TYPES[role]))
            raise _invalid(param, f"a {role} message accepts {allowed}")
    return {"role": role, "content": copy.deepcopy(content)}


def user_audio_item(item_id: str) -> dict[str, Any]:
    """The user message a committed input audio buffer becomes.

    Over WebRTC no audio bytes are echoed, and with no transcription model the transcript
    is ``None``, as the service sends it when input transcription is off.
    """
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "role": "user",
        "status": "completed",
        "content": [{"type": "input_audio", "transcript": None}],
    }
