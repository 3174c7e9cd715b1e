"""The dispatch clock: a function call's time from first seen to the broker's output sent.

Events reach it as the call's observer hands them over: parsed once into typed events.
"""

from __future__ import annotations

from typing import Any

from broker.call.dispatch_clock import MAX_PENDING, DispatchClock
from sideband.events import parse_item_create, parse_observed_event


class Ticks:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def arguments_done(call_id: str, name: str = "lookup_order") -> dict[str, Any]:
    return {
        "type": "response.function_call_arguments.done",
        "response_id": "resp_1",
        "item_id": f"item_{call_id}",
        "call_id": call_id,
        "name": name,
        "arguments": "{}",
    }


def saw(clock: DispatchClock, event: dict[str, Any]) -> None:
    clock.saw(parse_observed_event(event))


def sent(clock: DispatchClock, event: dict[str, Any]) -> tuple[str, float] | None:
    created = parse_item_create(event)
    return None if created is None else clock.sent(created)


def output(call_id: str) -> dict[str, Any]:
    return {
        "type": "conversation.item.create",
        "item": {"type": "function_call_output", "call_id": call_id, "output": "{}"},
    }


def test_times_from_the_first_sighting_to_the_output() -> None:
    ticks = Ticks()
    clock = DispatchClock(ticks)
    saw(clock, arguments_done("call_1"))
    ticks.now += 0.25
    # The item's done event comes later; the clock keeps the first sighting.
    saw(
        clock,
        {
            "type": "response.output_item.done",
            "response_id": "resp_1",
            "item": {"type": "function_call", "call_id": "call_1", "name": "lookup_order"},
        },
    )
    ticks.now += 0.5
    assert sent(clock, output("call_1")) == ("lookup_order", 0.75)
    assert sent(clock, output("call_1")) is None  # timed once


def test_an_item_done_alone_starts_the_clock() -> None:
    ticks = Ticks()
    clock = DispatchClock(ticks)
    saw(
        clock,
        {
            "type": "conversation.item.done",
            "item": {"type": "function_call", "call_id": "call_2", "name": "refund"},
        },
    )
    ticks.now += 1
    assert sent(clock, output("call_2")) == ("refund", 1.0)


def test_unrelated_and_unknown_events_are_not_timed() -> None:
    clock = DispatchClock(Ticks())
    saw(clock, {"type": "response.done"})
    saw(clock, {"type": "conversation.item.done", "item": {"type": "message"}})
    saw(clock, {"type": "response.function_call_arguments.done", "call_id": 7})
    assert sent(clock, output("call_never_seen")) is None
    assert sent(clock, {"type": "response.create"}) is None
    assert sent(clock, {"type": "conversation.item.create", "item": {"type": "message"}}) is None


def test_unanswered_calls_are_forgotten_past_the_bound() -> None:
    clock = DispatchClock(Ticks())
    for n in range(MAX_PENDING + 10):
        saw(clock, arguments_done(f"call_{n}"))
    assert sent(clock, output("call_0")) is None  # the oldest went first
    assert sent(clock, output(f"call_{MAX_PENDING + 9}")) is not None
