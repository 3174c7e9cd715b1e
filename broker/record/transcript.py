"""A session's transcript, projected from its event log: what the user said and the model did.

User and assistant turns in order, tool calls inline with the broker's output. Capped: the
newest :data:`MAX_ENTRIES` entries, each text cut at :data:`MAX_TEXT_CHARS`.

A page holding the call's data channel can add items to the conversation (an assistant
message saying "I approve the refund", a ``function_call_output`` with a result no tool
gave). The provider stores them like any other and nothing in an item says who made it, so
the transcript shows an item only on evidence of where it came from, read from the provider
events the sideband stored:

* **assistant turns and tool calls**: only items a model response produced (their ids in
  ``response.output_item.done`` or in ``response.done``'s ``output``), with the content the
  response gave them;
* **tool outputs**: only the output the broker itself recorded for that ``call_id`` (a
  ``tool_calls`` row with the same output text), shown on the model's call; an output is
  matched by ``call_id`` and text, never by item id (some providers assign their own);
* **user turns**: spoken ones (the item ``input_audio_buffer.committed`` names), and typed ones
  (``input_text`` parts only: typing is what a page is for). A spoken turn's words are input
  transcription's (:mod:`broker.session.transcription`), which the provider sends after the
  item: ``conversation.item.input_audio_transcription.completed`` gives them; until one comes,
  the ``.delta`` events stored so far give the words heard so far (``"partial": true``); a
  ``.failed`` leaves the turn without words, marked ``"transcription": "failed"``. Deltas are
  coalescible (:mod:`broker.record.event_classes`): the log's caps may drop them, so a partial
  turn may lack words, never a completed one;
* nothing that was deleted (``conversation.item.deleted``), whoever deleted it and in
  whatever order the events came; no system messages (instructions, the broker's probes).

Items without that evidence are left out rather than shown marked ``page_created``: the
transcript is read as the record of the conversation (by people, in the dashboard, and by
programs), and a marked line still reads as something that was said unless every reader
knows to filter it. What the page did is recorded where it belongs, as ``broker.tamper``
events in the event log.

The stored events are the provider's frames as received; :func:`project` parses each once, on
entry, into the same typed events the controller reads (``sideband.events``). A frame that
fails its type's model is no evidence of anything.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.db import queries
from broker.db.models import ToolCall
from sideband.events import (
    ConversationItemDeleted,
    ConversationItemDone,
    InputAudioBufferCommitted,
    InputAudioTranscriptionCompleted,
    InputAudioTranscriptionDelta,
    InputAudioTranscriptionFailed,
    Item,
    ResponseDone,
    ResponseOutputItemDone,
    ServerEvent,
    parse_observed_event,
)

MAX_ENTRIES: Final = 200
MAX_TEXT_CHARS: Final = 2000
EVENT_TYPES: Final = (
    "conversation.item.done",
    "conversation.item.deleted",
    "response.output_item.done",
    "response.done",
    "input_audio_buffer.committed",
    "conversation.item.input_audio_transcription.completed",
    "conversation.item.input_audio_transcription.failed",
)
"""The events a transcript is projected from, all kept by the event log (one per item, per
committed turn, per response, per transcription)."""
EVENT_WINDOW: Final = 6 * MAX_ENTRIES
"""How many of the newest such events are read: an entry takes about three (an item, its
response's two; an audio turn's commit, item and transcription)."""
PARTIAL_TYPES: Final = ("conversation.item.input_audio_transcription.delta",)
"""The events that give a spoken turn's words before its transcription completes: one per
few words, so coalescible and read in a window of their own (:data:`PARTIAL_WINDOW`) that
cannot push turns out of :data:`EVENT_WINDOW`."""
PARTIAL_WINDOW: Final = 500
"""How many of the newest deltas are read: only turns still being transcribed (the newest)
or whose transcription never completed need them."""


def _content(item: Item) -> list[Any]:
    """The item's content parts: the wire model keeps them as the provider sent them."""
    content = (item.model_extra or {}).get("content")
    return content if isinstance(content, list) else []


def _text(item: Item, kinds: frozenset[str] | None = None) -> str:
    parts = []
    for part in _content(item):
        if isinstance(part, dict) and (kinds is None or part.get("type") in kinds):
            text = part.get("text") or part.get("transcript")
            if isinstance(text, str) and text:
                parts.append(text)
    return " ".join(parts)


_TYPED: Final = frozenset({"input_text"})


def _cut(text: Any) -> str:
    value = text if isinstance(text, str) else ""
    return value if len(value) <= MAX_TEXT_CHARS else value[:MAX_TEXT_CHARS] + "…"


