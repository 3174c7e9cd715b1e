"""What a call records for inspection: every client event as it arrived, bounded.

A :class:`~emulator.calls.Call`'s ``received`` holds :class:`ReceivedClientEvent` records
and its ``sent`` the server events; both keep only the newest events, so a long call cannot
grow the emulator without bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

Source = Literal["datachannel", "sideband", "websocket"]
MAX_SENT_RECORDED: Final = 50_000  # the recorder keeps the newest server events of a call
MAX_RECEIVED_RECORDED: Final = 50_000  # ... and the newest client events


@dataclass(frozen=True)
class ReceivedClientEvent:
    """One client event as it arrived, before any validation.

    Attributes:
        source: ``"datachannel"`` (the browser), ``"sideband"``, or ``"websocket"`` (the
            socket of a WebSocket session).
        connection_id: emulator-local id of the connection (``dc_…`` / ``sb_…``).
        event: the parsed JSON object.
        at: arrival time, ``time.time()`` seconds.
    """

    source: Source
    connection_id: str
    event: dict[str, Any]
    at: float


def recorded(event: dict[str, Any]) -> dict[str, Any]:
    """The client event as the recorder keeps it."""
    # Appended audio can be megabytes per event; the recorder keeps its size, not its bytes.
    audio = event.get("audio")
    if event.get("type") == "input_audio_buffer.append" and isinstance(audio, str):
        return {**event, "audio": f"<{len(audio)} base64 characters>"}
    return event
