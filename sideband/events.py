"""Realtime wire events: typed server events the controller reads, and client events it sends.

Pure data, no I/O. Server events the controller does not act on parse as :class:`UnknownEvent`
and pass through untouched (they are still recorded and fanned out). Shapes follow the GA
protocol (``../shared/PROTOCOL.md`` §3, §3.4).
"""

from __future__ import annotations

import json
import secrets
from typing import Annotated, Any, Literal

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


class ConversationItemAdded(_ServerEvent):
    type: Literal["conversation.item.added"]
    item: Item
    previous_item_id: str | None = None


class ConversationItemDone(_ServerEvent):
    type: Literal["conversation.item.done"]
    item: Item
    previous_item_id: str | None = None


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
    | ConversationItemAdded
    | ConversationItemDone
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
        "conversation.item.added",
        "conversation.item.done",
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

    Known types that fail validation raise; an unknown ``type`` is never an error.

    Raises:
        MalformedEventError: a known event type with missing or mistyped fields.
    """
    if data["type"] not in _KNOWN_TYPES:
        return UnknownEvent.model_validate(data)
    try:
        return _KNOWN_ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise MalformedEventError(
            f"{data['type']} event failed validation: {exc.error_count()} error(s)"
        ) from exc


def new_event_id() -> str:
    """A client event id, echoed by the provider in ``error.event_id``."""
    return f"evt_sb_{secrets.token_hex(10)}"


def function_call_output(call_id: str, output: str, event_id: str | None = None) -> dict[str, Any]:
    """``conversation.item.create`` carrying a tool result.

    ``output`` goes on the wire as-is: it is already the string the model reads (no second
    JSON encoding).
    """
    return {
        "type": "conversation.item.create",
        "event_id": event_id or new_event_id(),
        "item": {"type": "function_call_output", "call_id": call_id, "output": output},
    }


def response_create(event_id: str | None = None) -> dict[str, Any]:
    """A bare ``response.create``: the model continues with the conversation as it is."""
    return {"type": "response.create", "event_id": event_id or new_event_id()}
