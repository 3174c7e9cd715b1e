"""The stand-in provider's wire format (:mod:`bench.standin`): pure data, no I/O.

Every server event it sends is a JSON template serialised once at import and filled by ``%``
formatting (``template % {...}``), so thousands of events a second cost little; the shapes
follow docs/protocol.md §3 (as the emulator's ``emulator._events`` builds them). Also the ids
(shaped like the provider's), the default session and how an update merges into it.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import secrets
import time
from collections.abc import Mapping
from typing import Any, Final

DEFAULT_KEY: Final = "sk-bench-provider-key-7c1d2e9a4b6f8035"
"""``bench.stack.PROVIDER_KEY`` (not imported: that module pulls in the emulator)."""

# A fixed answer nobody can connect to: the broker relays it verbatim, and no media flows.
_FINGERPRINT: Final = ":".join(["00"] * 32)
SDP_ANSWER: Final = "".join(
    line + "\r\n"
    for line in (
        "v=0",
        "o=- 0 0 IN IP4 127.0.0.1",
        "s=bench-standin",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "c=IN IP4 0.0.0.0",
        "a=mid:0",
        "a=sendrecv",
        "a=rtpmap:111 opus/48000/2",
        "a=ice-ufrag:stnd",
        "a=ice-pwd:standinstandinstandins",
        f"a=fingerprint:sha-256 {_FINGERPRINT}",
        "a=setup:active",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "c=IN IP4 0.0.0.0",
        "a=mid:1",
        "a=sctp-port:5000",
        "a=ice-ufrag:stnd",
        "a=ice-pwd:standinstandinstandins",
        f"a=fingerprint:sha-256 {_FINGERPRINT}",
        "a=setup:active",
    )
)

ANSWER: Final = (
    "Sure, I have booked a table for two at seven tonight. You will get a confirmation by "
    "text in a minute, and I can change it anytime"
)
SPOKEN: Final = tuple(re.findall(r"\s?\w+|[^\w\s]+", ANSWER))
"""The model's answer: 30 transcript deltas."""
HEARD: Final = "Could you book a table for two at seven tonight?"
FUNCTION_ARGUMENTS: Final = ("{", "}")
"""The function call's argument deltas: ``{}`` (the bench tool takes no arguments)."""


# ---- templates ---------------------------------------------------------------------------

_RAW = re.compile(r'"\$\$(\w+)"')
_QUOTED = re.compile(r"\$(\w+)")


def template(obj: Mapping[str, Any]) -> str:
    """Compact JSON with ``%(name)s`` holes: ``"$$name"`` is a raw hole, ``$name`` a string's.

    Fill with ``template % {...}``; string holes take pre-escaped JSON string content.
    """
    text = json.dumps(obj, separators=(",", ":")).replace("%", "%%")
    return _QUOTED.sub(r"%(\1)s", _RAW.sub(r"%(\1)s", text))


def escaped(text: str) -> str:
    return json.dumps(text)[1:-1]