class _Evidence:
    """What the stored events say about each item.

    Gathered before any entry is built: a model item's ``conversation.item.done`` comes
    before the response events that prove where it came from.
    """

    def __init__(self) -> None:
        self.order: dict[str, None] = {}
        """Item ids in order of first appearance (a dict as an ordered set)."""
        self.conversation: dict[str, Item] = {}
        self.model: dict[str, Item] = {}
        self.deleted: set[str] = set()
        self.committed: set[str] = set()
        self.heard: dict[str, dict[int, str]] = {}
        """A spoken item's completed words, by content part."""
        self.hearing: dict[str, dict[int, list[str]]] = {}
        """A spoken item's words so far (its deltas), by content part."""
        self.unheard: set[str] = set()
        """Spoken items whose transcription failed."""

    def _seen(self, item_id: str) -> None:
        self.order.setdefault(item_id, None)

    def add(self, event: ServerEvent) -> None:
        if isinstance(event, ConversationItemDeleted):
            self.deleted.add(event.item_id)
        elif isinstance(event, InputAudioBufferCommitted):
            if event.item_id is not None:
                self._seen(event.item_id)
                self.committed.add(event.item_id)
        elif isinstance(event, InputAudioTranscriptionCompleted):
            self.heard.setdefault(event.item_id, {})[event.content_index] = event.transcript
        elif isinstance(event, InputAudioTranscriptionDelta):
            parts = self.hearing.setdefault(event.item_id, {})
            parts.setdefault(event.content_index, []).append(event.delta)
        elif isinstance(event, InputAudioTranscriptionFailed):
            self.unheard.add(event.item_id)
        elif isinstance(event, ConversationItemDone):
            if (item_id := event.item.id) is not None:
                self._seen(item_id)
                self.conversation[item_id] = event.item
        elif isinstance(event, ResponseOutputItemDone):
            self._model_item(event.item)
        elif isinstance(event, ResponseDone):
            for item in event.response.output:
                self._model_item(item, replace=False)

    def _model_item(self, item: Item, *, replace: bool = True) -> None:
        if (item_id := item.id) is not None:
            self._seen(item_id)
            if replace or item_id not in self.model:
                self.model[item_id] = item

    def user_turn(self, item_id: str, item: Item) -> dict[str, Any] | None:
        """A user item's entry, or ``None`` if nothing shows the user said or typed it."""
        if item_id in self.committed:
            return self._spoken(item_id, item)
        # Typed: only the input_text parts. An audio part's "transcript" in an item the page
        # created is the page's claim, not something the user was heard to say.
        if any(isinstance(p, dict) and p.get("type") in _TYPED for p in _content(item)):
            return _turn("user", _text(item, _TYPED))
        return None

    def _spoken(self, item_id: str, item: Item) -> dict[str, Any]:
        # A completed transcription is the words, whatever came before or after it.
        heard = self.heard.get(item_id)
        if heard:
            return _turn("user", " ".join(heard[index] for index in sorted(heard)))
        if item_id in self.unheard:
            return {**_turn("user", ""), "transcription": "failed"}
        hearing = self.hearing.get(item_id)
        if hearing:
            words = " ".join("".join(hearing[index]) for index in sorted(hearing))
            return {**_turn("user", words), "partial": True}
        return _turn("user", _text(item))  # the provider's transcript in the item, if any


def _turn(role: str, text: str) -> dict[str, Any]:
    return {"type": "turn", "role": role, "text": _cut(text)}


def project(
    events: Iterable[tuple[str, Any]],
    broker_outputs: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """``(type, payload)`` events in seq order → transcript entries (the newest ones).

    Args:
        events: the session's stored provider events of :data:`EVENT_TYPES` and
            :data:`PARTIAL_TYPES`; the stored ``type`` is the event's.
        broker_outputs: ``call_id → output`` of the tool calls the broker recorded
            (:func:`outputs_of`). Without it no tool output is shown: an output in the
            conversation proves nothing about who wrote it.
    """
    evidence = _Evidence()
    for type_, payload in events:
        if isinstance(payload, dict):
            evidence.add(parse_observed_event({**payload, "type": type_}))
    outputs = broker_outputs or {}
    entries: list[dict[str, Any]] = []
    tools: dict[str, dict[str, Any]] = {}
    for item_id in evidence.order:
        if item_id in evidence.deleted:
            continue
        model_item = evidence.model.get(item_id)
        if model_item is not None:
            kind = model_item.type
            if kind == "message" and model_item.role == "assistant":
                entries.append(_turn("assistant", _text(model_item)))
            elif kind == "function_call":
                call_id = str(model_item.call_id)
                entry: dict[str, Any] = {
                    "type": "tool_call",
                    "call_id": model_item.call_id,
                    "name": model_item.name,
                    "arguments": _cut(model_item.arguments),
                    "output": None,
                }
                entries.append(entry)
                tools.setdefault(call_id, entry)
            continue
        item = evidence.conversation.get(item_id)
        if item is None:
            continue
        if item.type == "message" and item.role == "user":
            turn = evidence.user_turn(item_id, item)
            if turn is not None:
                entries.append(turn)
        # Anything else has no evidence of coming from the user or the model: a page's
        # assistant or system message, a function_call no response produced, the broker's
        # probes (system messages). Outputs are attached below, to the model's calls only.
    for item_id in evidence.order:
        item = evidence.conversation.get(item_id)
        if item is None or item_id in evidence.deleted or item_id in evidence.model:
            continue
        if item.type != "function_call_output":
            continue
        call_id, output = str(item.call_id), item.output
        call = tools.get(call_id)
        if call is not None and output is not None and outputs.get(call_id) == output:
            call["output"] = _cut(output)
    return entries[-MAX_ENTRIES:]


def outputs_of(calls: Iterable[ToolCall]) -> dict[str, str]:
    """``call_id → output`` of the broker's recorded calls that have one (either path)."""
    return {call.call_id: call.output for call in calls if call.output is not None}


async def load(
    sessionmaker: async_sessionmaker[AsyncSession],
    session_id: str,
    calls: Iterable[ToolCall],
) -> list[dict[str, Any]]:
    """The session's transcript from its stored events and its tool calls (no access check).

    ``calls`` are the session's ``tool_calls`` rows (the caller has them already).
    """
    async with sessionmaker() as s:
        events = await queries.latest_events_of(s, session_id, EVENT_TYPES, EVENT_WINDOW)
        partial = await queries.latest_events_of(s, session_id, PARTIAL_TYPES, PARTIAL_WINDOW)
    ordered = sorted([*events, *partial], key=lambda e: e.seq)
    return project(((e.type, e.payload) for e in ordered), outputs_of(calls))
