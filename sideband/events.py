"""Realtime wire events: typed server events the controller reads, and client events it sends.

Pure data, no I/O. Server events no model here describes parse as :class:`UnknownEvent` and
pass through untouched (they are still recorded and fanned out). Shapes follow the GA
protocol (``docs/protocol.md`` §3, §3.4).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from sideband.errors import MalformedEventError


class _Wire(BaseModel):
    # The provider adds fields over time; unknown ones are kept, never rejected.
    model_config = ConfigDict(extra="allow", frozen=True)


class Item(_Wire):
    """A conversation item, of any type; the fields a function call or its output uses are typed."""

    id: str | None = None
    type: str
    status: str | None = None
    role: str | None = None
    call_id: str | None = None
    """Set on ``function_call`` and ``function_call_output`` items."""
    name: str | None = None
    """Tool name, on ``function_call`` items."""
    arguments: str | None = None
    """JSON text of the arguments, on ``function_call`` items."""
    output: str | None = None
    """Tool result text, on ``function_call_output`` items."""


class Response(_Wire):
    """The ``response`` object of ``response.created`` / ``response.done``."""

    id: str
    status: str
    """``in_progress`` on created; ``completed|cancelled|failed|incomplete`` on done."""
    output: list[Item] = Field(default_factory=list)
    usage: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    """What the ``response.create`` set (echoed); the broker's acknowledgements are marked."""


class ErrorDetail(_Wire):
    """The ``error`` object of an ``error`` event."""

    type: str | None = None
    code: str | None = None
    message: str | None = None
    param: str | None = None
    event_id: str | None = None
    """The ``event_id`` of the client event that caused the error, when the provider echoes it."""


class _ServerEvent(_Wire):
    event_id: str | None = None


class SessionCreated(_ServerEvent):
    type: Literal["session.created"]
    session: dict[str, Any]


class SessionUpdated(_ServerEvent):
    type: Literal["session.updated"]
    session: dict[str, Any]


class ResponseCreated(_ServerEvent):
    type: Literal["response.created"]
    response: Response


class ResponseDone(_ServerEvent):
    type: Literal["response.done"]
    response: Response


class FunctionCallArgumentsDone(_ServerEvent):
    """The model finished streaming a call's arguments (also sent for cancelled responses)."""

    type: Literal["response.function_call_arguments.done"]
    response_id: str
    item_id: str
    call_id: str
    name: str
    arguments: str
    output_index: int | None = None


class ResponseOutputItemAdded(_ServerEvent):
    """The model began an output item of a response (a message or a function call)."""

    type: Literal["response.output_item.added"]
    response_id: str
    item: Item
    output_index: int | None = None


class ResponseOutputItemDone(_ServerEvent):
    """The model finished an output item of a response (``arguments`` complete on a call)."""

    type: Literal["response.output_item.done"]
    response_id: str
    item: Item
    output_index: int | None = None


class ConversationItemAdded(_ServerEvent):
    type: Literal["conversation.item.added"]
    item: Item
    previous_item_id: str | None = None


class ConversationItemCreated(_ServerEvent):
    """The legacy name of ``conversation.item.added``, still in the schema.

    See docs/protocol.md §3.4.
    """

    type: Literal["conversation.item.created"]
    item: Item
    previous_item_id: str | None = None


class InputAudioBufferSpeechStopped(_ServerEvent):
    """Server VAD heard the user stop; the committed turn that follows has this ``item_id``."""

    type: Literal["input_audio_buffer.speech_stopped"]
    item_id: str | None = None


class InputAudioBufferSpeechStarted(_ServerEvent):
    """Server VAD heard the user start speaking (the broker's leash counts it as activity)."""

    type: Literal["input_audio_buffer.speech_started"]
    item_id: str | None = None


class InputAudioBufferCommitted(_ServerEvent):
    """A user audio turn entered the conversation (server VAD or the page's commit)."""

    type: Literal["input_audio_buffer.committed"]
    item_id: str | None = None
    previous_item_id: str | None = None


