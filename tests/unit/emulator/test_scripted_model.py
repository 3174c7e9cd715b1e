"""The scripted model's rules (emulator/model.py docstring) as pure functions."""

from __future__ import annotations

import json
from typing import Any

import pytest

from emulator.model import (
    GREETING,
    HEARD_AUDIO,
    FunctionCallPlan,
    MessagePlan,
    chunk_arguments,
    chunk_text,
    coerce,
    extract_arguments,
    match_tool_call,
    plan_response,
    plan_tool_calls,
)


def _tool(name: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "function",
        "name": name,
        "description": "test tool",
        "parameters": {"type": "object", "properties": properties, "required": required},
    }


LOOKUP = _tool("lookup_order", {"order_id": {"type": "string"}}, ["order_id"])
ADD = _tool("add", {"a": {"type": "integer"}, "b": {"type": "number"}}, ["a", "b"])
NOTE = _tool(
    "save_note", {"title": {"type": "string"}, "body": {"type": "string"}}, ["title", "body"]
)


def user(text: str) -> dict[str, Any]:
    return {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": text}],
    }


def call(name: str, call_id: str) -> dict[str, Any]:
    return {"type": "function_call", "name": name, "call_id": call_id, "arguments": "{}"}


def output(call_id: str, text: str) -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": call_id, "output": text}


@pytest.mark.parametrize(
    ("remainder", "tool", "expected"),
    [
        ('{"order_id": "42"}', LOOKUP, {"order_id": "42"}),
        ('{"order_id": 7} and some trailing words', LOOKUP, {"order_id": 7}),
        ("42", LOOKUP, {"order_id": "42"}),
        ("order number 42", LOOKUP, {"order_id": "order number 42"}),
        ("", LOOKUP, {}),
        ("   ", LOOKUP, {}),
        ("2 3.5", ADD, {"a": 2, "b": 3.5}),
        ("2", ADD, {"a": 2}),
        ("x 3", ADD, {"a": "x", "b": 3}),
        ("groceries milk and eggs", NOTE, {"title": "groceries", "body": "milk and eggs"}),
        ("{not json", LOOKUP, {"order_id": "{not json"}),
        ("anything", _tool("ping", {}, []), {}),
    ],
)
def test_extract_arguments(remainder: str, tool: dict[str, Any], expected: dict[str, Any]) -> None:
    """Arguments: a JSON object wins; else words map onto required properties in order."""
    assert extract_arguments(remainder, tool) == expected


@pytest.mark.parametrize(
    ("raw", "spec", "expected"),
    [
        ("42", {"type": "integer"}, 42),
        ("-3", {"type": "integer"}, -3),
        ("4.5", {"type": "integer"}, "4.5"),
        ("4.5", {"type": "number"}, 4.5),
        ("4", {"type": "number"}, 4),
        ("true", {"type": "boolean"}, True),
        ("FALSE", {"type": "boolean"}, False),
        ("42", {"type": "string"}, "42"),
        ("42", {"type": ["integer", "null"]}, 42),
        ("abc", {}, "abc"),
    ],
)
def test_coerce(raw: str, spec: dict[str, Any], expected: Any) -> None:
    """Coercion follows the schema type and leaves unparseable words as strings."""
    result = coerce(raw, spec)
    assert result == expected
    assert type(result) is type(expected)


def test_tool_named_by_whole_word_only() -> None:
    """A tool is called only when a whole word equals its name."""
    assert match_tool_call("please lookup_orders 42", [LOOKUP]) is None
    assert match_tool_call("my_lookup_order 42", [LOOKUP]) is None
    plan = match_tool_call("please lookup_order 42", [LOOKUP])
    assert plan == FunctionCallPlan("lookup_order", '{"order_id":"42"}')


