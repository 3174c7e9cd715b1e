"""The event log's audio redaction: every shape of base64 audio becomes its size, nothing else
changes, and an event without audio is the very same object (no copy on the hot path)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from broker.record.event_log import payload_bytes
from broker.record.redaction import redact_event

AUDIO = "UklGRg" * 1000  # 6,000 base64 characters
OTHER_AUDIO = "AAAA" * 50


def marker(payload: str) -> dict[str, Any]:
    return {"redacted": "audio", "base64_chars": len(payload)}


def user_audio_item(audio: str | None = AUDIO) -> dict[str, Any]:
    part: dict[str, Any] = {"type": "input_audio", "transcript": None}
    if audio is not None:
        part["audio"] = audio
    return {
        "id": "item_u1",
        "object": "realtime.item",
        "type": "message",
        "role": "user",
        "status": "completed",
        "content": [{"type": "input_text", "text": "hello"}, part],
    }


def assistant_audio_item(audio: str = OTHER_AUDIO) -> dict[str, Any]:
    return {
        "id": "item_a1",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_audio", "transcript": "hi", "audio": audio}],
    }


FUNCTION_CALL = {
    "id": "item_f1",
    "type": "function_call",
    "call_id": "call_1",
    "name": "lookup_order",
    "arguments": "{}",
}

ITEM_EVENT_TYPES = [
    "conversation.item.retrieved",
    "conversation.item.added",
    "conversation.item.created",
    "conversation.item.done",
    "conversation.item.create",
    "response.output_item.added",
    "response.output_item.done",
]


@pytest.mark.parametrize("type_", ITEM_EVENT_TYPES)
def test_an_items_audio_parts_become_their_size(type_: str) -> None:
    event = {"type": type_, "event_id": "event_1", "previous_item_id": None}
    event["item"] = user_audio_item()
    before = copy.deepcopy(event)

    stored = redact_event(event)

    assert event == before  # the live event is never changed
    expected = copy.deepcopy(before)
    expected["item"]["content"][1]["audio"] = marker(AUDIO)
    assert stored == expected
    # Only the path to the payload is new; the rest is shared, not copied.
    assert stored["item"]["content"][0] is event["item"]["content"][0]


def test_every_audio_part_of_an_item_is_redacted() -> None:
    item = user_audio_item()
    item["content"].append({"type": "input_audio", "audio": OTHER_AUDIO})
    stored = redact_event({"type": "conversation.item.retrieved", "item": item})
    audio = [part.get("audio") for part in stored["item"]["content"]]
    assert audio == [None, marker(AUDIO), marker(OTHER_AUDIO)]


@pytest.mark.parametrize(
    ("type_", "field"),
    [("input_audio_buffer.append", "audio"), ("response.output_audio.delta", "delta")],
)
def test_top_level_audio_becomes_its_size(type_: str, field: str) -> None:
    event = {"type": type_, "event_id": "event_1", field: AUDIO}
    stored = redact_event(event)
    assert stored == {"type": type_, "event_id": "event_1", field: marker(AUDIO)}
    assert event[field] == AUDIO


@pytest.mark.parametrize(
    ("type_", "key"),
    [("response.done", "output"), ("response.created", "output"), ("response.create", "input")],
)
def test_a_responses_items_lose_their_audio(type_: str, key: str) -> None:
    event = {
        "type": type_,
        "response": {
            "id": "resp_1",
            "usage": {"total_tokens": 3},
            key: [dict(FUNCTION_CALL), assistant_audio_item(), user_audio_item()],
        },
    }
    before = copy.deepcopy(event)
    stored = redact_event(event)
    assert event == before
    items = stored["response"][key]
    assert items[0] is event["response"][key][0]  # no audio: the same item
    assert items[1]["content"][0] == {
        "type": "output_audio",
        "transcript": "hi",
        "audio": marker(OTHER_AUDIO),
    }
    assert items[2]["content"][1]["audio"] == marker(AUDIO)
    assert stored["response"]["usage"] == {"total_tokens": 3}
    assert stored["response"]["id"] == "resp_1"


@pytest.mark.parametrize("type_", ["response.content_part.added", "response.content_part.done"])
def test_a_content_parts_audio_becomes_its_size(type_: str) -> None:
    event = {"type": type_, "part": {"type": "audio", "audio": AUDIO, "transcript": "x"}}
    stored = redact_event(event)
    assert stored["part"] == {"type": "audio", "audio": marker(AUDIO), "transcript": "x"}


@pytest.mark.parametrize(
    "event",
    [
        {"type": "conversation.item.retrieved", "item": user_audio_item(audio=None)},
        {"type": "conversation.item.done", "item": dict(FUNCTION_CALL)},
        {"type": "conversation.item.create", "item": {"type": "function_call_output"}},
        {"type": "conversation.item.added", "item": None},
        {"type": "conversation.item.added", "item": {"type": "message", "content": "text"}},
        {"type": "conversation.item.added", "item": {"content": ["not a part", None]}},
        {"type": "conversation.item.added", "item": {"content": [{"audio": None}]}},
        {"type": "response.done", "response": {"id": "r", "output": [dict(FUNCTION_CALL)]}},
        {"type": "response.done", "response": {"id": "r", "output": None}},
        {"type": "response.done", "response": None},
        {"type": "response.create"},
        {"type": "input_audio_buffer.append", "audio": None},
        {"type": "input_audio_buffer.committed", "item_id": "item_u1"},
        {"type": "response.output_audio_transcript.delta", "delta": "words"},
        {"type": "session.updated", "session": {"audio": {"input": {"format": "pcm"}}}},
        {"type": "rate_limits.updated", "rate_limits": []},
        {"type": None, "audio": AUDIO},
        {"no_type": True},
    ],
)
def test_an_event_without_audio_is_returned_as_is(event: dict[str, Any]) -> None:
    before = copy.deepcopy(event)
    assert redact_event(event) is event
    assert event == before


def test_redacting_twice_changes_nothing() -> None:
    once = redact_event({"type": "conversation.item.retrieved", "item": user_audio_item()})
    assert redact_event(once) is once


def test_the_size_counted_against_the_caps_is_the_redacted_one() -> None:
    """What the recorder weighs is the stored payload: megabytes of audio weigh a marker."""
    big = "A" * 3_000_000
    event = {"type": "conversation.item.created", "item": user_audio_item(big)}
    stored = redact_event(event)
    assert payload_bytes(stored) < 500
    assert big not in json.dumps(stored)
    assert stored["item"]["content"][1]["audio"] == {"redacted": "audio", "base64_chars": 3_000_000}