class InputAudioBufferDtmfEventReceived(_ServerEvent):
    """A phone caller pressed a key (SIP calls only); ``event`` is the key.

    ``0``-``9``, ``*``, ``#``, ``A``-``D``. The one server event without an ``event_id``
    (docs/protocol.md §0, "SIP").
    """

    type: Literal["input_audio_buffer.dtmf_event_received"]
    event: str
    received_at: int | float | None = None


class ConversationItemDone(_ServerEvent):
    type: Literal["conversation.item.done"]
    item: Item
    previous_item_id: str | None = None


class ConversationItemDeleted(_ServerEvent):
    """An item left the conversation (someone sent ``conversation.item.delete``)."""

    type: Literal["conversation.item.deleted"]
    item_id: str


class InputAudioTranscriptionCompleted(_ServerEvent):
    """The words heard in one content part of a user audio item (when transcription is on)."""

    type: Literal["conversation.item.input_audio_transcription.completed"]
    item_id: str
    content_index: int = 0
    transcript: str
    usage: Any = None
    """What the transcription cost (``{"type": "tokens", …}`` or ``{"type": "duration",
    "seconds"}``); untyped: a malformed usage must not cost the words."""


class InputAudioTranscriptionDelta(_ServerEvent):
    """Part of the words heard in a user audio item, before its ``.completed``."""

    type: Literal["conversation.item.input_audio_transcription.delta"]
    item_id: str
    content_index: int = 0
    delta: str


class InputAudioTranscriptionFailed(_ServerEvent):
    """The words of a user audio item could not be transcribed (no ``.completed`` follows)."""

    type: Literal["conversation.item.input_audio_transcription.failed"]
    item_id: str
    content_index: int = 0
    error: ErrorDetail | None = None


class ConversationItemRetrieved(_ServerEvent):
    """The answer to ``conversation.item.retrieve`` (sent to every connection of the call)."""

    type: Literal["conversation.item.retrieved"]
    item: Item


class ErrorEvent(_ServerEvent):
    type: Literal["error"]
    error: ErrorDetail


class UnknownEvent(_ServerEvent):
    """Any server event the controller does not interpret; ``type`` is kept."""

    type: str


KnownServerEvent = Annotated[
    SessionCreated
    | SessionUpdated
    | ResponseCreated
    | ResponseDone
    | FunctionCallArgumentsDone
    | ResponseOutputItemAdded
    | ResponseOutputItemDone
    | ConversationItemAdded
    | ConversationItemCreated
    | InputAudioBufferCommitted
    | InputAudioBufferSpeechStarted
    | InputAudioBufferSpeechStopped
    | InputAudioBufferDtmfEventReceived
    | ConversationItemDone
    | ConversationItemDeleted
    | ConversationItemRetrieved
    | InputAudioTranscriptionCompleted
    | InputAudioTranscriptionDelta
    | InputAudioTranscriptionFailed
    | ErrorEvent,
    Field(discriminator="type"),
]
ServerEvent = KnownServerEvent | UnknownEvent

_KNOWN_TYPES = frozenset(
    {
        "session.created",
        "session.updated",
        "response.created",
        "response.done",
        "response.function_call_arguments.done",
        "response.output_item.added",
        "response.output_item.done",
        "conversation.item.added",
        "conversation.item.created",
        "input_audio_buffer.committed",
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.dtmf_event_received",
        "conversation.item.done",
        "conversation.item.deleted",
        "conversation.item.retrieved",
        "conversation.item.input_audio_transcription.completed",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.failed",
        "error",
    }
)
_KNOWN_ADAPTER: TypeAdapter[KnownServerEvent] = TypeAdapter(KnownServerEvent)


