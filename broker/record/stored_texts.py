"""Texts the broker sends the model in clear that the event log keeps as something else.

A message of the broker's sometimes carries what the log must not: a phone caller's keys (a
keypad turn on a masking line), or an approved tool's result whose fields the tool redacts.
The model needs the real text; the stored copy of every event holding that message (the
``conversation.item.create`` sent, the provider's echoes and look-ups of the item) carries the
substitute instead. Matched by the whole text of a content part: the broker wrote it, so an
exact match is the message and nothing else.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any, Final

KEPT: Final = 16
"""The latest substitutions a call remembers (older messages' echoes are long past)."""


class StoredTexts:
    """One call's substitutions, newest :data:`KEPT` kept."""

    def __init__(self, kept: int = KEPT) -> None:
        self._substitutes: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._kept = kept

    def __bool__(self) -> bool:
        return bool(self._substitutes)

    def keep_as(self, clear: str, stored: str) -> None:
        """Store ``stored`` wherever an item's text part is exactly ``clear``."""
        if clear == stored:
            return
        self._substitutes[clear] = stored
        self._substitutes.move_to_end(clear)
        while len(self._substitutes) > self._kept:
            self._substitutes.popitem(last=False)

    def apply(self, event: dict[str, Any]) -> dict[str, Any]:
        """``event`` as the log keeps it: a copy with the substitutes, or itself unchanged."""
        if not self._substitutes:
            return event
        item = event.get("item")
        if not isinstance(item, Mapping):
            return event
        content = item.get("content")
        if not isinstance(content, list):
            return event
        parts = [self._part(part) for part in content]
        if all(new is old for new, old in zip(parts, content, strict=True)):
            return event
        return {**event, "item": {**item, "content": parts}}

    def _part(self, part: Any) -> Any:
        if not isinstance(part, Mapping):
            return part
        text = part.get("text")
        if not isinstance(text, str) or text not in self._substitutes:
            return part
        return {**part, "text": self._substitutes[text]}
