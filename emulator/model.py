"""The scripted model: a deterministic stand-in for the LLM behind the emulator.

On ``response.create`` (or a server-VAD turn) the emulator calls :func:`plan_response`
with the conversation and the tools in effect. The rules, in order:

0. **Unverified calls.** A ``function_call_output`` after the most recent ``function_call``
   item(s) that says ``{"error": {"code": "call_unverified", …}}`` (the broker could not prove
   the model made that call) makes the model call the same tool with the same arguments
   again, once: a real model, told its call was not run, tries again. Only a call the
   model itself made is retried (one the page planted in the conversation was never the
   model's intent), and one made twice already is not made a third time (rule 1 then reads
   the output out).
1. **Tool results.** If the items after the most recent ``function_call`` item(s) include
   ``function_call_output`` items and no user message follows them, answer with one
   assistant message quoting each output verbatim, one line per output:
   ``lookup_order returned: {"order_id":"42","status":"shipped"}`` (the tool name comes from
   the matching ``function_call``; an output whose ``call_id`` matches none is attributed
   to its ``call_id``).
   **1a. Notes.** A ``system`` message that is the conversation's last item, after a
   ``function_call_output`` (the broker's note on an earlier call, e.g. an operator's
   decision on an approval-gated call), is answered first: ``Update: <its text>``.
2. **Tool calls.** Otherwise look at the *last* user message. Its text is its
   ``input_text`` parts and the ``transcript`` of its ``input_audio`` parts, joined by a
   space. Every *mention* in the text becomes one function call, in text order:

   - a whole word equal to the name of a function tool in effect (session ``tools``, or
     ``response.tools`` if given);
   - ``tool:<name>`` for *any* name, in the session or not: the model "hallucinates" a
     call, so tests can prove the broker refuses tools it never offered.

   A mention's arguments: the JSON object right after it, if there is one
   (``lookup_order {"order_id": "42"}``); else the words up to the next mention, mapped
   onto the tool schema's ``required`` properties in order (one property takes them all;
   with several each takes one word and the last takes the rest), coerced to
   ``integer``/``number``/``boolean`` when the schema says so and the word parses;
   ``{}`` when nothing follows or the tool has no schema. Arguments are compact JSON.

   ``tool_choice`` is honoured: ``"none"`` disables this rule; ``"required"`` with no
   mention calls the first tool with the whole text as arguments; ``{"type": "function",
   "name": X}`` keeps only calls to X (or makes one from the whole text).
   ``parallel_tool_calls: false`` keeps only the first call.
3. **Heard audio.** A last user message with audio but no text (server VAD committed it;
   the emulator does no speech recognition) gets ``I heard you.``. (A phone caller's
   spoken turn reaches the planner with its words as the transcript:
   :meth:`emulator.calls.Call._model_view`.)
4. **Echo.** Otherwise ``You said: <text>``; with no user message at all,
   ``Hello! How can I help you today?``.
5. **Out-of-band responses.** A ``response.create`` with ``response.conversation: "none"``
   (docs/protocol.md §3.2) reads the conversation but adds nothing to it, and never calls
   a tool (its ``tool_choice`` is treated as ``"none"``; rule 0 does not apply). With
   ``instructions`` it says the fixed acknowledgement :data:`ACK_TEXT` (``One moment, I'm
   working on that.``): the broker asks for one while a long-running tool works. Without
   instructions it follows rules 1, 3 and 4.

Everything here is pure: no I/O, no clock, no randomness.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

GREETING: Final = "Hello! How can I help you today?"
HEARD_AUDIO: Final = "I heard you."
ACK_TEXT: Final = "One moment, I'm working on that."
NOTE_PREFIX: Final = "Update: "


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
    *,
    parallel_tool_calls: bool = True,
    own_item_ids: Collection[str] = (),
) -> list[Plan]:
    """Decide what the next response says, following the module's rules.

    Args:
        conversation: conversation items in order (item dicts as stored by the emulator).
        tools: the tools in effect (session tools or the response's override).
        tool_choice: the tool choice in effect (see rule 2).
        parallel_tool_calls: ``False`` keeps only the first function call.
        own_item_ids: ids of the function calls the model made itself (rule 0).

    Returns:
        The output items to stream, in order: one message, or one or more function calls.
    """
    retries = _retry_unverified(conversation, own_item_ids)
    if retries:
        return list(retries if parallel_tool_calls else retries[:1])
    note = _note_after_outputs(conversation)
    if note is not None:
        return [MessagePlan(f"{NOTE_PREFIX}{note}")]
    quoted = _quote_tool_outputs(conversation)
    if quoted is not None:
        return [MessagePlan(quoted)]
    turn = last_user_turn(conversation)
    if turn is None:
        return [MessagePlan(GREETING)]
    if turn.text is None:
        return [MessagePlan(HEARD_AUDIO if turn.has_audio else GREETING)]
    calls = plan_tool_calls(turn.text, tools, tool_choice)
    if calls:
        return list(calls if parallel_tool_calls else calls[:1])
    return [MessagePlan(f"You said: {turn.text}")]


def plan_out_of_band(
    conversation: Sequence[Mapping[str, Any]], instructions: Any = None
) -> list[Plan]:
    """Decide what an out-of-band response says (rule 5): never a function call.

    Args:
        conversation: the conversation items in order (read, never changed).
        instructions: ``response.instructions`` of the request; a non-empty string makes
            the model answer :data:`ACK_TEXT`.
    """
    if isinstance(instructions, str) and instructions.strip():
        return [MessagePlan(ACK_TEXT)]
    plans = plan_response(conversation, (), "none")
    return [plan for plan in plans if isinstance(plan, MessagePlan)] or [MessagePlan(GREETING)]


UNVERIFIED_CODE: Final = "call_unverified"


def _is_unverified(output: Any) -> bool:
    try:
        value = json.loads(output) if isinstance(output, str) else None
    except ValueError:
        return False
    error = value.get("error") if isinstance(value, dict) else None
    return isinstance(error, dict) and error.get("code") == UNVERIFIED_CODE


def _retry_unverified(
    conversation: Sequence[Mapping[str, Any]], own_item_ids: Collection[str]
) -> list[FunctionCallPlan]:
    last_call = max(
        (i for i, item in enumerate(conversation) if item.get("type") == "function_call"),
        default=None,
    )
    if last_call is None:
        return []
    calls = {
        item.get("call_id"): item for item in conversation if item.get("type") == "function_call"
    }
    retries: list[FunctionCallPlan] = []
    for item in conversation[last_call + 1 :]:
        if _is_user_message(item):
            return []  # the user spoke since: answer the user instead
        if item.get("type") != "function_call_output" or not _is_unverified(item.get("output")):
            continue
        call = calls.get(item.get("call_id"))
        if (
            call is None
            or not isinstance(call.get("name"), str)
            or call.get("id") not in own_item_ids
        ):
            continue
        plan = FunctionCallPlan(str(call["name"]), str(call.get("arguments") or "{}"))
        made = sum(
            1
            for other in calls.values()
            if other.get("name") == plan.name and other.get("arguments") == plan.arguments
        )
        if made < 2:
            retries.append(plan)
    return retries


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


def _note_after_outputs(conversation: Sequence[Mapping[str, Any]]) -> str | None:
    """Rule 1a: the text of a system message that ends the conversation after an output."""
    if not conversation:
        return None
    last = conversation[-1]
    if last.get("type") != "message" or last.get("role") != "system":
        return None
    if not any(item.get("type") == "function_call_output" for item in conversation):
        return None
    content = last.get("content")
    texts = [
        str(part.get("text"))
        for part in (content if isinstance(content, list) else [])
        if isinstance(part, Mapping) and isinstance(part.get("text"), str)
    ]
    text = " ".join(texts)
    # A broker's resync probe is a system message too: never a note.
    return text if text and not text.startswith("(sideband resync") else None


def _is_user_message(item: Mapping[str, Any]) -> bool:
    return item.get("type") == "message" and item.get("role") == "user"


@dataclass(frozen=True)
class UserTurn:
    """The last user message as the model reads it."""

    text: str | None
    has_audio: bool


def last_user_turn(conversation: Sequence[Mapping[str, Any]]) -> UserTurn | None:
    """Return the last user message's text (typed parts and audio transcripts), if any."""
    for item in reversed(conversation):
        if not _is_user_message(item):
            continue
        texts: list[str] = []
        has_audio = False
        for part in item.get("content") or []:
            if not isinstance(part, Mapping):
                continue
            if part.get("type") == "input_text":
                texts.append(part.get("text") or "")
            elif part.get("type") == "input_audio":
                has_audio = True
                texts.append(part.get("transcript") or "")
        text = " ".join(t for t in texts if isinstance(t, str) and t).strip()
        return UserTurn(text or None, has_audio)
    return None


def _function_tools(tools: Sequence[Any]) -> dict[str, Mapping[str, Any]]:
    found: dict[str, Mapping[str, Any]] = {}
    for tool in tools:
        if isinstance(tool, Mapping) and tool.get("type", "function") == "function":
            name = tool.get("name")
            if isinstance(name, str) and name:
                found.setdefault(name, tool)
    return found


@dataclass(frozen=True)
class _Mention:
    start: int
    end: int
    name: str


# Tool names may contain "-", which \b does not treat as a word character.
_FORCED_MENTION: Final = re.compile(r"(?<![\w-])tool:([A-Za-z0-9_-]{1,64})(?![\w-])")


def _mentions(text: str, tools: Mapping[str, Mapping[str, Any]]) -> list[_Mention]:
    found = [_Mention(m.start(), m.end(), m.group(1)) for m in _FORCED_MENTION.finditer(text)]
    for name in tools:
        pattern = rf"(?<![\w:-]){re.escape(name)}(?![\w-])"
        found.extend(_Mention(m.start(), m.end(), name) for m in re.finditer(pattern, text))
    return sorted(found, key=lambda mention: mention.start)


def plan_tool_calls(
    text: str, tools: Sequence[Any], tool_choice: Any = "auto"
) -> list[FunctionCallPlan]:
    """Return the calls rule 2 makes for ``text`` (empty when no tool is mentioned)."""
    if tool_choice == "none":
        return []
    by_name = _function_tools(tools)
    mentions = _mentions(text, by_name)
    calls: list[FunctionCallPlan] = []
    position = 0
    for index, mention in enumerate(mentions):
        if mention.start < position:
            continue  # inside the JSON arguments of an earlier mention
        following = next((m.start for m in mentions[index + 1 :] if m.start >= mention.end), None)
        arguments, position = _arguments_after(
            text, mention.end, following, by_name.get(mention.name, {})
        )
        calls.append(FunctionCallPlan(mention.name, compact_json(arguments)))
    forced = _forced_name(tool_choice)
    if forced is not None:
        calls = [c for c in calls if c.name == forced]
        if not calls and forced in by_name:
            calls = [
                FunctionCallPlan(forced, compact_json(extract_arguments(text, by_name[forced])))
            ]
    elif tool_choice == "required" and not calls and by_name:
        name, tool = next(iter(by_name.items()))
        calls = [FunctionCallPlan(name, compact_json(extract_arguments(text, tool)))]
    return calls


def _forced_name(tool_choice: Any) -> str | None:
    if isinstance(tool_choice, Mapping) and tool_choice.get("type") == "function":
        name = tool_choice.get("name")
        return name if isinstance(name, str) else None
    return None


def _arguments_after(
    text: str, start: int, following: int | None, tool: Mapping[str, Any]
) -> tuple[dict[str, Any], int]:
    """Arguments for the mention ending at ``start``, and where scanning resumes."""
    rest = text[start:]
    stripped = rest.lstrip()
    if stripped.startswith("{"):
        offset = start + len(rest) - len(stripped)
        try:
            value, end = json.JSONDecoder().raw_decode(stripped)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            return value, offset + end
    stop = following if following is not None else len(text)
    return extract_arguments(text[start:stop], tool), stop


def match_tool_call(text: str, tools: Sequence[Any]) -> FunctionCallPlan | None:
    """Return the first call rule 2 makes for ``text``, or ``None`` when no tool is named."""
    calls = plan_tool_calls(text, tools)
    return calls[0] if calls else None


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
