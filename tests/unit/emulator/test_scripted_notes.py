"""Rule 1a of the scripted model: a system note after a call's output is answered first."""

from __future__ import annotations

from typing import Any

from emulator.model import NOTE_PREFIX, MessagePlan, plan_response


def _system(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "system", "content": [{"type": "input_text", "text": text}]}


CALLED: list[dict[str, Any]] = [
    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "refund 42"}]},
    {"type": "function_call", "call_id": "c1", "name": "refund_order", "arguments": "{}"},
    {"type": "function_call_output", "call_id": "c1", "output": '{"status":"pending_approval"}'},
    {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
]


def test_a_note_ending_the_conversation_after_an_output_is_quoted() -> None:
    note = "Approval decision for call c1 (refund_order): approved. Result: {}"
    assert plan_response([*CALLED, _system(note)], []) == [MessagePlan(NOTE_PREFIX + note)]


def test_without_a_note_the_outputs_are_quoted_as_before() -> None:
    [plan] = plan_response(CALLED[:3], [])
    assert isinstance(plan, MessagePlan)
    assert plan.text.startswith("refund_order returned:")


def test_a_system_message_with_no_output_before_it_or_a_probe_is_no_note() -> None:
    user = CALLED[0]
    [plan] = plan_response([user, _system("Be nice.")], [])
    assert isinstance(plan, MessagePlan) and not plan.text.startswith(NOTE_PREFIX)
    [plan] = plan_response([*CALLED[:3], _system("(sideband resync; ignore) item_x")], [])
    assert isinstance(plan, MessagePlan) and plan.text.startswith("refund_order returned:")
