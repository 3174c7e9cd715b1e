"""Token usage: what the provider reports in each ``response.done``, parsed and summed.

``response.done`` carries ``response.usage`` (OpenAI Realtime GA, docs/protocol.md §3):
``{total_tokens, input_tokens, output_tokens, input_token_details: {text_tokens,
audio_tokens, cached_tokens, …}, output_token_details: {text_tokens, audio_tokens}}``.
It is provider input, so it is never trusted: a count that is not a JSON integer (a string,
a float, ``true``) or is negative counts as 0, and one above :data:`MAX_RESPONSE_TOKENS`
is capped there, so one absurd event cannot overflow a session's or a key's totals. A
``response.done`` that fails the wire model (:func:`sideband.events.parse_observed_event`)
still counts as one response, with no tokens: the provider did answer.

Input transcription reports its own usage, in each
``conversation.item.input_audio_transcription.completed``: ``{"type": "tokens", total_tokens,
input_tokens, output_tokens, input_token_details: {text_tokens, audio_tokens}}`` (the
``gpt-4o*-transcribe`` models) or ``{"type": "duration", "seconds"}`` (``whisper-1``). It is
summed apart from the responses' (the ``transcription*`` fields), distrusted the same way;
seconds must be a finite non-negative number and are capped at :data:`MAX_TRANSCRIPTION_S`,
then kept in whole milliseconds. A ``.completed`` counts as one transcription whatever its
usage says.

A session's usage is the sum over every ``response.done`` and ``.completed`` its sideband
saw: the event log stores each one, and :func:`broker.db.queries.add_events` folds their usage
into the session row in the same transaction that stores them (see there). A bridge-only
session has no sideband, so the broker never sees its usage.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Final

from broker.db.usage import USAGE_FIELDS, Usage, column
from sideband.events import (
    InputAudioTranscriptionCompleted,
    ResponseDone,
    ServerEvent,
    parse_observed_event,
)

__all__ = [
    "MAX_RESPONSE_TOKENS",
    "MAX_TRANSCRIPTION_S",
    "USAGE_FIELDS",
    "WATCHES",
    "Usage",
    "column",
    "usage_of_event",
    "usage_of_events",
    "usage_of_response_done",
    "usage_of_transcription",
]

RESPONSE_DONE: Final = "response.done"
TRANSCRIPTION_COMPLETED: Final = "conversation.item.input_audio_transcription.completed"
MAX_RESPONSE_TOKENS: Final = 1_000_000
"""The most tokens one response may report per count; more is capped (a realtime model's
context is far smaller, so a larger number is a provider bug or a hostile upstream)."""
MAX_TRANSCRIPTION_S: Final = 3600
"""The most audio one transcription may report: a realtime call lasts at most an hour."""


def _count(container: Any, key: str) -> int:
    """``container[key]`` as a token count: 0 unless a non-negative int, capped."""
    value = container.get(key) if isinstance(container, Mapping) else None
    # bool is an int subclass; JSON ``true`` is not a count.
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        return 0
    return min(value, MAX_RESPONSE_TOKENS)


def _seconds_ms(container: Any, key: str) -> int:
    """``container[key]`` as seconds of audio, in whole milliseconds.

    0 unless a finite non-negative number; capped at :data:`MAX_TRANSCRIPTION_S`.
    """
    value = container.get(key) if isinstance(container, Mapping) else None
    if not isinstance(value, int | float) or isinstance(value, bool):
        return 0
    if not math.isfinite(value) or value < 0:
        return 0
    return round(min(value, MAX_TRANSCRIPTION_S) * 1000)


def _token_totals(usage: Mapping[str, Any]) -> tuple[int, int, int]:
    """A usage block's input, output and total token counts.

    The total is the provider's own when it gave a usable one, else the sum it stands for.
    """
    input_tokens = _count(usage, "input_tokens")
    output_tokens = _count(usage, "output_tokens")
    return (
        input_tokens,
        output_tokens,
        _count(usage, "total_tokens") or input_tokens + output_tokens,
    )


WATCHES: Final = frozenset({RESPONSE_DONE, TRANSCRIPTION_COMPLETED})
"""The server events :func:`usage_of_event` reads."""


def usage_of_response_done(event: ServerEvent) -> Usage | None:
    """The usage of one ``response.done`` (``responses`` = 1); ``None`` for other events.

    A ``response.done`` without a usage block (or one that failed the wire model) still
    counts as one response with no tokens.
    """
    if event.type != RESPONSE_DONE:
        return None
    usage = event.response.usage if isinstance(event, ResponseDone) else None
    if usage is None:
        return Usage(responses=1)
    inputs = usage.get("input_token_details")
    outputs = usage.get("output_token_details")
    input_tokens, output_tokens, total_tokens = _token_totals(usage)
    return Usage(
        responses=1,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=total_tokens,
        input_text_tokens=_count(inputs, "text_tokens"),
        input_audio_tokens=_count(inputs, "audio_tokens"),
        input_cached_tokens=_count(inputs, "cached_tokens"),
        output_text_tokens=_count(outputs, "text_tokens"),
        output_audio_tokens=_count(outputs, "audio_tokens"),
    )


def usage_of_transcription(event: ServerEvent) -> Usage | None:
    """The usage of one transcription ``.completed`` (``transcriptions`` = 1), else ``None``.

    A ``.completed`` without a usable usage (or one that failed the wire model) still counts
    as one transcription, with nothing else.
    """
    if event.type != TRANSCRIPTION_COMPLETED:
        return None
    usage = event.usage if isinstance(event, InputAudioTranscriptionCompleted) else None
    if not isinstance(usage, Mapping):
        return Usage(transcriptions=1)
    # The kind decides which counts bill: time for "duration" (whisper-1), tokens otherwise
    # (a usage without its kind is read as the token kind, whose counts it would carry).
    if usage.get("type") == "duration":
        return Usage(transcriptions=1, transcription_ms=_seconds_ms(usage, "seconds"))
    inputs = usage.get("input_token_details")
    input_tokens, output_tokens, total_tokens = _token_totals(usage)
    return Usage(
        transcriptions=1,
        transcription_input_tokens=input_tokens,
        transcription_output_tokens=output_tokens,
        transcription_total_tokens=total_tokens,
        transcription_input_text_tokens=_count(inputs, "text_tokens"),
        transcription_input_audio_tokens=_count(inputs, "audio_tokens"),
    )


def usage_of_event(event: ServerEvent) -> Usage | None:
    """The usage one provider event reports (:data:`WATCHES`); ``None`` for other events."""
    used = usage_of_response_done(event)
    return used if used is not None else usage_of_transcription(event)


def usage_of_events(events: Iterable[Mapping[str, Any]]) -> Usage:
    """The summed usage of the provider's ``response.done`` and transcription ``.completed``.

    Args:
        events: event-log rows as :meth:`broker.record.event_log.EventRecorder.record` builds
            them (``direction``, ``payload``); only ``direction == "in"`` counts: a
            ``response.done`` the broker itself sent or logged is not provider usage. Each
            such payload is parsed here, once, into its typed event.
    """
    total = Usage()
    for row in events:
        if row.get("direction") != "in":
            continue
        payload = row.get("payload")
        if isinstance(payload, Mapping) and payload.get("type") in WATCHES:
            usage = usage_of_event(parse_observed_event(payload))
            total += usage or Usage()
    return total