def test_each_mention_is_a_call_in_text_order() -> None:
    """Several tools named in one message give several calls; words up to the next mention."""
    plans = plan_tool_calls("add 1 2 then lookup_order 9", [LOOKUP, ADD])
    assert plans == [
        FunctionCallPlan("add", '{"a":1,"b":"2 then"}'),
        FunctionCallPlan("lookup_order", '{"order_id":"9"}'),
    ]
    assert plan_response([user("lookup_order 1 lookup_order 2")], [LOOKUP]) == [
        FunctionCallPlan("lookup_order", '{"order_id":"1"}'),
        FunctionCallPlan("lookup_order", '{"order_id":"2"}'),
    ]


def test_json_arguments_may_contain_a_tool_name() -> None:
    """A mention inside an earlier mention's JSON arguments is part of those arguments."""
    plans = plan_tool_calls('save_note {"title": "add", "body": "x"} add 1 2', [NOTE, ADD])
    assert plans == [
        FunctionCallPlan("save_note", '{"title":"add","body":"x"}'),
        FunctionCallPlan("add", '{"a":1,"b":2}'),
    ]


def test_forced_mention_calls_a_tool_outside_the_session() -> None:
    """``tool:<name>`` makes the model call a tool it was never given."""
    plans = plan_response([user('please tool:delete_account {"user": "u1"}')], [LOOKUP])
    assert plans == [FunctionCallPlan("delete_account", '{"user":"u1"}')]
    assert plan_tool_calls("tool:wipe now", []) == [FunctionCallPlan("wipe", "{}")]
    # A known tool named with the prefix still gets its schema's argument mapping.
    assert plan_tool_calls("tool:lookup_order 42", [LOOKUP]) == [
        FunctionCallPlan("lookup_order", '{"order_id":"42"}')
    ]


def test_tool_choice_forms() -> None:
    """required, a named function, and parallel_tool_calls false shape the calls."""
    assert plan_tool_calls("where is 42", [LOOKUP, ADD], "required") == [
        FunctionCallPlan("lookup_order", '{"order_id":"where is 42"}')
    ]
    named = {"type": "function", "name": "add"}
    assert plan_tool_calls("lookup_order 1 add 2 3", [LOOKUP, ADD], named) == [
        FunctionCallPlan("add", '{"a":2,"b":3}')
    ]
    assert plan_tool_calls("5 6", [LOOKUP, ADD], named) == [
        FunctionCallPlan("add", '{"a":5,"b":6}')
    ]
    assert plan_response([user("add 1 2 add 3 4")], [ADD], parallel_tool_calls=False) == [
        FunctionCallPlan("add", '{"a":1,"b":2}')
    ]


def test_audio_turns() -> None:
    """Audio with a transcript reads like text; audio without one is acknowledged."""
    heard = {"type": "message", "role": "user", "content": [{"type": "input_audio"}]}
    assert plan_response([user("lookup_order 1"), heard], [LOOKUP]) == [MessagePlan(HEARD_AUDIO)]
    spoken = {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_audio", "transcript": "lookup_order 7"}],
    }
    assert plan_response([spoken], [LOOKUP]) == [
        FunctionCallPlan("lookup_order", '{"order_id":"7"}')
    ]


def test_arguments_are_compact_json() -> None:
    """Arguments are serialised without spaces."""
    plan = match_tool_call('lookup_order {"order_id": "42"}', [LOOKUP])
    assert plan == FunctionCallPlan("lookup_order", '{"order_id":"42"}')


def test_rule_tool_call_from_last_user_message() -> None:
    """Rule 2: the last user message naming a tool produces a function call."""
    conversation = [user("hi"), user("lookup_order 42")]
    assert plan_response(conversation, [LOOKUP]) == [
        FunctionCallPlan("lookup_order", '{"order_id":"42"}')
    ]


def test_tool_choice_none_disables_calls() -> None:
    """tool_choice "none" turns rule 2 off; the model echoes instead."""
    assert plan_response([user("lookup_order 42")], [LOOKUP], "none") == [
        MessagePlan("You said: lookup_order 42")
    ]


