"""The three classes of event-log events, defined once for every writer and every later change.

**Kept** events are what the log is for: the session's lifecycle, tool calls, tamper and
leash decisions, usage (``response.done``), errors, and the items the transcript is built
from. They are never dropped and never capped: one per decision, per turn or per item, so
their number follows what the call does, not how fast a page can send.

**Coalescible** events are everything else: high-rate traffic a page can make the provider
emit at will (``session.updated`` answers, buffer notices, rate-limit updates, unknown
types). A session stores them up to a cap (a count and a size,
``BROKER_EVENT_LOG_MAX_COALESCIBLE*``); past it they are dropped and counted
(``sessions.events_dropped``, ``broker_events_dropped_total``).

**Folded** events are those a kept event repeats whole: the provider's deltas (``*.delta``,
some thirty a spoken sentence), the ``.added`` of an item or a content part whose ``.done``
is kept, and the ``.done`` of a part whose item's ``.done`` carries it
(:data:`REPEATED_TYPES`). They are counted (``broker_events_folded_total``) and never
stored: ops and audit need the sentence, once. Input transcription's deltas are the
exception (:data:`STORED_DELTA_TYPES`): no event may ever repeat them (a transcription that
fails, or a call that ends first, has no ``.completed``), so they are stored, as coalescible.

Anything not named as kept or folded below is coalescible: an event type a provider adds
later cannot grow the log without bound by default. To keep a new kind of event, add it here,
nowhere else.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, Final

from broker.record import transcript


class EventClass(enum.StrEnum):
    """How the event log treats an event (see the module docstring)."""

    KEPT = "kept"
    """Never dropped, never capped."""
    COALESCIBLE = "coalescible"
    """Stored up to the session's cap, then dropped and counted."""
    FOLDED = "folded"
    """A delta its done event repeats: counted, never stored."""


KEPT_PROVIDER_TYPES: Final = frozenset(
    {
        "error",
        # lifecycle of the call and of each response; response.done carries the usage
        "session.created",
        "response.created",
        "response.done",
        # tool calls
        "response.function_call_arguments.done",
        # answers to the broker's own look-ups (resync): as many as the broker asks
        "conversation.item.retrieved",
    }
) | frozenset(transcript.EVENT_TYPES)
"""Provider (``in``) event types that are always kept.

Every type the transcript is projected from is among them (one per conversation item, per
committed user turn or per model output item), so a flood of other events can never cut a
turn out of the transcript."""

TOOL_ITEM_TYPES: Final = frozenset({"function_call", "function_call_output"})
"""Item types whose item events (added, created, output_item.*) are tool calls: kept."""

DELTA_SUFFIX: Final = ".delta"
"""A provider event whose type ends so is part of something its ``.done`` event repeats."""

STORED_DELTA_TYPES: Final = frozenset(transcript.PARTIAL_TYPES)
"""Deltas no kept event may repeat: the words of a user turn heard so far, which the
transcript shows until its transcription completes (``.completed`` is kept). Coalescible, not
kept: one per few words, as many as the audio a page sends."""

REPEATED_TYPES: Final = frozenset(
    {
        # An item's start: its conversation.item.done / response.output_item.done (kept)
        # carries the whole item. Tool items are kept whatever the event (above).
        "conversation.item.added",
        "response.output_item.added",
        # A content part's start and end: the item's .done carries every part.
        "response.content_part.added",
        "response.content_part.done",
        "response.output_audio_transcript.done",
        "response.output_text.done",
        "response.output_audio.done",
    }
)
"""Provider event types a kept event repeats whole: folded, like deltas."""

_ITEM_EVENT_TYPES: Final = frozenset(
    {
        "conversation.item.added",
        "conversation.item.created",
        "response.output_item.added",
        "response.output_item.done",
    }
)


def classify(direction: str, event: Mapping[str, Any]) -> EventClass:
    """The class of one event as the event log would store it.

    ``broker`` events (the broker's decisions) and ``out`` events (what the broker itself
    sent: tool outputs, config assertions, probes, resync look-ups) are kept: their number is
    bounded by the broker's own decisions. A provider (``in``) event is kept if its type is
    in :data:`KEPT_PROVIDER_TYPES` or it is an item event about a tool call, folded if it is
    a delta (:data:`DELTA_SUFFIX`, but for :data:`STORED_DELTA_TYPES`) or repeated
    (:data:`REPEATED_TYPES`).
    """
    if direction != "in":
        return EventClass.KEPT
    type_ = event.get("type")
    if type_ in KEPT_PROVIDER_TYPES:
        return EventClass.KEPT
    if type_ in _ITEM_EVENT_TYPES:
        item = event.get("item")
        if isinstance(item, Mapping) and item.get("type") in TOOL_ITEM_TYPES:
            return EventClass.KEPT
    if type_ in STORED_DELTA_TYPES:
        return EventClass.COALESCIBLE
    if type_ in REPEATED_TYPES or (isinstance(type_, str) and type_.endswith(DELTA_SUFFIX)):
        return EventClass.FOLDED
    return EventClass.COALESCIBLE
