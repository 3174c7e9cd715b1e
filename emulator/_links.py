"""The call's handle on one attached sideband socket."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ._ids import new_connection_id


@dataclass(frozen=True)
class CloseRequest:
    code: int


class SidebandLink:
    """The call's handle on one attached sideband: an outbound queue its writer drains."""

    def __init__(self, call_id_query: str) -> None:
        self.connection_id = new_connection_id("sideband")
        self.call_id_query = call_id_query
        # Unbounded on purpose: fan-out is synchronous and must never drop or reorder.
        self.outbox: asyncio.Queue[str | CloseRequest] = asyncio.Queue()
        self.detached = asyncio.Event()

    def deliver(self, text: str) -> None:
        self.outbox.put_nowait(text)

    def request_close(self, code: int) -> None:
        """Ask the writer to flush what is queued, then close the socket with ``code``."""
        self.outbox.put_nowait(CloseRequest(code))
