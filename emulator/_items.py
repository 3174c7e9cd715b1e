"""Conversation items: client-created ones checked, and the user's audio items.

A ``conversation.item.create`` item is validated into its stored form; a committed input
buffer becomes a user audio item, whose audio only a retrieve returns.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Mapping
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


# One sample of digital silence at each input format's rate: 24 kHz PCM16, or 8 kHz G.711
# (whose codes for zero are not 0x00).
_SILENCE: Final[dict[str, tuple[bytes, int]]] = {
    "audio/pcm": (b"\x00\x00", 24),
    "audio/pcmu": (b"\xff", 8),
    "audio/pcma": (b"\xd5", 8),
}


def committed_audio(duration_ms: float, audio_format: Any) -> str:
    """Base64 audio of a committed buffer's length: silence in the session's input format.

    The emulator keeps no samples (emulator/README.md [inferred] 23), so what a retrieve
    returns has the committed duration and format but not the sound.
    """
    kind = audio_format.get("type") if isinstance(audio_format, Mapping) else None
    sample, per_ms = _SILENCE.get(kind if isinstance(kind, str) else "", _SILENCE["audio/pcm"])
    return base64.b64encode(sample * round(duration_ms * per_ms)).decode("ascii")


def with_input_audio(item: dict[str, Any], audio: str) -> dict[str, Any]:
    """A copy of a user audio item whose ``input_audio`` parts carry ``audio``.

    The service's ``conversation.item.retrieved`` includes an audio item's base64 audio
    (docs/protocol.md §0); a part that already has some (a client's item) keeps its own.
    """
    content = [
        {**part, "audio": audio}
        if isinstance(part, dict) and part.get("type") == "input_audio" and "audio" not in part
        else part
        for part in item.get("content") or []
    ]
    return {**item, "content": content}
