"""A session's transcript, projected from its event log.

User and assistant turns in order, tool calls inline. Capped: the newest
:data:`MAX_ENTRIES` entries, each text cut at :data:`MAX_TEXT_CHARS`.

Built from the completed items the sideband saw (``conversation.item.done``), less the items
deleted again (the broker's resync probes, forged outputs). System messages are not turns.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

MAX_ENTRIES: Final = 200
MAX_TEXT_CHARS: Final = 2000
EVENT_TYPES: Final = ("conversation.item.done", "conversation.item.deleted")


def _text(item: dict[str, Any]) -> str:
    parts = []
    for part in item.get("content") or []:
        if isinstance(part, dict):
            text = part.get("text") or part.get("transcript")
            if isinstance(text, str) and text:
                parts.append(text)
    return " ".join(parts)


def _cut(text: Any) -> str:
    value = text if isinstance(text, str) else ""
    return value if len(value) <= MAX_TEXT_CHARS else value[:MAX_TEXT_CHARS] + "…"


def project(events: Iterable[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """``(type, payload)`` events in seq order → transcript entries (the newest ones)."""
    entries: dict[str, dict[str, Any]] = {}
    tools: dict[str, dict[str, Any]] = {}
    for type_, payload in events:
        if type_ == "conversation.item.deleted":
            entries.pop(str(payload.get("item_id")), None)
            continue
        item = payload.get("item")
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            continue
        kind = item.get("type")
        if kind == "message" and item.get("role") in ("user", "assistant"):
            entries[item["id"]] = {"type": "turn", "role": item["role"], "text": _cut(_text(item))}
        elif kind == "function_call":
            entry = {
                "type": "tool_call",
                "call_id": item.get("call_id"),
                "name": item.get("name"),
                "arguments": _cut(item.get("arguments")),
                "output": None,
            }
            entries[item["id"]] = entry
            tools[str(item.get("call_id"))] = entry
        elif kind == "function_call_output" and str(item.get("call_id")) in tools:
            tools[str(item.get("call_id"))]["output"] = _cut(item.get("output"))
    return list(entries.values())[-MAX_ENTRIES:]
