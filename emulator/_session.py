"""The effective session config: GA defaults, validation of posted/updated fields, merging.

Shapes follow docs/protocol.md §3.3/§3.4 and the SDK's ``RealtimeSessionCreateRequest``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from typing import Any, Final

from ._ids import new_session_id
from ._transcription import check_transcription, normalize_transcription
from .errors import ClientEventError

DEFAULT_MODEL: Final = "gpt-realtime"
DEFAULT_INSTRUCTIONS: Final = (
    "You are a helpful, friendly voice assistant. Keep answers short."  # [inferred]
)
SESSION_LIFETIME_S: Final = 3600  # the 60-minute cap (docs/protocol.md §1.2)

# Fields a client may set; anything else is rejected like the real API's unknown_parameter.
SETTABLE_FIELDS: Final = frozenset(
    {
        "type",
        "model",
        "instructions",
        "tools",
        "tool_choice",
        "output_modalities",
        "audio",
        "max_output_tokens",
        "tracing",
        "prompt",
        "truncation",
        "include",
        "parallel_tool_calls",
        "reasoning",
    }
)


def default_session(model: str) -> dict[str, Any]:
    """Return a fresh GA session object with the server's defaults."""
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": new_session_id(),
        "model": model,
        "output_modalities": ["audio"],
        "instructions": DEFAULT_INSTRUCTIONS,
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": int(time.time()) + SESSION_LIFETIME_S,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.5,
                    "prefix_padding_ms": 300,
                    "silence_duration_ms": 200,
                    "idle_timeout_ms": None,
                    "create_response": True,
                    "interrupt_response": True,
                },
            },
            "output": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "voice": "alloy",  # recorded traffic: the voice when none is set
                "speed": 1.0,
            },
        },
        "include": None,
    }


def check_session_fields(session: Any, *, param: str = "session") -> dict[str, Any]:
    """Validate a client-supplied session object and return it.

    Raises:
        ClientEventError: ``missing_required_parameter`` when ``type`` is absent,
            ``invalid_value`` when it is not ``"realtime"``, ``invalid_type`` when the object
            or a known field has the wrong JSON type, ``unknown_parameter`` for other keys.
    """
    if not isinstance(session, dict):
        raise ClientEventError(
            "invalid_type", f"Invalid type for '{param}': expected an object.", param=param
        )
    if "type" not in session:
        raise ClientEventError(
            "missing_required_parameter",
            f"Missing required parameter: '{param}.type'.",
            param=f"{param}.type",
        )
    if session["type"] != "realtime":
        raise ClientEventError(
            "invalid_value",
            f"Invalid value for '{param}.type': only 'realtime' sessions are emulated.",
            param=f"{param}.type",
        )
    for key in session:
        if key not in SETTABLE_FIELDS:
            raise ClientEventError(
                "unknown_parameter",
                f"Unknown parameter: '{param}.{key}'.",
                param=f"{param}.{key}",
            )
    expected: dict[str, type | tuple[type, ...]] = {
        "instructions": str,
        "tools": list,
        "tool_choice": (str, dict),
        "output_modalities": list,
        "audio": dict,
        "model": str,
    }
    for key, kind in expected.items():
        if key in session and not isinstance(session[key], kind):
            raise ClientEventError(
                "invalid_type", f"Invalid type for '{param}.{key}'.", param=f"{param}.{key}"
            )
    _check_turn_detection(session.get("audio"), f"{param}.audio.input.turn_detection")
    check_transcription(session.get("audio"), f"{param}.audio.input.transcription")
    return session


TURN_DETECTION_TYPES: Final = ("server_vad", "semantic_vad")


def _check_turn_detection(audio: Any, param: str) -> None:
    # turn_detection replaces as a whole (it is not merged key by key), so an object
    # without its type would silently switch detection off; the API refuses it instead.
    audio_input = audio.get("input") if isinstance(audio, dict) else None
    if not isinstance(audio_input, dict) or "turn_detection" not in audio_input:
        return
    turn = audio_input["turn_detection"]
    if turn is None:
        return
    if not isinstance(turn, dict):
        raise ClientEventError("invalid_type", f"Invalid type for '{param}'.", param=param)
    if "type" not in turn:
        raise ClientEventError(
            "missing_required_parameter",
            f"Missing required parameter: '{param}.type'.",
            param=f"{param}.type",
        )
    if turn["type"] not in TURN_DETECTION_TYPES:
        raise ClientEventError(
            "invalid_value",
            f"Invalid value for '{param}.type': expected 'server_vad' or 'semantic_vad'.",
            param=f"{param}.type",
        )


def merge_session(effective: dict[str, Any], update: Mapping[str, Any]) -> None:
    """Apply a partial update in place (docs/protocol.md §3.3).

    Top-level fields replace; ``audio.input``/``audio.output`` merge key by key so an update
    of the voice keeps the formats. ``model`` never changes after creation, like the real
    service; ``type`` is already ``"realtime"``.
    """
    for key, value in update.items():
        if key in {"type", "model"}:
            continue
        if key == "audio" and isinstance(value, Mapping):
            audio = effective.setdefault("audio", {})
            for side, side_value in value.items():
                if isinstance(side_value, Mapping) and isinstance(audio.get(side), dict):
                    audio[side].update(copy.deepcopy(dict(side_value)))
                else:
                    audio[side] = copy.deepcopy(side_value)
            if isinstance(audio.get("input"), dict):
                normalize_transcription(audio["input"])
            continue
        effective[key] = copy.deepcopy(value)


def initial_session(posted: Mapping[str, Any] | None, query_model: str | None) -> dict[str, Any]:
    """Build the effective session of a new call from the posted config (already validated).

    The model comes from the posted session, else ``?model=`` (docs/protocol.md §7 item 5,
    [inferred]), else ``gpt-realtime``.
    """
    model = DEFAULT_MODEL
    if query_model:
        model = query_model
    if posted and isinstance(posted.get("model"), str):
        model = posted["model"]
    session = default_session(model)
    if posted:
        merge_session(session, posted)
    return session


def audio_side(session: Mapping[str, Any], side: str) -> dict[str, Any]:
    """The session's ``audio.input`` or ``audio.output`` config; ``{}`` when unset."""
    # A client may set audio or one of its sides to null; treat that as "defaults".
    audio = session.get("audio")
    found = audio.get(side) if isinstance(audio, Mapping) else None
    return found if isinstance(found, dict) else {}


def turn_detection(session: Mapping[str, Any]) -> Any:
    """The session's ``audio.input.turn_detection``; ``None`` when unset."""
    return audio_side(session, "input").get("turn_detection")
