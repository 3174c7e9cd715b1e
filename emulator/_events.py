"""Dict builders for server events (docs/protocol.md §3, shapes checked against the SDK types).

Every builder returns a plain JSON-ready dict; :func:`server_event` stamps the
``event_id`` that every server event carries.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from ._ids import new_event_id
from .errors import ClientEventError


def server_event(type_: str, **fields: Any) -> dict[str, Any]:
    """Return ``{"type": type_, "event_id": "event_…", **fields}``."""
    return {"type": type_, "event_id": new_event_id(), **fields}


def error_event(exc: ClientEventError, client_event_id: str | None) -> dict[str, Any]:
    """Return the ``error`` event for a rejected client event, echoing its ``event_id``."""
    return server_event(
        "error",
        error={
            "type": exc.type,
            "code": exc.code,
            "message": exc.message,
            "param": exc.param,
            "event_id": client_event_id,
        },
    )


def session_event(type_: str, session: dict[str, Any]) -> dict[str, Any]:
    """``session.created`` / ``session.updated`` with a snapshot of the full session."""
    return server_event(type_, session=copy.deepcopy(session))


def item_event(
    type_: str, item: dict[str, Any], previous_item_id: str | None, *, previous: bool = True
) -> dict[str, Any]:
    """``conversation.item.added``/``.done`` (``previous=False``: ``.retrieved``), item copied."""
    if not previous:
        return server_event(type_, item=copy.deepcopy(item))
    return server_event(type_, previous_item_id=previous_item_id, item=copy.deepcopy(item))


def function_call_item(item_id: str, call_id: str, name: str) -> dict[str, Any]:
    """A model-generated function call, in progress with empty arguments (§3.1 row 2)."""
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "function_call",
        "status": "in_progress",
        "name": name,
        "call_id": call_id,
        "arguments": "",
    }


def assistant_message_item(item_id: str) -> dict[str, Any]:
    """A model-generated assistant message, in progress; content arrives with content_part.added."""
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "role": "assistant",
        "status": "in_progress",
        "content": [],
    }


def response_object(
    *,
    response_id: str,
    status: str,
    conversation_id: str | None,
    output_modalities: Sequence[str],
    audio_output: dict[str, Any],
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    status_details: dict[str, Any] | None,
    metadata: dict[str, str] | None,
) -> dict[str, Any]:
    """The ``response`` object of ``response.created`` / ``response.done`` (§3.1 rows 1, 6)."""
    return {
        "id": response_id,
        "object": "realtime.response",
        "status": status,
        "status_details": status_details,
        "output": copy.deepcopy(output),
        "conversation_id": conversation_id,
        "output_modalities": list(output_modalities),
        "max_output_tokens": "inf",
        "audio": {
            "output": {
                "format": copy.deepcopy(audio_output.get("format")),
                "voice": audio_output.get("voice"),
            }
        },
        "usage": usage,
        "metadata": metadata,
    }
