"""The call's observer parses each frame its readers watch once, into the typed wire events,
and hands that one event to the leash, the dispatch clock and the usage count; frames nobody
reads are only recorded."""

from __future__ import annotations

from typing import Any

import pytest

from broker.call import observer as observer_module
from broker.call.dispatch_clock import DispatchClock
from broker.call.leash import Leash
from broker.call.observer import OBSERVED, SessionObserver
from broker.record.usage import WATCHES as USAGE_WATCHES
from broker.record.usage import Usage, usage_of_events, usage_of_response_done
from sideband.events import (
    ResponseDone,
    ServerEvent,
    UnknownEvent,
    is_user_activity,
    parse_observed_event,
)

ARGUMENTS_DONE = {
    "type": "response.function_call_arguments.done",
    "response_id": "resp_1",
    "item_id": "item_1",
    "call_id": "call_1",
    "name": "lookup_order",
    "arguments": "{}",
}
RESPONSE_DONE = {
    "type": "response.done",
    "response": {
        "id": "resp_1",
        "status": "completed",
        "usage": {
            "input_tokens": 5,
            "output_tokens": 7,
            "total_tokens": 12,
            "output_token_details": {"text_tokens": 7},
        },
    },
}
DELTA = {"type": "response.output_audio_transcript.delta", "response_id": "resp_1", "delta": "hi"}
OUTPUT = {
    "type": "conversation.item.create",
    "item": {"type": "function_call_output", "call_id": "call_1", "output": "{}"},
}


class Recorder:
    def __init__(self) -> None:
        self.recorded: list[tuple[str, dict[str, Any]]] = []

    def record(self, direction: str, event: dict[str, Any]) -> None:
        self.recorded.append((direction, event))


class LeashProbe:
    WATCHES = Leash.WATCHES

    def __init__(self) -> None:
        self.seen: list[ServerEvent] = []

    def saw(self, event: ServerEvent) -> None:
        self.seen.append(event)


class Metrics:
    def __init__(self) -> None:
        self.usage: list[dict[tuple[str, str], int]] = []
        self.dispatches: list[tuple[str, float]] = []
        self.probes = 0

    def usage_reported(self, tokens: dict[tuple[str, str], int]) -> None:
        self.usage.append(tokens)

    def dispatch_finished(self, tool: str, seconds: float) -> None:
        self.dispatches.append((tool, seconds))

    def session_probed(self) -> None:
        self.probes += 1


async def _no_state(_: Any) -> None:
    return None


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every frame the observer parses."""
    seen: list[dict[str, Any]] = []

    def counting(data: dict[str, Any]) -> ServerEvent:
        seen.append(data)
        return parse_observed_event(data)

    monkeypatch.setattr(observer_module, "parse_observed_event", counting)
    return seen


def _observer() -> tuple[SessionObserver, Recorder, LeashProbe, Metrics]:
    recorder, leash, metrics = Recorder(), LeashProbe(), Metrics()
    observer = SessionObserver("s1", recorder, leash, metrics, _no_state)  # type: ignore[arg-type]
    return observer, recorder, leash, metrics


def test_a_watched_frame_is_parsed_once_and_shared(parses: list[dict[str, Any]]) -> None:
    observer, recorder, leash, metrics = _observer()
    observer.record("in", ARGUMENTS_DONE)
    observer.record("in", RESPONSE_DONE)
    assert parses == [ARGUMENTS_DONE, RESPONSE_DONE]
    assert [type(e).__name__ for e in leash.seen] == ["FunctionCallArgumentsDone", "ResponseDone"]
    assert [tokens[("output", "text")] for tokens in metrics.usage] == [7]
    assert recorder.recorded == [("in", ARGUMENTS_DONE), ("in", RESPONSE_DONE)]
    # The clock was fed the same typed event: the output going out is timed.
    observer.record("out", OUTPUT)
    assert [tool for tool, _ in metrics.dispatches] == ["lookup_order"]


def test_a_frame_nobody_reads_is_recorded_and_never_parsed(parses: list[dict[str, Any]]) -> None:
    observer, recorder, leash, metrics = _observer()
    observer.record("in", DELTA)
    assert DELTA["type"] not in OBSERVED
    assert parses == [] and leash.seen == [] and metrics.usage == []
    assert recorder.recorded == [("in", DELTA)]


def test_every_readers_events_are_observed() -> None:
    for watched in (Leash.WATCHES, DispatchClock.WATCHES, USAGE_WATCHES):
        assert watched <= OBSERVED


def test_a_malformed_response_done_counts_alike_in_the_metric_and_the_stored_totals() -> None:
    """It fails the wire model (no ``response``): an unknown event of its type for the
    readers, one response without tokens for both usage paths."""
    observer, _, leash, metrics = _observer()
    bare = {"type": "response.done"}
    observer.record("in", bare)
    assert isinstance(leash.seen[0], UnknownEvent) and leash.seen[0].type == "response.done"
    assert len(metrics.usage) == 1 and not any(metrics.usage[0].values())
    frames = [RESPONSE_DONE, bare, {"type": "response.done", "response": "junk"}]
    from_observer = Usage()
    for frame in frames:
        used = usage_of_response_done(parse_observed_event(frame))
        assert used is not None
        from_observer += used
    stored = usage_of_events([{"direction": "in", "payload": frame} for frame in frames])
    assert stored == from_observer
    assert (stored.responses, stored.total_tokens) == (3, 12)


@pytest.mark.parametrize(
    ("event", "active"),
    [
        ({"type": "input_audio_buffer.speech_started"}, True),
        ({"type": "input_audio_buffer.committed", "item_id": "i1"}, True),
        # Speech counts by its type, whatever its fields.
        ({"type": "input_audio_buffer.committed", "item_id": 7}, True),
        (
            {
                "type": "conversation.item.added",
                "item": {"id": "i2", "type": "message", "role": "user"},
            },
            True,
        ),
        (
            {
                "type": "conversation.item.created",
                "item": {"id": "i3", "type": "message", "role": "user"},
            },
            True,
        ),
        (
            {
                "type": "conversation.item.added",
                "item": {"id": "i4", "type": "message", "role": "assistant"},
            },
            False,
        ),
        ({"type": "conversation.item.added", "item": "junk"}, False),
        ({"type": "input_audio_buffer.dtmf_event_received", "event": "5"}, True),
        ({"type": "response.output_audio_transcript.delta"}, False),
        ({"type": "response.created", "response": {"id": "r", "status": "in_progress"}}, False),
    ],
)
def test_the_leash_counts_the_user_as_activity_not_the_model(
    event: dict[str, Any], active: bool
) -> None:
    assert is_user_activity(parse_observed_event(event)) is active


def test_the_typed_response_done_carries_its_usage_block() -> None:
    event = parse_observed_event(RESPONSE_DONE)
    assert isinstance(event, ResponseDone)
    assert usage_of_response_done(event) == Usage(
        responses=1, input_tokens=5, output_tokens=7, total_tokens=12, output_text_tokens=7
    )
