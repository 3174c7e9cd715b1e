"""Model rule 5: an out-of-band response never calls a tool; with instructions it acknowledges."""

from __future__ import annotations

from typing import Any

from emulator.model import ACK_TEXT, GREETING, MessagePlan, plan_out_of_band


def user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def test_instructions_make_the_fixed_acknowledgement() -> None:
    assert plan_out_of_band([user("lookup_order 42")], "Tell them to wait.") == [
        MessagePlan(ACK_TEXT)
    ]


def test_without_instructions_it_answers_in_words_never_with_a_call() -> None:
    assert plan_out_of_band([user("lookup_order 42")]) == [MessagePlan("You said: lookup_order 42")]
    assert plan_out_of_band([user("please tool:refund now")], "  ") == [
        MessagePlan("You said: please tool:refund now")
    ]
    assert plan_out_of_band([]) == [MessagePlan(GREETING)]


def test_an_unverified_call_is_not_retried_out_of_band() -> None:
    conversation = [
        user("lookup_order 42"),
        {
            "id": "item_c",
            "type": "function_call",
            "call_id": "c1",
            "name": "lookup_order",
            "arguments": "{}",
        },
        {
            "type": "function_call_output",
            "call_id": "c1",
            "output": '{"error": {"code": "call_unverified"}}',
        },
    ]
    [plan] = plan_out_of_band(conversation)
    assert isinstance(plan, MessagePlan)
    assert plan.text.startswith("lookup_order returned: ")
