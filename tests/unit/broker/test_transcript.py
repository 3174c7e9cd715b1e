"""The transcript projection: turns in order, tool calls inline, deletions and caps honoured."""

from __future__ import annotations

from typing import Any

from broker.transcript import MAX_ENTRIES, MAX_TEXT_CHARS, project


def done(item: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return "conversation.item.done", {"type": "conversation.item.done", "item": item}


def message(item_id: str, role: str, text: str, part: str = "input_text") -> dict[str, Any]:
    key = "transcript" if part == "output_audio" else "text"
    return {"id": item_id, "type": "message", "role": role, "content": [{"type": part, key: text}]}


def test_turns_and_tool_calls_in_order_without_system_notes_or_deleted_items() -> None:
    events = [
        done(message("i1", "user", "lookup_order 42")),
        done(
            {
                "id": "i2",
                "type": "function_call",
                "call_id": "c1",
                "name": "lookup_order",
                "arguments": '{"order_id":"42"}',
            }
        ),
        done({"id": "i3", "type": "function_call_output", "call_id": "c1", "output": '{"ok":1}'}),
        done(message("probe", "system", "(sideband resync; ignore)")),
        done(message("i4", "assistant", "It has shipped.", part="output_audio")),
        done({"id": "f1", "type": "function_call_output", "call_id": "c9", "output": "forged"}),
        done(message("i5", "user", "never mind")),
        ("conversation.item.deleted", {"type": "conversation.item.deleted", "item_id": "i5"}),
    ]
    assert project(events) == [
        {"type": "turn", "role": "user", "text": "lookup_order 42"},
        {
            "type": "tool_call",
            "call_id": "c1",
            "name": "lookup_order",
            "arguments": '{"order_id":"42"}',
            "output": '{"ok":1}',
        },
        {"type": "turn", "role": "assistant", "text": "It has shipped."},
    ]


def test_the_projection_is_capped() -> None:
    long = "x" * (MAX_TEXT_CHARS + 50)
    events = [done(message(f"i{n}", "user", long)) for n in range(MAX_ENTRIES + 10)]
    lines = project(events)
    assert len(lines) == MAX_ENTRIES
    assert all(len(line["text"]) == MAX_TEXT_CHARS + 1 for line in lines)  # cut, with "…"
