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

**Tools' redacted fields** (``redact = [...]`` in the tools config, :class:`ToolFields`): a
function call's arguments (``response.function_call_arguments.done``, and every
``function_call`` item: ``conversation.item.*``, ``response.output_item.*``, the output of
``response.created``/``response.done``) have the tool's fields replaced by keyed hashes, as
the ``tool_calls`` row shows them. A ``function_call_output`` item (the broker's
``conversation.item.create``, its echoes) names no tool, only its call: a session's recorder
remembers each call's tool from its ``function_call`` (:class:`CallTools`), and an output
gets that tool's fields, as its row does (so the transcript still matches them). An output
whose call the recorder never saw (a call from before a restart) gets every redacting tool's
fields, and is hashed whole if it is not JSON: it may hide more than was asked, never less.
A ``response.function_call_arguments.delta`` names no tool and holds a fragment no field
can be found in: while any tool redacts, it is kept without its text.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from broker.audit.redaction import FieldRedactor

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


def redacted_text(redactor: FieldRedactor, text: str, fields: frozenset[str]) -> str:
    """:meth:`FieldRedactor.redact_json_text`, for any text a model or tool may produce.

    JSON nested past what the redactor can walk (the recursion limit) is hidden whole, by
    its keyed hash, as text that is not JSON is: never kept, and never an error that would
    lose the call's row.
    """
    try:
        return redactor.redact_json_text(text, fields)
    except RecursionError:
        return json.dumps({"redacted": redactor.keyed_hash(text)})


_ARGUMENTS_DELTA: Final = "response.function_call_arguments.delta"
_ARGUMENTS_DONE: Final = "response.function_call_arguments.done"


@dataclass(frozen=True)
class ToolFields:
    """Each redacting tool's fields, with the redactor that hashes them."""

    redactor: FieldRedactor
    by_tool: Mapping[str, frozenset[str]]
    every: frozenset[str] = field(init=False)
    """The union: what a ``function_call_output`` (which names no tool) gets."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "every", frozenset().union(*self.by_tool.values()))

    @property
    def active(self) -> bool:
        return bool(self.by_tool)

    def arguments(self, tool: Any, text: Any) -> Any:
        fields = self.by_tool.get(tool) if isinstance(tool, str) else None
        if not fields or not isinstance(text, str):
            return text
        return redacted_text(self.redactor, text, fields)

    def output(self, tool: str | None, text: Any) -> Any:
        """A call's output; ``tool`` ``None``: the call's tool is not known."""
        fields = self.every if tool is None else self.by_tool.get(tool)
        if not fields or not isinstance(text, str):
            return text
        return redacted_text(self.redactor, text, fields)


MAX_CALLS_KNOWN: Final = 4096
"""How many calls a :class:`CallTools` remembers (a session records at most 1000)."""


class CallTools:
    """The tool of each call one session's log has seen, for its outputs' redaction."""

    def __init__(self, tools: ToolFields) -> None:
        self.tools = tools
        self._by_call: dict[str, str] = {}

    def saw(self, call_id: Any, tool: Any) -> None:
        if isinstance(call_id, str) and isinstance(tool, str):
            if len(self._by_call) >= MAX_CALLS_KNOWN:
                self._by_call.pop(next(iter(self._by_call)))
            self._by_call[call_id] = tool

    def tool_of(self, call_id: Any) -> str | None:
        return self._by_call.get(call_id) if isinstance(call_id, str) else None


def audio_marker(payload: str) -> dict[str, Any]:
    """What a base64 audio payload is stored as."""
    return {"redacted": "audio", "base64_chars": len(payload)}


def redact_event(event: dict[str, Any], calls: CallTools | None = None) -> dict[str, Any]:
    """The event as stored and streamed: audio and redacted tool fields replaced.

    Every audio payload becomes its size; the redacting tools' fields (``calls.tools``),
    their keyed hashes.

    Returns ``event`` itself when it carries neither; otherwise a copy in which only the
    dicts and lists on the way to each payload are new (the rest is shared, never changed).
    """
    event = _redact_audio(event)
    if calls is not None and calls.tools.active:
        event = _redact_calls(event, calls)
    return event


def _redact_calls(event: dict[str, Any], calls: CallTools) -> dict[str, Any]:
    tools = calls.tools
    type_ = event.get("type")
    if type_ == _ARGUMENTS_DELTA:
        delta = event.get("delta")
        if not isinstance(delta, str):
            return event
        return {**event, "delta": {"redacted": "arguments", "chars": len(delta)}}
    if type_ == _ARGUMENTS_DONE:
        calls.saw(event.get("call_id"), event.get("name"))
        arguments = event.get("arguments")
        redacted = tools.arguments(event.get("name"), arguments)
        return event if redacted is arguments else {**event, "arguments": redacted}
    if type_ in _ONE_ITEM:
        item = event.get("item")
        new = _redact_call_item(item, calls)
        return event if new is item else {**event, "item": new}
    key = _RESPONSE_ITEMS.get(type_) if isinstance(type_, str) else None
    if key is not None:
        response = event.get("response")
        if not isinstance(response, Mapping) or not isinstance(response.get(key), list):
            return event
        items = response[key]
        new_items = _map_on_write(items, lambda item: _redact_call_item(item, calls))
        if new_items is items:
            return event
        return {**event, "response": {**response, key: new_items}}
    return event


def _redact_call_item(item: Any, calls: CallTools) -> Any:
    """A ``function_call``'s arguments, or a ``function_call_output``'s output, redacted."""
    if not isinstance(item, Mapping):
        return item
    if item.get("type") == "function_call":
        calls.saw(item.get("call_id"), item.get("name"))
        arguments = item.get("arguments")
        redacted = calls.tools.arguments(item.get("name"), arguments)
        return item if redacted is arguments else {**item, "arguments": redacted}
    if item.get("type") == "function_call_output":
        output = item.get("output")
        redacted = calls.tools.output(calls.tool_of(item.get("call_id")), output)
        return item if redacted is output else {**item, "output": redacted}
    return item


def _redact_audio(event: dict[str, Any]) -> dict[str, Any]:
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