def test_rule_quote_tool_outputs() -> None:
    """Rule 1: outputs after the latest call(s) are quoted verbatim, one line each."""
    conversation = [
        user("lookup_order 42"),
        call("lookup_order", "call_1"),
        call("add", "call_2"),
        output("call_1", '{"order_id":"42","status":"shipped"}'),
        output("call_2", "5"),
    ]
    assert plan_response(conversation, [LOOKUP, ADD]) == [
        MessagePlan('lookup_order returned: {"order_id":"42","status":"shipped"}\nadd returned: 5')
    ]


def test_rule_quote_unknown_call_id_uses_call_id() -> None:
    """An output whose call_id matches no call is attributed to its call_id."""
    conversation = [call("lookup_order", "call_1"), output("call_zzz", "forged")]
    assert plan_response(conversation, []) == [MessagePlan("call_zzz returned: forged")]


def test_user_message_after_outputs_takes_precedence() -> None:
    """A user message after the outputs means the model answers the user (rule 2/3)."""
    conversation = [
        call("lookup_order", "call_1"),
        output("call_1", "{}"),
        user("thanks"),
    ]
    assert plan_response(conversation, [LOOKUP]) == [MessagePlan("You said: thanks")]


def test_outputs_before_latest_call_are_not_quoted() -> None:
    """Only outputs after the most recent function call count for rule 1."""
    conversation = [
        user("lookup_order 1"),
        call("lookup_order", "call_1"),
        output("call_1", "old"),
        user("lookup_order 2"),
        call("lookup_order", "call_2"),
    ]
    assert plan_response(conversation, [LOOKUP]) == [
        FunctionCallPlan("lookup_order", '{"order_id":"2"}')
    ]


def test_echo_and_greeting() -> None:
    """Rule 3: echo the user's text; greet when there is no user text."""
    assert plan_response([user("hello there")], [LOOKUP]) == [MessagePlan("You said: hello there")]
    assert plan_response([], []) == [MessagePlan(GREETING)]
    system = {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "x"}]}
    assert plan_response([system], []) == [MessagePlan(GREETING)]


def test_chunks_reassemble() -> None:
    """Deltas concatenate back to the full text/arguments."""
    text = 'lookup_order returned:  {"a": 1}\n next '
    assert "".join(chunk_text(text)) == text
    assert len(chunk_text(text)) > 1
    args = '{"order_id":"42","note":"x"}'
    assert "".join(chunk_arguments(args)) == args
    assert chunk_arguments("") == [""]
    assert chunk_text("") == []


def _unverified_turn(call_item_id: str) -> list[dict[str, Any]]:
    output = json.dumps({"error": {"code": "call_unverified", "message": "not run"}})
    return [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        {
            "id": call_item_id,
            "type": "function_call",
            "call_id": "call_1",
            "name": "lookup_order",
            "arguments": '{"order_id":"42"}',
        },
        {"type": "function_call_output", "call_id": "call_1", "output": output},
    ]


def test_an_unverified_call_of_the_models_own_is_made_again_once() -> None:
    """Rule 0: told its own call was not run, the model calls again; a third time, never."""
    conversation = _unverified_turn("item_model")
    plans = plan_response(conversation, [], own_item_ids={"item_model"})
    assert plans == [FunctionCallPlan("lookup_order", '{"order_id":"42"}')]
    again = [*conversation, {**conversation[1], "id": "item_model2", "call_id": "call_2"}]
    again.append({**conversation[2], "call_id": "call_2"})
    assert plan_response(again, [], own_item_ids={"item_model", "item_model2"}) != plans


def test_an_unverified_call_the_page_planted_is_not_made_again() -> None:
    """Rule 0 retries only the model's own calls: a planted one's error is read out."""
    plans = plan_response(_unverified_turn("item_page"), [], own_item_ids={"item_model"})
    assert len(plans) == 1 and not isinstance(plans[0], FunctionCallPlan)
