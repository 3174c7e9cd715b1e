"""The broker's own notes to the model: a system message added on the sideband, then answered.

An operator's decision on an approval-gated call comes after the call already has its (pending)
output, so it goes in as a ``system`` message naming the call id, never as a second
``function_call_output``. The note's item id is chosen here and registered as the broker's
before it is sent: the page watch never takes it for a page item (it deletes page-added
``system`` messages under ``page_items: refuse``), and the output ledger never sees it (it is a
message, not an output). The ``response.create`` that follows goes through the responder, so it
waits for any response under way.
"""

from __future__ import annotations

from typing import Any, Final

from sideband.events import new_event_id, new_item_id

NOTE_ITEM_PREFIX: Final = "item_nt"


def new_note_id() -> str:
    return new_item_id(NOTE_ITEM_PREFIX)


def note_item_create(item_id: str, text: str) -> dict[str, Any]:
    """``conversation.item.create`` for a system message with a broker-chosen id."""
    return {
        "type": "conversation.item.create",
        "event_id": new_event_id(),
        "item": {
            "id": item_id,
            "type": "message",
            "role": "system",
            "content": [{"type": "input_text", "text": text}],
        },
    }
