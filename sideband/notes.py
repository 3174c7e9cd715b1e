"""The broker's own notes to the model: a system message added on the sideband, then answered.

An operator's decision on an approval-gated call comes after the call already has its (pending)
output, so it goes in as a ``system`` message naming the call id, never as a second
``function_call_output``. The note's item id is chosen here and registered as the broker's
before it is sent: the page watch never takes it for a page item (it deletes page-added
``system`` messages under ``page_items: refuse``), and the output ledger never sees it (it is a
message, not an output). The ``response.create`` that follows goes through the responder, so it
waits for any response under way. A note the sideband cannot take now (it is reconnecting) is
kept and sent first thing on the next connection.

A phone caller's keypad turn (digits ended by the line's terminator) goes in the same way, as
a ``user`` message of the broker's: the caller spoke through the keypad, and the model is to
answer it as a turn (:meth:`sideband.CallController.inject_note` with ``role="user"``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final, Literal

from sideband.contracts import Wiring
from sideband.events import new_event_id, new_item_id

NOTE_ITEM_PREFIX: Final = "item_nt"
NoteRole = Literal["system", "user"]


def new_note_id() -> str:
    return new_item_id(NOTE_ITEM_PREFIX)


def note_item_create(item_id: str, text: str, role: NoteRole = "system") -> dict[str, Any]:
    """``conversation.item.create`` for a message (system by default) with a broker-chosen id."""
    return {
        "type": "conversation.item.create",
        "event_id": new_event_id(),
        "item": {
            "id": item_id,
            "type": "message",
            "role": role,
            "content": [{"type": "input_text", "text": text}],
        },
    }


class Notes:
    """The broker's notes of one call: sent now, or kept for the sideband's next connection.

    Args:
        wiring: what the controller lends it.
        ours: registers an item id as the broker's (the page watch, the look-ups).
        sent: a note went out (the answer ledger: the next response is to read it).
        respond: asks for a response if one is wanted.
    """

    def __init__(
        self,
        wiring: Wiring,
        *,
        ours: Callable[[str], None],
        sent: Callable[[str], None],
        respond: Callable[[], Awaitable[None]],
    ) -> None:
        self._send = wiring.send
        self._ours = ours
        self._sent = sent
        self._respond = respond
        self.queued: dict[str, tuple[str, NoteRole]] = {}
        """Notes not sent on any connection yet (item id → text, role), oldest first."""

    async def add(self, text: str, *, connected: bool, role: NoteRole = "system") -> bool:
        """Send a note now (``True``), or keep it for the next connection (``False``)."""
        item_id = new_note_id()
        self._ours(item_id)
        if connected and await self._deliver(item_id, text, role):
            return True
        self.queued[item_id] = (text, role)
        return False

    async def resend(self) -> None:
        """On a new connection: the notes a lost (or absent) one could not take."""
        for item_id, (text, role) in list(self.queued.items()):
            if not await self._deliver(item_id, text, role):
                return
            del self.queued[item_id]

    async def _deliver(self, item_id: str, text: str, role: NoteRole) -> bool:
        if not await self._send(note_item_create(item_id, text, role)):
            return False
        self._sent(item_id)
        await self._respond()
        return True
