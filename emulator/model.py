"""The scripted model: a deterministic stand-in for the LLM behind the emulator.

On ``response.create`` the emulator calls :func:`plan_response` with the conversation and
the tools in effect. The rules, in order:

1. **Tool results.** If the items after the most recent ``function_call`` item(s) include
   ``function_call_output`` items and no user message follows them, answer with one
   assistant message quoting each output verbatim, one line per output:
   ``lookup_order returned: {"order_id":"42","status":"shipped"}`` (the tool name comes from
   the matching ``function_call``; an output whose ``call_id`` matches none is attributed
   to its ``call_id``).
2. **Tool call.** Otherwise take the text of the last user message (its ``input_text``
   parts, joined by a space). If a whole word equals the name of a function tool, call the
   tool named earliest in the text (unless ``tool_choice`` is ``"none"``). Its arguments:

   - the JSON object right after the name, if there is one
     (``lookup_order {"order_id": "42"}``);
   - else the remaining words mapped onto the schema's ``required`` properties in order;
     a single required property takes the whole remainder, with several the last one
     takes what is left; values are coerced to ``integer``/``number``/``boolean`` when the
     schema says so and the word parses (``please lookup_order 42`` →
     ``{"order_id":"42"}`` for a string ``order_id``);
   - ``{}`` when nothing follows the name.

   Arguments are serialised as compact JSON.
3. **Echo.** Otherwise answer ``You said: <text>``; with no user text at all,
   ``Hello! How can I help you today?``.

Everything here is pure: no I/O, no clock, no randomness.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

GREETING: Final = "Hello! How can I help you today?"


@dataclass(frozen=True)
class MessagePlan:
    """An assistant message the response will stream."""

    text: str


@dataclass(frozen=True)
class FunctionCallPlan:
    """A function call the response will stream; ``arguments`` is compact JSON."""

    name: str
    arguments: str


Plan = MessagePlan | FunctionCallPlan


def compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def plan_response(
    conversation: Sequence[Mapping[str, Any]],
    tools: Sequence[Any],
    tool_choice: Any = "auto",
) -> list[Plan]:
    """Decide what the next response says, following the module's rules.

    Args:
        conversation: conversation items in order (item dicts as stored by the emulator).
        tools: the tools in effect (session tools or the response's override).
        tool_choice: the tool choice in effect; ``"none"`` disables rule 2.

    Returns:
        The output items to stream, in order (currently always exactly one).
    """
    quoted = _quote_tool_outputs(conversation)
    if quoted is not None:
        return [MessagePlan(quoted)]
    text = last_user_text(conversation)
    if text is None:
        return [MessagePlan(GREETING)]
    if tool_choice != "none":
        call = match_tool_call(text, tools)
        if call is not None:
            return [call]
    return [MessagePlan(f"You said: {text}")]


def _quote_tool_outputs(conversation: Sequence[Mapping[str, Any]]) -> str | None:
    last_call = max(
        (i for i, item in enumerate(conversation) if item.get("type") == "function_call"),
        default=None,
    )
    if last_call is None:
        return None
    names = {
        item.get("call_id"): item.get("name")
        for item in conversation
        if item.get("type") == "function_call"
    }
    lines: list[str] = []
    for item in conversation[last_call + 1 :]:
        if item.get("type") == "function_call_output":
            call_id = item.get("call_id")
            label = names.get(call_id) or call_id or "unknown"
            lines.append(f"{label} returned: {item.get('output', '')}")
        elif _is_user_message(item) and lines:
            # The user spoke after the results: answer the user instead (rule 2/3).
            return None
    return "\n".join(lines) if lines else None


def _is_user_message(item: Mapping[str, Any]) -> bool:
    return item.get("type") == "message" and item.get("role") == "user"


def last_user_text(conversation: Sequence[Mapping[str, Any]]) -> str | None:
    """Return the ``input_text`` of the last user message that has any, else ``None``."""
    for item in reversed(conversation):
        if not _is_user_message(item):
            continue
        parts = [
            part.get("text", "")
            for part in item.get("content") or []
            if isinstance(part, Mapping) and part.get("type") == "input_text"
        ]
        text = " ".join(p for p in parts if isinstance(p, str) and p).strip()
        if text:
            return text
    return None


def _function_tools(tools: Sequence[Any]) -> dict[str, Mapping[str, Any]]:
    found: dict[str, Mapping[str, Any]] = {}
    for tool in tools:
        if isinstance(tool, Mapping) and tool.get("type", "function") == "function":
            name = tool.get("name")
            if isinstance(name, str) and name:
                found.setdefault(name, tool)
    return found


def match_tool_call(text: str, tools: Sequence[Any]) -> FunctionCallPlan | None:
    """Return the call rule 2 makes for ``text``, or ``None`` when no tool is named."""
    best: tuple[int, str, re.Match[str]] | None = None
    for name in _function_tools(tools):
        # Tool names may contain "-" which \b does not treat as a word character.
        match = re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text)
        if match and (best is None or match.start() < best[0]):
            best = (match.start(), name, match)
    if best is None:
        return None
    _, name, match = best
    remainder = text[match.end() :].strip()
    arguments = extract_arguments(remainder, _function_tools(tools)[name])
    return FunctionCallPlan(name=name, arguments=compact_json(arguments))


def extract_arguments(remainder: str, tool: Mapping[str, Any]) -> dict[str, Any]:
    """Turn the text after a tool's name into its arguments object (rule 2)."""
    remainder = remainder.strip()
    if not remainder:
        return {}
    if remainder.startswith("{"):
        try:
            value, _ = json.JSONDecoder().raw_decode(remainder)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            return value
    parameters = tool.get("parameters")
    schema: Mapping[str, Any] = parameters if isinstance(parameters, Mapping) else {}
    required = [r for r in schema.get("required") or [] if isinstance(r, str)]
    properties = schema.get("properties")
    props: Mapping[str, Any] = properties if isinstance(properties, Mapping) else {}
    if not required:
        return {}
    words = remainder.split()
    values: dict[str, Any] = {}
    for index, prop in enumerate(required):
        if index >= len(words):
            break
        last = index == len(required) - 1
        raw = " ".join(words[index:]) if last else words[index]
        spec = props.get(prop)
        values[prop] = coerce(raw, spec if isinstance(spec, Mapping) else {})
    return values


def coerce(raw: str, spec: Mapping[str, Any]) -> Any:
    """Convert a word to the JSON type ``spec`` names; leave it a string if it won't parse."""
    kind = spec.get("type")
    kinds = kind if isinstance(kind, list) else [kind]
    if "integer" in kinds and re.fullmatch(r"[+-]?\d+", raw):
        return int(raw)
    if "number" in kinds:
        try:
            number = float(raw)
        except ValueError:
            pass
        else:
            return int(number) if re.fullmatch(r"[+-]?\d+", raw) else number
    if "boolean" in kinds and raw.lower() in {"true", "false"}:
        return raw.lower() == "true"
    return raw


def chunk_text(text: str) -> list[str]:
    """Split a transcript into word-sized deltas that concatenate back to ``text``."""
    chunks = re.findall(r"\s*\S+", text)
    if not chunks:
        return [text] if text else []
    chunks[-1] += text[len("".join(chunks)) :]
    return chunks


def chunk_arguments(arguments: str, size: int = 8) -> list[str]:
    """Split a JSON arguments string into fixed-size deltas (at least one)."""
    if not arguments:
        return [""]
    return [arguments[i : i + size] for i in range(0, len(arguments), size)]