T_SESSION_UPDATED: Final = template(
    {"type": "session.updated", "event_id": "$eid", "session": "$$session"}
)
T_SESSION_CREATED: Final = template(
    {"type": "session.created", "event_id": "$eid", "session": "$$session"}
)
T_SPEECH_STARTED: Final = template(
    {
        "type": "input_audio_buffer.speech_started",
        "event_id": "$eid",
        "audio_start_ms": "$$ms",
        "item_id": "$item",
    }
)
T_SPEECH_STOPPED: Final = template(
    {
        "type": "input_audio_buffer.speech_stopped",
        "event_id": "$eid",
        "audio_end_ms": "$$ms",
        "item_id": "$item",
    }
)
T_COMMITTED: Final = template(
    {
        "type": "input_audio_buffer.committed",
        "event_id": "$eid",
        "previous_item_id": "$$previous",
        "item_id": "$item",
    }
)
T_USER_ITEM: Final = template(
    {
        "id": "$item",
        "object": "realtime.item",
        "type": "message",
        "status": "completed",
        "role": "user",
        "content": [{"type": "input_audio", "transcript": None}],
    }
)
T_ITEM_ADDED: Final = template(
    {
        "type": "conversation.item.added",
        "event_id": "$eid",
        "previous_item_id": "$$previous",
        "item": "$$item",
    }
)
T_ITEM_DONE: Final = template(
    {
        "type": "conversation.item.done",
        "event_id": "$eid",
        "previous_item_id": "$$previous",
        "item": "$$item",
    }
)
T_ITEM_RETRIEVED: Final = template(
    {"type": "conversation.item.retrieved", "event_id": "$eid", "item": "$$item"}
)
T_ITEM_DELETED: Final = template(
    {"type": "conversation.item.deleted", "event_id": "$eid", "item_id": "$item"}
)
T_TRANSCRIPTION_DELTA: Final = template(
    {
        "type": "conversation.item.input_audio_transcription.delta",
        "event_id": "$eid",
        "item_id": "$item",
        "content_index": 0,
        "delta": escaped(HEARD),
    }
)
T_TRANSCRIPTION_DONE: Final = template(
    {
        "type": "conversation.item.input_audio_transcription.completed",
        "event_id": "$eid",
        "item_id": "$item",
        "content_index": 0,
        "transcript": escaped(HEARD),
        "usage": {
            "type": "tokens",
            "total_tokens": 29,
            "input_tokens": 17,
            "input_token_details": {"text_tokens": 0, "audio_tokens": 17},
            "output_tokens": 12,
        },
    }
)
_RESPONSE_FIELDS: Final = {
    "id": "$rid",
    "object": "realtime.response",
    "status": "$status",
    "status_details": "$$details",
    "output": "$$output",
    "conversation_id": "$conv",
    "output_modalities": ["audio"],
    "max_output_tokens": "inf",
    "audio": {
        "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "$voice"},
    },
    "usage": "$$usage",
    "metadata": None,
}
T_RESPONSE_CREATED: Final = template(
    {
        "type": "response.created",
        "event_id": "$eid",
        "response": {**_RESPONSE_FIELDS, "status": "in_progress", "output": [], "usage": None},
    }
)
T_RESPONSE_DONE: Final = template(
    {"type": "response.done", "event_id": "$eid", "response": _RESPONSE_FIELDS}
)
T_USAGE: Final = template(
    {
        "total_tokens": "$$total",
        "input_tokens": "$$input",
        "output_tokens": "$$output",
        "input_token_details": {
            "text_tokens": "$$input_text",
            "audio_tokens": "$$input_audio",
            "image_tokens": 0,
            "cached_tokens": "$$cached",
            "cached_tokens_details": {
                "text_tokens": "$$cached",
                "audio_tokens": 0,
                "image_tokens": 0,
            },
        },
        "output_token_details": {"text_tokens": "$$output_text", "audio_tokens": "$$output_audio"},
    }
)
T_RATE_LIMITS: Final = template(
    {
        "type": "rate_limits.updated",
        "event_id": "$eid",
        "rate_limits": [
            {
                "name": "tokens",
                "limit": 800000,
                "remaining": "$$remaining",
                "reset_seconds": "$$reset",
            }
        ],
    }
)
T_OUTPUT_ITEM_ADDED: Final = template(
    {
        "type": "response.output_item.added",
        "event_id": "$eid",
        "response_id": "$rid",
        "output_index": 0,
        "item": "$$item",
    }
)
T_OUTPUT_ITEM_DONE: Final = template(
    {
        "type": "response.output_item.done",
        "event_id": "$eid",
        "response_id": "$rid",
        "output_index": 0,
        "item": "$$item",
    }
)
T_MESSAGE_ITEM: Final = template(
    {
        "id": "$item",
        "object": "realtime.item",
        "type": "message",
        "status": "$status",
        "role": "assistant",
        "content": "$$content",
    }
)
TRANSCRIPT: Final = "".join(SPOKEN)
CONTENT_DONE: Final = json.dumps(
    [{"type": "output_audio", "transcript": TRANSCRIPT}], separators=(",", ":")
)
_PART_FIELDS: Final = {
    "event_id": "$eid",
    "response_id": "$rid",
    "item_id": "$item",
    "output_index": 0,
    "content_index": 0,
}
T_PART_ADDED: Final = template(
    {
        "type": "response.content_part.added",
        **_PART_FIELDS,
        "part": {"type": "audio", "transcript": ""},
    }
)
T_PART_DONE: Final = template(
    {
        "type": "response.content_part.done",
        **_PART_FIELDS,
        "part": {"type": "audio", "transcript": escaped(TRANSCRIPT)},
    }
)
T_TRANSCRIPT_DELTA: Final = template(
    {"type": "response.output_audio_transcript.delta", **_PART_FIELDS, "delta": "$delta"}
)
T_TRANSCRIPT_DONE: Final = template(
    {
        "type": "response.output_audio_transcript.done",
        **_PART_FIELDS,
        "transcript": escaped(TRANSCRIPT),
    }
)
T_AUDIO_DONE: Final = template({"type": "response.output_audio.done", **_PART_FIELDS})
T_BUFFER_STARTED: Final = template(
    {"type": "output_audio_buffer.started", "event_id": "$eid", "response_id": "$rid"}
)
T_BUFFER_STOPPED: Final = template(
    {"type": "output_audio_buffer.stopped", "event_id": "$eid", "response_id": "$rid"}
)
T_FUNCTION_ITEM: Final = template(
    {
        "id": "$item",
        "object": "realtime.item",
        "type": "function_call",
        "status": "$status",
        "name": "$name",
        "call_id": "$call",
        "arguments": "$arguments",
    }
)
T_ARGUMENTS_DELTA: Final = template(
    {
        "type": "response.function_call_arguments.delta",
        "event_id": "$eid",
        "response_id": "$rid",
        "item_id": "$item",
        "output_index": 0,
        "call_id": "$call",
        "delta": "$delta",
    }
)
T_ARGUMENTS_DONE: Final = template(
    {
        "type": "response.function_call_arguments.done",
        "event_id": "$eid",
        "response_id": "$rid",
        "item_id": "$item",
        "output_index": 0,
        "call_id": "$call",
        "name": "$name",
        "arguments": "$arguments",
    }
)
SPOKEN_ESCAPED: Final = tuple(escaped(word) for word in SPOKEN)
ARGUMENTS_ESCAPED: Final = tuple(escaped(part) for part in FUNCTION_ARGUMENTS)
ARGUMENTS: Final = escaped("".join(FUNCTION_ARGUMENTS))


