"""Audio out of the event log: every base64 audio payload is stored and streamed as its size.

Audio reaches the sideband in two shapes: a top-level field of a streaming event
(``input_audio_buffer.append.audio``, ``response.output_audio.delta.delta``), and the
``audio`` of an item's content part, which the provider includes in full when it answers
``conversation.item.retrieve`` (docs/protocol.md §0) and which a ``conversation.item.create``
(anyone's) carries and its echoes may repeat. Each becomes
``{"redacted": "audio", "base64_chars": N}``: the log keeps that there was audio and how
much, never the sound of a user's voice.

This runs for every event a call sees, so it reads the type first and walks only the items
of the few event types that carry them; an event without audio is returned as it is, not
copied.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

_TOP_LEVEL: Final = {
    "input_audio_buffer.append": "audio",
    "response.output_audio.delta": "delta",
}
"""Event types whose audio is one top-level field."""

_ONE_ITEM: Final = frozenset(
    {
        "conversation.item.create",
        "conversation.item.added",
        "conversation.item.created",
        "conversation.item.done",
        "conversation.item.retrieved",
        "response.output_item.added",
        "response.output_item.done",
    }
)
"""Event types that carry one ``item``."""

_RESPONSE_ITEMS: Final = {
    "response.created": "output",
    "response.done": "output",
    # An out-of-band response may be given its own input items, audio parts included.
    "response.create": "input",
}
"""Event types whose ``response`` carries a list of items, and which list."""

_ONE_PART: Final = frozenset({"response.content_part.added", "response.content_part.done"})
"""Event types that carry one content ``part``."""


def audio_marker(payload: str) -> dict[str, Any]:
    """What a base64 audio payload is stored as."""
    return {"redacted": "audio", "base64_chars": len(payload)}


def redact_event(event: dict[str, Any]) -> dict[str, Any]:
    """The event as stored and streamed: every audio payload replaced by its size.

    Returns ``event`` itself when it carries no audio; otherwise a copy in which only the
    dicts and lists on the way to each payload are new (the rest is shared, never changed).
    """
    type_ = event.get("type")
    if not isinstance(type_, str):
        return event
    field = _TOP_LEVEL.get(type_)
    if field is not None:
        value = event.get(field)
        return {**event, field: audio_marker(value)} if isinstance(value, str) else event
    if type_ in _ONE_ITEM:
        item = event.get("item")
        redacted = _redact_item(item)
        return event if redacted is item else {**event, "item": redacted}
    key = _RESPONSE_ITEMS.get(type_)
    if key is not None:
        response = event.get("response")
        if not isinstance(response, Mapping):
            return event
        items = response.get(key)
        redacted_items = _redact_items(items)
        if redacted_items is items:
            return event
        return {**event, "response": {**response, key: redacted_items}}
    if type_ in _ONE_PART:
        part = event.get("part")
        redacted_part = _redact_part(part)
        return event if redacted_part is part else {**event, "part": redacted_part}
    return event


def _redact_part(part: Any) -> Any:
    if isinstance(part, Mapping) and isinstance(audio := part.get("audio"), str):
        return {**part, "audio": audio_marker(audio)}
    return part


def _map_on_write(values: list[Any], redact: Callable[[Any], Any]) -> list[Any]:
    """``values`` with ``redact`` applied to each; ``values`` itself if none changed."""
    redacted: list[Any] | None = None
    for index, value in enumerate(values):
        new = redact(value)
        if new is not value:
            if redacted is None:
                redacted = list(values)
            redacted[index] = new
    return values if redacted is None else redacted


def _redact_item(item: Any) -> Any:
    """The item with its content parts' audio replaced; ``item`` itself if it has none."""
    if not isinstance(item, Mapping):
        return item
    content = item.get("content")
    if not isinstance(content, list):
        return item
    redacted = _map_on_write(content, _redact_part)
    return item if redacted is content else {**item, "content": redacted}


def _redact_items(items: Any) -> Any:
    """The list with each item's audio replaced; ``items`` itself if none has any."""
    if not isinstance(items, list):
        return items
    return _map_on_write(items, _redact_item)
