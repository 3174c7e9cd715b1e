"""The dispatch clock: a function call's time from first seen to the broker's output sent."""

from __future__ import annotations

from typing import Any

from broker.call.dispatch_clock import MAX_PENDING, DispatchClock


class Ticks:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def arguments_done(call_id: str, name: str = "lookup_order") -> dict[str, Any]:
    return {"type": "response.function_call_arguments.done", "call_id": call_id, "name": name}


def output(call_id: str) -> dict[str, Any]:
    return {
        "type": "conversation.item.create",
        "item": {"type": "function_call_output", "call_id": call_id, "output": "{}"},
    }


def test_times_from_the_first_sighting_to_the_output() -> None:
    ticks = Ticks()
    clock = DispatchClock(ticks)
    clock.saw(arguments_done("call_1"))
    ticks.now += 0.25
    # The item's done event comes later; the clock keeps the first sighting.
    clock.saw(
        {
            "type": "response.output_item.done",
            "item": {"type": "function_call", "call_id": "call_1", "name": "lookup_order"},
        }
    )
    ticks.now += 0.5
    assert clock.sent(output("call_1")) == ("lookup_order", 0.75)
    assert clock.sent(output("call_1")) is None  # timed once


def test_an_item_done_alone_starts_the_clock() -> None:
    ticks = Ticks()
    clock = DispatchClock(ticks)
    clock.saw(
        {
            "type": "conversation.item.done",
            "item": {"type": "function_call", "call_id": "call_2", "name": "refund"},
        }
    )
    ticks.now += 1
    assert clock.sent(output("call_2")) == ("refund", 1.0)


def test_unrelated_and_unknown_events_are_not_timed() -> None:
    clock = DispatchClock(Ticks())
    clock.saw({"type": "response.done"})
    clock.saw({"type": "conversation.item.done", "item": {"type": "message"}})
    clock.saw({"type": "response.function_call_arguments.done", "call_id": 7})
    assert clock.sent(output("call_never_seen")) is None
    assert clock.sent({"type": "response.create"}) is None
    assert clock.sent({"type": "conversation.item.create", "item": {"type": "message"}}) is None


def test_unanswered_calls_are_forgotten_past_the_bound() -> None:
    clock = DispatchClock(Ticks())
    for n in range(MAX_PENDING + 10):
        clock.saw(arguments_done(f"call_{n}"))
    assert clock.sent(output("call_0")) is None  # the oldest went first
    assert clock.sent(output(f"call_{MAX_PENDING + 9}")) is not None
