"""The event log's redaction of tools' fields (:mod:`broker.record.redaction`), event by event."""

from __future__ import annotations

import json
from typing import Any, Final

from broker.audit.redaction import FieldRedactor
from broker.record.redaction import CallTools, ToolFields, redact_event

REDACTOR: Final = FieldRedactor("a redaction secret of at least thirty-two characters")
CARD: Final = "4111111111111111"
HASHED: Final = {"redacted": REDACTOR.keyed_hash(CARD)}


def _calls() -> CallTools:
    return CallTools(ToolFields(REDACTOR, {"charge": frozenset({"card_number"})}))


def _call_item(name: str, call_id: str, arguments: str) -> dict[str, Any]:
    return {"type": "function_call", "name": name, "call_id": call_id, "arguments": arguments}


def _output_item(call_id: str, output: str) -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": call_id, "output": output}


ARGUMENTS: Final = json.dumps({"card_number": CARD, "amount": 5})


def test_a_redacting_tools_arguments_are_hashed_in_every_event_that_carries_them() -> None:
    calls = _calls()
    done = redact_event(
        {
            "type": "response.function_call_arguments.done",
            "name": "charge",
            "call_id": "c1",
            "arguments": ARGUMENTS,
        },
        calls,
    )
    assert json.loads(done["arguments"]) == {"card_number": HASHED, "amount": 5}
    for type_ in ("conversation.item.done", "response.output_item.done"):
        event = redact_event({"type": type_, "item": _call_item("charge", "c1", ARGUMENTS)}, calls)
        assert json.loads(event["item"]["arguments"])["card_number"] == HASHED
    response = redact_event(
        {"type": "response.done", "response": {"output": [_call_item("charge", "c1", ARGUMENTS)]}},
        calls,
    )
    assert json.loads(response["response"]["output"][0]["arguments"])["card_number"] == HASHED


def test_another_tools_call_and_output_are_left_as_they_are() -> None:
    calls = _calls()
    event = {"type": "conversation.item.done", "item": _call_item("lookup", "c2", ARGUMENTS)}
    assert redact_event(event, calls) is event
    output = {"type": "conversation.item.create", "item": _output_item("c2", "plain text")}
    assert redact_event(output, calls) is output


def test_an_output_is_redacted_by_its_calls_tool_or_every_field_if_unknown() -> None:
    calls = _calls()
    redact_event({"type": "conversation.item.added", "item": _call_item("charge", "c1", "")}, calls)
    known = redact_event(
        {"type": "conversation.item.create", "item": _output_item("c1", ARGUMENTS)}, calls
    )
    assert json.loads(known["item"]["output"])["card_number"] == HASHED
    # A call this log never saw (from before a restart): every redacting tool's fields, and
    # text that is not JSON hidden whole.
    unknown = redact_event(
        {"type": "conversation.item.done", "item": _output_item("c9", f"card {CARD} charged")},
        calls,
    )
    assert unknown["item"]["output"] == json.dumps(
        {"redacted": REDACTOR.keyed_hash(f"card {CARD} charged")}
    )


def test_argument_deltas_lose_their_text_while_any_tool_redacts() -> None:
    delta = {"type": "response.function_call_arguments.delta", "delta": '{"card_nu'}
    assert redact_event(delta, _calls())["delta"] == {"redacted": "arguments", "chars": 9}
    nobody = CallTools(ToolFields(REDACTOR, {}))
    assert redact_event(delta, nobody) is delta
    assert redact_event(delta) is delta
