"""The call's handle on one attached sideband socket, and what its writer is asked to do."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from ._ids import new_connection_id
from .faults import Faults


@dataclass(frozen=True)
class Outgoing:
    """One server event for the socket, stamped when the call produced it."""

    text: str
    queued_at: float


@dataclass(frozen=True)
class CloseRequest:
    """Flush what is queued before this, then close the socket with ``code``."""

    code: int


@dataclass(frozen=True)
class AbortRequest:
    """Abort the TCP transport now, without a close frame (the client sees 1006)."""


LinkRequest = Outgoing | CloseRequest | AbortRequest


class SidebandLink:
    """The call's handle on one attached sideband: an outbound queue its writer drains.

    Args:
        call_id_query: the ``call_id`` query value the sideband connected with.
        faults: the app's fault switches; ``None`` (no faults) for a plain link.

    Attributes:
        drop_after_events: the ``sideband_drop_after_events`` switch as it was when this
            link attached (the fault applies to sidebands attached while it is set).
        sent: server events written to the socket so far (the writer counts them).
        abort_requested: set by :meth:`request_abort`; the writer stops waiting and aborts.
        hurry: set by :meth:`request_close` and :meth:`request_abort`: events still held
            back by the delay fault go out at once, so closing never waits on the fault.
    """

    def __init__(self, call_id_query: str, *, faults: Faults | None = None) -> None:
        self.connection_id = new_connection_id("sideband")
        self.call_id_query = call_id_query
        self.faults = faults
        self.drop_after_events = (
            faults.current.sideband_drop_after_events if faults is not None else None
        )
        self.sent = 0
        # Unbounded on purpose: fan-out is synchronous and must never drop or reorder.
        self.outbox: asyncio.Queue[LinkRequest] = asyncio.Queue()
        self.abort_requested = asyncio.Event()
        self.hurry = asyncio.Event()
        self.detached = asyncio.Event()

    def deliver(self, text: str, event_type: str | None = None) -> None:
        """Queue one server event (JSON text) for the socket; never blocks.

        ``event_type`` is the event's ``type`` if the caller knows it; ``None`` means
        unknown, and it is then read from ``text`` only while a type filter is on.
        """
        if self.faults is not None and self.faults.drops_sideband_event(text, event_type):
            return
        self.outbox.put_nowait(Outgoing(text, time.monotonic()))

    @property
    def event_delay_s(self) -> float:
        """How long after it was produced each event may be written (a live fault switch)."""
        return self.faults.sideband_event_delay_s if self.faults is not None else 0.0

    def request_close(self, code: int) -> None:
        """Ask the writer to flush what is queued, then close the socket with ``code``."""
        self.hurry.set()
        self.outbox.put_nowait(CloseRequest(code))

    def request_abort(self) -> None:
        """Ask the writer to abort the transport now, skipping whatever is still queued."""
        self.abort_requested.set()
        self.hurry.set()
        self.outbox.put_nowait(AbortRequest())  # wakes a writer idle on the queue
