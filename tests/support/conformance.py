"""Strict checks of wire events against the official SDK's own types (docs/protocol.md §5.5).

The SDK's parser does not validate (``construct_type_unchecked``), so these adapters do
what openai-agents-python does: a discriminated union over the SDK's event models.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Union

from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent
from pydantic import Field, TypeAdapter, ValidationError

from emulator import CallRegistry

SERVER_EVENT: TypeAdapter[Any] = TypeAdapter(
    Annotated[Union[RealtimeServerEvent,], Field(discriminator="type")]  # noqa: UP007
)
CLIENT_EVENT: TypeAdapter[Any] = TypeAdapter(
    Annotated[Union[RealtimeClientEvent,], Field(discriminator="type")]  # noqa: UP007
)


def validate_server_event(event: dict[str, Any]) -> None:
    """Raise ``pydantic.ValidationError`` unless ``event`` matches the GA SDK model for its type."""
    SERVER_EVENT.validate_python(event)


def validate_client_event(event: dict[str, Any]) -> None:
    """Raise ``pydantic.ValidationError`` unless ``event`` is a valid GA client event."""
    CLIENT_EVENT.validate_python(event)


def _failures(events: Iterable[dict[str, Any]], adapter: TypeAdapter[Any]) -> list[str]:
    failures = []
    for event in events:
        try:
            adapter.validate_python(event)
        except ValidationError as exc:
            failures.append(f"{event.get('type')!r}: {exc}\n  event: {event}")
    return failures


def server_event_failures(registry: CallRegistry) -> list[str]:
    """Every server event any call of ``registry`` sent that the SDK's types reject."""
    return _failures((e for call in registry.calls.values() for e in call.sent), SERVER_EVENT)


def sideband_client_event_failures(registry: CallRegistry) -> list[str]:
    """Every client event that arrived on a sideband and that the SDK's types reject."""
    events = (
        received.event
        for call in registry.calls.values()
        for received in call.received
        if received.source == "sideband"
    )
    return _failures(events, CLIENT_EVENT)
