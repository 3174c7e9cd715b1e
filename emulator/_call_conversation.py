"""The ``conversation.item.*`` client events of a call: create, delete, retrieve, truncate."""

from __future__ import annotations

from typing import Any

from ._call_base import CallBase
from ._conversation import delete_item, find_item, insert_item
from ._events import item_event, server_event
from ._ids import new_item_id
from ._items import committed_audio, normalize_client_item, with_input_audio
from ._recorder import Source
from ._session import audio_side
from .errors import ClientEventError


class CallConversation(CallBase):
    """A call's reads and edits of its conversation, as clients ask for them."""

    def _item_create(self, event: dict[str, Any], source: Source, connection_id: str) -> None:
        item = normalize_client_item(event.get("item"))
        faults = self._faults.current
        if faults.provider_item_ids:
            item["id"] = new_item_id()
        previous_id = insert_item(self.conversation, item, event.get("previous_item_id"))
        added = item_event("conversation.item.added", item, previous_id)
        done = item_event("conversation.item.done", item, previous_id)
        if source == "datachannel" and faults.sideband_misses_page_items:
            self._reply(source, connection_id, added)
            self._reply(source, connection_id, done)
        else:
            self.broadcast(added)
            self.broadcast(done)

    def _item_delete(self, event: dict[str, Any]) -> None:
        item_id = delete_item(self.conversation, event.get("item_id"))
        self.broadcast(server_event("conversation.item.deleted", item_id=item_id))

    def _item_retrieve(self, event: dict[str, Any]) -> None:
        item = find_item(self.conversation, event.get("item_id"))
        committed_ms = self._input_audio_ms.get(item["id"])
        if committed_ms is not None:
            # Only a retrieve carries a committed turn's audio; its added/done never do.
            input_format = audio_side(self.session, "input").get("format")
            item = with_input_audio(item, committed_audio(committed_ms, input_format))
        self.broadcast(item_event("conversation.item.retrieved", item, None, previous=False))

    def _item_truncate(self, event: dict[str, Any]) -> None:
        item = find_item(self.conversation, event.get("item_id"))
        content_index = event.get("content_index")
        audio_end_ms = event.get("audio_end_ms")
        content = item.get("content") or []
        if item.get("role") != "assistant" or not isinstance(content_index, int):
            raise ClientEventError(
                "invalid_value",
                "Only assistant message items with audio can be truncated.",
                param="item_id" if item.get("role") != "assistant" else "content_index",
            )
        if not 0 <= content_index < len(content) or content[content_index].get("type") != (
            "output_audio"
        ):
            raise ClientEventError(
                "invalid_value",
                f"Content part {content_index} of the item is not audio.",
                param="content_index",
            )
        played = self._speaker.audio_ms.get(item["id"], 0)
        if not isinstance(audio_end_ms, int) or not 0 <= audio_end_ms <= played:
            raise ClientEventError(
                "invalid_value",
                f"audio_end_ms must be between 0 and the audio's duration ({played} ms).",
                param="audio_end_ms",
            )
        # Like the service: the transcript goes, so the model's context holds only what
        # the user heard (the emulator keeps no audio to cut).
        content[content_index]["transcript"] = ""
        self.broadcast(
            server_event(
                "conversation.item.truncated",
                item_id=item["id"],
                content_index=content_index,
                audio_end_ms=audio_end_ms,
            )
        )
