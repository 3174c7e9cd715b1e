"""Input transcription's usage: both kinds the provider reports, distrusted like a response's.

``conversation.item.input_audio_transcription.completed`` carries ``usage`` either as tokens
(``gpt-4o*-transcribe``) or as seconds of audio (``whisper-1``); it is summed apart from the
responses' usage and never trusted (broker/record/usage.py).
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from broker.metrics import TRANSCRIPTION_TOKEN_LABELS
from broker.record.usage import (
    MAX_RESPONSE_TOKENS,
    MAX_TRANSCRIPTION_S,
    Usage,
    usage_of_event,
    usage_of_events,
    usage_of_transcription,
)
from sideband.events import parse_observed_event

COMPLETED = "conversation.item.input_audio_transcription.completed"
TOKENS = {
    "type": "tokens",
    "total_tokens": 26,
    "input_tokens": 17,
    "output_tokens": 9,
    "input_token_details": {"text_tokens": 2, "audio_tokens": 15},
}


def heard(usage: Any, **fields: Any) -> dict[str, Any]:
    event = {"type": COMPLETED, "item_id": "item_1", "content_index": 0, "transcript": "hi"}
    if usage is not ...:
        event["usage"] = usage
    return {**event, **fields}


def read(event: dict[str, Any]) -> Usage | None:
    return usage_of_transcription(parse_observed_event(event))


def test_token_usage_is_read_field_by_field() -> None:
    assert read(heard(TOKENS)) == Usage(
        transcriptions=1,
        transcription_input_tokens=17,
        transcription_output_tokens=9,
        transcription_total_tokens=26,
        transcription_input_text_tokens=2,
        transcription_input_audio_tokens=15,
    )


def test_duration_usage_is_kept_in_whole_milliseconds() -> None:
    assert read(heard({"type": "duration", "seconds": 2.4})) == Usage(
        transcriptions=1, transcription_ms=2400
    )
    assert read(heard({"type": "duration", "seconds": 3})) == Usage(
        transcriptions=1, transcription_ms=3000
    )
    # Sums stay exact where floats would not (0.1 + 0.2 != 0.3).
    total = read(heard({"type": "duration", "seconds": 0.1})) or Usage()
    total += read(heard({"type": "duration", "seconds": 0.2})) or Usage()
    assert total.transcription_ms == 300
    assert total.as_json()["input_transcription"]["seconds"] == 0.3


def test_a_duration_usage_bills_no_tokens_and_a_kindless_one_is_read_as_tokens() -> None:
    assert read(heard({"type": "duration", "seconds": 1.5, "input_tokens": 99})) == Usage(
        transcriptions=1, transcription_ms=1500
    )
    kindless = {k: v for k, v in TOKENS.items() if k != "type"}
    assert read(heard(kindless)) == read(heard(TOKENS))


@pytest.mark.parametrize("usage", [..., None, "lots", [1, 2], 7, {"type": "tokens"}, {}])
def test_a_completed_without_a_usable_usage_counts_one_transcription(usage: Any) -> None:
    assert read(heard(usage)) == Usage(transcriptions=1)


def test_a_completed_that_fails_the_wire_model_still_counts() -> None:
    """The provider did transcribe; the words are lost to the transcript, not the bill."""
    assert read({"type": COMPLETED, "item_id": "item_1", "transcript": None}) == Usage(
        transcriptions=1
    )


@pytest.mark.parametrize("bad", ["12", 12.0, True, -5, None, [3], {"n": 1}, float("nan")])
def test_a_token_count_that_is_not_a_non_negative_integer_counts_zero(bad: Any) -> None:
    usage = read(
        heard(
            {
                "type": "tokens",
                "total_tokens": bad,
                "input_tokens": bad,
                "output_tokens": 4,
                "input_token_details": {"text_tokens": bad, "audio_tokens": 3},
            }
        )
    )
    assert usage == Usage(
        transcriptions=1,
        transcription_output_tokens=4,
        transcription_total_tokens=4,  # no usable total: input + output stands in
        transcription_input_audio_tokens=3,
    )


@pytest.mark.parametrize(
    "bad", ["2.5", True, -1.0, None, [1], float("nan"), float("inf"), -math.inf]
)
def test_seconds_that_are_not_a_finite_non_negative_number_count_zero(bad: Any) -> None:
    assert read(heard({"type": "duration", "seconds": bad})) == Usage(transcriptions=1)


def test_absurd_values_are_capped() -> None:
    huge = 10**30
    tokens = read(heard({"type": "tokens", "total_tokens": huge, "output_tokens": huge}))
    assert tokens is not None
    assert tokens.transcription_total_tokens == tokens.transcription_output_tokens
    assert tokens.transcription_total_tokens == MAX_RESPONSE_TOKENS
    seconds = read(heard({"type": "duration", "seconds": 1e300}))
    assert seconds == Usage(transcriptions=1, transcription_ms=MAX_TRANSCRIPTION_S * 1000)


def test_transcription_and_response_usage_are_summed_apart() -> None:
    response = {
        "type": "response.done",
        "response": {"id": "resp_1", "status": "completed", "usage": {"input_tokens": 5}},
    }
    rows = [
        {"direction": "in", "payload": heard(TOKENS)},
        {"direction": "in", "payload": heard({"type": "duration", "seconds": 1.25})},
        {"direction": "in", "payload": response},
        # Not the provider's, and not a completed transcription: never usage.
        {"direction": "out", "payload": heard(TOKENS)},
        {"direction": "broker", "payload": heard(TOKENS)},
        {"direction": "in", "payload": {"type": COMPLETED.replace("completed", "delta")}},
        {"direction": "in", "payload": {"type": COMPLETED.replace("completed", "failed")}},
    ]
    total = usage_of_events(rows)
    assert total == Usage(
        responses=1,
        input_tokens=5,
        total_tokens=5,
        transcriptions=2,
        transcription_input_tokens=17,
        transcription_output_tokens=9,
        transcription_total_tokens=26,
        transcription_input_text_tokens=2,
        transcription_input_audio_tokens=15,
        transcription_ms=1250,
    )
    assert total.as_json()["input_transcription"] == {
        "transcriptions": 2,
        "total_tokens": 26,
        "input_tokens": 17,
        "output_tokens": 9,
        "input_token_details": {"text_tokens": 2, "audio_tokens": 15},
        "seconds": 1.25,
    }
    assert total.as_json()["total_tokens"] == 5  # the responses' alone
    assert usage_of_event(parse_observed_event(response)) == Usage(
        responses=1, input_tokens=5, total_tokens=5
    )


def test_metric_labels() -> None:
    usage = read(heard(TOKENS))
    assert usage is not None
    tokens = usage.metric_transcription_tokens()
    assert set(tokens) == set(TRANSCRIPTION_TOKEN_LABELS)
    assert tokens == {("input", "text"): 2, ("input", "audio"): 15, ("output", "text"): 9}