# ---- ids ---------------------------------------------------------------------------------

_PREFIX: Final = secrets.token_hex(4)
_COUNTER = itertools.count(1)


def new_id(kind: str) -> str:
    # Unique in this process and cheap; the provider's ids are opaque to its clients.
    return f"{kind}_{_PREFIX}{next(_COUNTER):08x}"


def base62(n: int) -> str:
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    return "".join(secrets.choice(alphabet) for _ in range(n))


# ---- sessions ----------------------------------------------------------------------------


def default_session() -> dict[str, Any]:
    """A GA session object with the provider's defaults (as ``emulator._session``)."""
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": f"sess_{base62(20)}",
        "model": "gpt-realtime",
        "output_modalities": ["audio"],
        "instructions": "You are a helpful, friendly voice assistant. Keep answers short.",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": int(time.time()) + 3600,
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
                "voice": "marin",
                "speed": 1.0,
            },
        },
        "include": None,
    }


def merge_session(effective: dict[str, Any], update: Mapping[str, Any]) -> None:
    """Apply a partial update in place: top-level fields replace, audio sides merge by key.

    ``type`` and ``model`` never change after creation.
    """
    for key, value in update.items():
        if key in ("type", "model"):
            continue
        if key == "audio" and isinstance(value, Mapping):
            audio = effective.setdefault("audio", {})
            for side, side_value in value.items():
                if isinstance(side_value, Mapping) and isinstance(audio.get(side), dict):
                    audio[side].update(copy.deepcopy(dict(side_value)))
                else:
                    audio[side] = copy.deepcopy(side_value)
            continue
        effective[key] = copy.deepcopy(value)


def tool_name(session: Mapping[str, Any]) -> str | None:
    tools = session.get("tools")
    if isinstance(tools, list):
        for tool in tools:
            if isinstance(tool, dict) and tool.get("type") == "function":
                name = tool.get("name")
                if isinstance(name, str):
                    return name
    return None


def voice(session: Mapping[str, Any]) -> str:
    audio = session.get("audio")
    output = audio.get("output") if isinstance(audio, dict) else None
    voice = output.get("voice") if isinstance(output, dict) else None
    return escaped(voice) if isinstance(voice, str) else "marin"
