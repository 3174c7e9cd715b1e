"""Token usage: what the provider reports in each ``response.done``, parsed and summed.

``response.done`` carries ``response.usage`` (OpenAI Realtime GA, docs/protocol.md §3):
``{total_tokens, input_tokens, output_tokens, input_token_details: {text_tokens,
audio_tokens, cached_tokens, …}, output_token_details: {text_tokens, audio_tokens}}``.
It is provider input, so it is never trusted: a count that is not a JSON integer (a string,
a float, ``true``) or is negative counts as 0, and one above :data:`MAX_RESPONSE_TOKENS`
is capped there, so one absurd event cannot overflow a session's or a key's totals. A
``response.done`` that fails the wire model (:func:`sideband.events.parse_observed_event`)
still counts as one response, with no tokens: the provider did answer.

A session's usage is the sum over every ``response.done`` its sideband saw: the event log
stores each one, and :func:`broker.db.queries.add_events` folds their usage into the
session row in the same transaction that stores them (see there). A bridge-only session has
no sideband, so the broker never sees its usage.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from broker.db.usage import USAGE_FIELDS, Usage, column
from sideband.events import ResponseDone, ServerEvent, parse_observed_event

__all__ = [
    "MAX_RESPONSE_TOKENS",
    "USAGE_FIELDS",
    "WATCHES",
    "Usage",
    "column",
    "usage_of_events",
    "usage_of_response_done",
]

RESPONSE_DONE: Final = "response.done"
MAX_RESPONSE_TOKENS: Final = 1_000_000
"""The most tokens one response may report per count; more is capped (a realtime model's
context is far smaller, so a larger number is a provider bug or a hostile upstream)."""


def _count(container: Any, key: str) -> int:
    """``container[key]`` as a token count: 0 unless a non-negative int, capped."""
    value = container.get(key) if isinstance(container, Mapping) else None
    # bool is an int subclass; JSON ``true`` is not a count.
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        return 0
    return min(value, MAX_RESPONSE_TOKENS)


WATCHES: Final = frozenset({RESPONSE_DONE})
"""The server events :func:`usage_of_response_done` reads."""


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
    input_tokens = _count(usage, "input_tokens")
    output_tokens = _count(usage, "output_tokens")
    total = _count(usage, "total_tokens")
    return Usage(
        responses=1,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        # The provider's own total when it gave a usable one, else the sum it stands for.
        total_tokens=total or input_tokens + output_tokens,
        input_text_tokens=_count(inputs, "text_tokens"),
        input_audio_tokens=_count(inputs, "audio_tokens"),
        input_cached_tokens=_count(inputs, "cached_tokens"),
        output_text_tokens=_count(outputs, "text_tokens"),
        output_audio_tokens=_count(outputs, "audio_tokens"),
    )


def usage_of_events(events: Iterable[Mapping[str, Any]]) -> Usage:
    """The summed usage of the provider's ``response.done`` events among ``events``.

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
        if isinstance(payload, Mapping) and payload.get("type") == RESPONSE_DONE:
            usage = usage_of_response_done(parse_observed_event(payload))
            total += usage or Usage()
    return total