def decode_frame(raw: str | bytes) -> dict[str, Any]:
    """Decode one text frame into a JSON object with a string ``type``.

    Raises:
        MalformedEventError: not JSON, not an object, or no string ``type``.
    """
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedEventError(f"frame is not JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise MalformedEventError("frame is not a JSON object with a string 'type'")
    return data


def parse_server_event(data: dict[str, Any]) -> ServerEvent:
    """Build the typed event for a decoded frame.

    Known types that fail validation raise; an unknown ``type`` is never an error, even
    with a mistyped common field (``event_id``): the controller ignores unknown events, so
    such a frame must not escape its reader.

    Raises:
        MalformedEventError: a known event type with missing or mistyped fields.
    """
    if data["type"] not in _KNOWN_TYPES:
        try:
            return UnknownEvent.model_validate(data)
        except ValidationError:
            return UnknownEvent(type=data["type"])
    try:
        return _KNOWN_ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise MalformedEventError(
            f"{data['type']} event failed validation: {exc.error_count()} error(s)"
        ) from exc


def parse_observed_event(data: Mapping[str, Any]) -> ServerEvent:
    """The typed event for an observer of the traffic; never raises for a ``type``d frame.

    As :func:`parse_server_event`, except that a frame failing its type's model comes back as
    an :class:`UnknownEvent` of that type (no field typed): the controller must refuse to act
    on it, but an observer still sees that the provider sent, say, a ``response.done``.
    """
    try:
        return parse_server_event(dict(data))
    except (MalformedEventError, ValidationError):
        return UnknownEvent(type=data["type"])


class ConversationItemCreate(_Wire):
    """The client event ``conversation.item.create`` as sent (a tool output, a probe).

    Typed for the broker's observers of what went out.
    """

    type: Literal["conversation.item.create"]
    event_id: str | None = None
    item: Item
    previous_item_id: str | None = None


def parse_item_create(data: Mapping[str, Any]) -> ConversationItemCreate | None:
    """The typed ``conversation.item.create`` a client event is; ``None``: another event.

    One that fails the model is ``None`` too: an observer of what was sent does not time it.
    """
    if data.get("type") != "conversation.item.create":
        return None
    try:
        return ConversationItemCreate.model_validate(data)
    except ValidationError:
        return None


def new_event_id() -> str:
    """A client event id, echoed by the provider in ``error.event_id``."""
    return f"evt_sb_{secrets.token_hex(10)}"


def function_call_output(
    call_id: str, output: str, item_id: str | None = None, event_id: str | None = None
) -> dict[str, Any]:
    """``conversation.item.create`` carrying a tool result.

    ``output`` goes on the wire as-is: it is already the string the model reads (no second
    JSON encoding). ``item_id`` names the item (the API lets clients choose item ids): a
    broker that lost its sideband mid-send looks that id up before sending again.
    """
    item: dict[str, Any] = {"type": "function_call_output", "call_id": call_id, "output": output}
    if item_id is not None:
        item = {"id": item_id, **item}
    return {
        "type": "conversation.item.create",
        "event_id": event_id or new_event_id(),
        "item": item,
    }


PROBE_ITEM_PREFIX: Final = "item_bkp"
"""The id prefix of resync probe items (:func:`probe_item_create`): one found in the
conversation is a leftover, whichever broker process added it."""


def new_item_id(prefix: str = "item_bk") -> str:
    """A client-chosen item id: short (27 characters) and unguessable."""
    return f"{prefix}{secrets.token_hex(10)}"


def is_probe_item_id(item_id: str) -> bool:
    """Whether ``item_id`` has exactly the shape of a probe id ``new_item_id`` makes."""
    return re.fullmatch(rf"{PROBE_ITEM_PREFIX}[0-9a-f]{{20}}", item_id) is not None


def item_retrieve(item_id: str, event_id: str | None = None) -> dict[str, Any]:
    """``conversation.item.retrieve``: the provider answers ``conversation.item.retrieved``."""
    return {
        "type": "conversation.item.retrieve",
        "event_id": event_id or new_event_id(),
        "item_id": item_id,
    }


PROBE_TEXT: Final = "(sideband resync; ignore)"
"""The start of every resync probe's text; the rest is the probe's own id."""


def probe_item_create(item_id: str, event_id: str | None = None) -> dict[str, Any]:
    """Append an empty-looking system note whose ``conversation.item.added`` names the tail.

    The protocol has no way to list a conversation; appending an item is the one way to learn
    which item is last (its ``previous_item_id``). The note is deleted right after. Its text
    carries ``item_id`` too: a provider that assigns its own item ids (the spec allows it)
    echoes the note under another id, and :func:`probe_key` still recognises it.
    """
    return {
        "type": "conversation.item.create",
        "event_id": event_id or new_event_id(),
        "item": {
            "id": item_id,
            "type": "message",
            "role": "system",
            "content": [{"type": "input_text", "text": f"{PROBE_TEXT} {item_id}"}],
        },
    }


def probe_key(item: Item) -> str | None:
    """The id a resync probe was created with, read from its text; ``None``: no probe.

    Any broker process's probe is recognised (a leftover of a dead one is deleted too).
    """
    if item.type != "message" or item.role != "system":
        return None
    content = getattr(item, "content", None)
    if not isinstance(content, list) or len(content) != 1 or not isinstance(content[0], dict):
        return None
    text = content[0].get("text")
    if not isinstance(text, str) or not text.startswith(PROBE_TEXT + " "):
        return None
    key = text[len(PROBE_TEXT) + 1 :]
    return key if is_probe_item_id(key) else None


_PROBE_SESSION: Final = {"type": "realtime"}


def is_session_probe(event: Mapping[str, Any]) -> bool:
    """Whether a client event is a :func:`session_probe` (a ``session.update`` changing nothing)."""
    return event.get("type") == "session.update" and event.get("session") == _PROBE_SESSION


def session_probe(event_id: str | None = None) -> dict[str, Any]:
    """A ``session.update`` that changes nothing.

    The provider answers the sender with the full effective ``session.updated``: the one view
    of the session it must give us, whatever reaches the sideband of the page's changes.
    """
    return {
        "type": "session.update",
        "event_id": event_id or new_event_id(),
        "session": dict(_PROBE_SESSION),
    }


def response_create(event_id: str | None = None) -> dict[str, Any]:
    """A bare ``response.create``: the model continues with the conversation as it is."""
    return {"type": "response.create", "event_id": event_id or new_event_id()}


def session_update(session: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
    """``session.update`` for the given fields; adds the required ``"type": "realtime"``.

    Without ``session.type`` the GA service rejects the update (docs/protocol.md §2.5 item 4).
    """
    return {
        "type": "session.update",
        "event_id": event_id or new_event_id(),
        "session": {"type": "realtime", **session},
    }


def item_delete(item_id: str, event_id: str | None = None) -> dict[str, Any]:
    """``conversation.item.delete``: remove one item from the conversation."""
    return {
        "type": "conversation.item.delete",
        "event_id": event_id or new_event_id(),
        "item_id": item_id,
    }


def response_cancel(response_id: str, event_id: str | None = None) -> dict[str, Any]:
    """``response.cancel`` for one response (naming it, so a newer one is never hit)."""
    return {
        "type": "response.cancel",
        "event_id": event_id or new_event_id(),
        "response_id": response_id,
    }


USER_SPEECH: Final = frozenset(
    {
        "input_audio_buffer.speech_started",
        "input_audio_buffer.committed",
        # A phone caller's key press: the caller is there, whether or not a turn follows.
        "input_audio_buffer.dtmf_event_received",
    }
)


def is_user_activity(event: ServerEvent) -> bool:
    """Whether a server event shows the user speaking, typing or pressing a phone key.

    Speech counts by its type alone (server VAD's ``speech_started``/``committed``, whatever
    their fields), and so does a phone key (``dtmf_event_received``); so does a user message
    entering the conversation. Nothing the model
    produces does, so a call where only the model talks is idle.
    """
    if event.type in USER_SPEECH:
        return True
    if isinstance(event, ConversationItemAdded | ConversationItemCreated):
        return event.item.type == "message" and event.item.role == "user"
    return False


def same_json(a: str, b: str) -> bool:
    """Whether two wire strings carry the same JSON value (verbatim, or re-serialised).

    The provider may re-serialise what it echoes (arguments it streamed, an output we sent),
    so text equality alone would call an unchanged value changed.
    """
    if a == b:
        return True
    try:
        return bool(json.loads(a) == json.loads(b))
    except (ValueError, RecursionError):
        return False
