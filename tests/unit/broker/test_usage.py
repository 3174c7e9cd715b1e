"""The usage parser: provider input summed safely (broker/record/usage.py).

Events reach it parsed once into typed events, as the call's observer and the event log's
writer hand them over (:func:`sideband.events.parse_observed_event`).
"""

from __future__ import annotations

from typing import Any

import pytest

from broker.metrics import TOKEN_LABELS
from broker.record.usage import (
    MAX_RESPONSE_TOKENS,
    USAGE_FIELDS,
    Usage,
    column,
    usage_of_events,
    usage_of_response_done,
)
from sideband.events import parse_observed_event


def done(usage: Any) -> dict[str, Any]:
    return {
        "type": "response.done",
        "response": {"id": "resp_1", "status": "completed", "usage": usage},
    }


def read(event: dict[str, Any]) -> Usage | None:
    return usage_of_response_done(parse_observed_event(event))


GA_USAGE = {
    "total_tokens": 180,
    "input_tokens": 120,
    "output_tokens": 60,
    "input_token_details": {
        "text_tokens": 100,
        "audio_tokens": 20,
        "image_tokens": 0,
        "cached_tokens": 64,
        "cached_tokens_details": {"text_tokens": 64, "audio_tokens": 0, "image_tokens": 0},
    },
    "output_token_details": {"text_tokens": 15, "audio_tokens": 45},
}


def test_a_ga_response_done_is_read_field_by_field() -> None:
    assert read(done(GA_USAGE)) == Usage(
        responses=1,
        input_tokens=120,
        output_tokens=60,
        total_tokens=180,
        input_text_tokens=100,
        input_audio_tokens=20,
        input_cached_tokens=64,
        output_text_tokens=15,
        output_audio_tokens=45,
    )


def test_other_events_are_not_usage_and_a_bare_response_done_counts_one_response() -> None:
    assert read({"type": "response.created", "response": {}}) is None
    assert read(done(None)) == Usage(responses=1)
    assert read({"type": "response.done"}) == Usage(responses=1)
    assert read(done("lots")) == Usage(responses=1)
    assert read(done({"input_token_details": 7})) == Usage(responses=1)


@pytest.mark.parametrize("bad", ["12", 12.0, True, -5, None, [3], {"n": 1}, float("nan")])
def test_a_count_that_is_not_a_non_negative_integer_counts_zero(bad: Any) -> None:
    usage = read(
        done(
            {
                "total_tokens": bad,
                "input_tokens": bad,
                "output_tokens": 7,
                "input_token_details": {"text_tokens": bad, "audio_tokens": 3},
                "output_token_details": {"text_tokens": 7, "audio_tokens": bad},
            }
        )
    )
    assert usage == Usage(
        responses=1,
        output_tokens=7,
        total_tokens=7,  # no usable total: input + output stands in
        input_audio_tokens=3,
        output_text_tokens=7,
    )


def test_absurd_counts_are_capped() -> None:
    huge = 10**30
    usage = read(
        done(
            {
                "total_tokens": huge,
                "input_tokens": huge,
                "output_token_details": {"audio_tokens": huge},
            }
        )
    )
    assert usage is not None
    assert usage.total_tokens == usage.input_tokens == MAX_RESPONSE_TOKENS
    assert usage.output_audio_tokens == MAX_RESPONSE_TOKENS


def test_sums_only_the_providers_response_done_events() -> None:
    one = done(GA_USAGE)
    rows = [
        {"direction": "in", "payload": one},
        {"direction": "in", "payload": one},
        {"direction": "in", "payload": {"type": "response.created"}},
        # The broker's own events and what it sent are never provider usage.
        {"direction": "broker", "payload": one},
        {"direction": "out", "payload": one},
        {"direction": "in", "payload": "not an event"},
    ]
    total = usage_of_events(rows)
    single = read(one)
    assert single is not None
    assert total == single + single
    assert total.responses == 2 and total.input_cached_tokens == 128
    assert usage_of_events([]).empty


def test_rendered_in_the_providers_shape_and_as_metric_labels() -> None:
    usage = read(done(GA_USAGE))
    assert usage is not None
    assert usage.as_json() == {
        "responses": 1,
        "total_tokens": 180,
        "input_tokens": 120,
        "output_tokens": 60,
        "input_token_details": {"text_tokens": 100, "audio_tokens": 20, "cached_tokens": 64},
        "output_token_details": {"text_tokens": 15, "audio_tokens": 45},
        "input_transcription": {
            "transcriptions": 0,
            "total_tokens": 0,
            "input_tokens": 0,
            "output_tokens": 0,
            "input_token_details": {"text_tokens": 0, "audio_tokens": 0},
            "seconds": 0.0,
        },
    }
    tokens = usage.metric_tokens()
    assert set(tokens) == set(TOKEN_LABELS)
    assert tokens[("input", "cached")] == 64 and tokens[("output", "audio")] == 45


def test_columns_round_trip() -> None:
    usage = read(done(GA_USAGE))
    assert usage is not None

    class Row:
        pass

    row = Row()
    for name in USAGE_FIELDS:
        setattr(row, column(name), getattr(usage, name))
    assert Usage.from_columns(row) == usage
    assert column("input_cached_tokens") == "usage_input_cached_tokens"
