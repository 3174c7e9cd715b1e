"""Resync: what a (re)attach settles, with the provider's answers played by hand."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import sideband.resync
from sideband.answers import AnswerLedger
from sideband.contracts import Backlog
from sideband.events import Item, probe_key
from sideband.lookups import Lookups
from sideband.resync import Resync, judge_found
from sideband.tamper import OutputLedger, UnprovenCall
from sideband.tool_calls import UNVERIFIED_OUTPUT, ToolCalls
from tests.unit.sideband.fakes import FakeWire, call, output
from tests.unit.sideband.test_controller import RecordingTools, fc_item


def fc(call_id: str, **changes: Any) -> Item:
    return Item.model_validate({**fc_item(call_id), **changes})


# ---- judge_found: one retrieved call ----------------------------------------------------


def test_a_watched_call_completed_as_streamed_is_final() -> None:
    assert judge_found(fc("c1"), call("c1"), whole=True, handled=set()) == ("final", call("c1"))


def test_the_same_arguments_in_other_json_spelling_are_the_same() -> None:
    known = call("c1", arguments='{"a": 1, "b": 2}')
    found = fc("c1", arguments='{"b":2,"a":1}')
    assert judge_found(found, known, whole=True, handled=set()) == ("final", known)


def test_changed_arguments_are_never_run() -> None:
    found = fc("c1", arguments='{"refund": 1000}')
    result = judge_found(found, call("c1"), whole=True, handled=set())
    assert result is not None and result[0] == "replaced"
    assert result[1].arguments == '{"refund": 1000}'


def test_a_call_seen_only_starting_is_unproven() -> None:
    result = judge_found(fc("c1"), call("c1"), whole=False, handled=set())
    assert result is not None and result[0] == "partial"


def test_an_incomplete_or_deleted_watched_call_is_abandoned() -> None:
    known = call("c1")
    assert judge_found(fc("c1", status="incomplete"), known, whole=True, handled=set()) == (
        "abandoned",
        known,
    )
    assert judge_found(None, known, whole=True, handled=set()) == ("abandoned", known)
    assert judge_found(None, known, whole=False, handled=set()) is None


def test_a_streaming_or_handled_call_waits() -> None:
    known = call("c1")
    assert judge_found(fc("c1", status="in_progress"), known, whole=True, handled=set()) is None
    assert judge_found(fc("c1"), known, whole=True, handled={"c1"}) is None
    message = Item(id="item_c1", type="message", role="assistant")
    assert judge_found(message, known, whole=True, handled=set()) is None


# ---- Resync: the procedure ---------------------------------------------------------------


class Provider:
    """Answers the resync's retrieves from :attr:`items` and its probes with :attr:`tail`."""

    def __init__(self, wire: FakeWire, lookups: Lookups) -> None:
        self.wire, self.lookups = wire, lookups
        self.items: dict[str, Item] = {}
        self.tail: str | None = None
        self._task = asyncio.create_task(self._serve())

    async def _serve(self) -> None:
        seen = 0
        while True:
            while seen < len(self.wire.sent):
                await self._answer(self.wire.sent[seen])
                seen += 1
            self.wire.sent_event.clear()
            await self.wire.sent_event.wait()

    async def _answer(self, event: dict[str, Any]) -> None:
        if event["type"] == "conversation.item.retrieve":
            found = self.items.get(event["item_id"])
            if found is None:
                self.lookups.refused(event["event_id"])
            else:
                self.lookups.retrieved(found)
        elif event["type"] == "conversation.item.create":
            item = Item.model_validate(event["item"])
            key = probe_key(item)
            if key is not None:
                await self.lookups.probe_item(item, key, self.tail, added=True)
            elif item.id is not None:
                self.items[item.id] = item
                self.tail = item.id

    def close(self) -> None:
        self._task.cancel()


class Pieces:
    def __init__(self, *, stopping: bool = False) -> None:
        self.wire = FakeWire()
        self.tools = RecordingTools()
        self.answers = AnswerLedger()
        self.outputs = OutputLedger()
        self.lookups = Lookups(self.wire.wiring)
        self.found: list[Item] = []
        self.responds = 0
        self.calls = ToolCalls(
            self.wire.wiring,
            self.tools,
            outputs=self.outputs,
            answers=self.answers,
            respond=self.respond,
        )
        self.resync = Resync(
            self.wire.wiring,
            tools=self.tools,
            calls=self.calls,
            answers=self.answers,
            outputs=self.outputs,
            lookups=self.lookups,
            output_found=self.output_found,
            respond=self.respond,
            stopping=lambda: stopping,
            draining=lambda: False,
        )
        self.provider = Provider(self.wire, self.lookups)

    async def output_found(self, item: Item) -> None:
        self.found.append(item)

    async def respond(self) -> None:
        self.responds += 1

    async def run(self) -> None:
        try:
            async with asyncio.timeout(5):
                await self.resync.run()
            await self.wire.settle()
        finally:
            self.provider.close()


async def test_an_output_found_at_the_provider_is_confirmed_not_resent() -> None:
    p = Pieces()
    p.answers.undelivered["c1"] = output("c1")
    p.answers.carried.add("c1")
    p.provider.items["out_c1"] = Item(id="out_c1", type="function_call_output", call_id="c1")
    p.provider.tail = "out_c1"
    await p.run()
    assert p.tools.injected == ["c1"]
    assert "conversation.item.create" not in [
        e["type"] for e in p.wire.sent if e.get("item", {}).get("type") == "function_call_output"
    ]
    # Our output is the tail: no response read it, so one is wanted.
    assert p.answers.unanswered == {"c1"} and p.answers.echoed == {"c1"}
    assert p.responds == 1


async def test_an_output_followed_by_something_else_was_answered() -> None:
    p = Pieces()
    p.answers.undelivered["c1"] = output("c1")
    p.answers.carried.add("c1")
    p.provider.items["out_c1"] = Item(id="out_c1", type="function_call_output", call_id="c1")
    p.provider.tail = "item_answer"
    p.lookups.known_items.add("item_answer")
    await p.run()
    assert p.answers.unanswered == set() and p.answers.carried == set()


async def test_an_output_missing_twice_and_not_the_tail_is_sent_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sideband.resync, "RESEND_GRACE", 0)
    p = Pieces()
    p.tools.recorded_backlog = Backlog(undelivered=[output("c1")])
    await p.run()
    retrieves = [e["item_id"] for e in p.wire.sent if e["type"] == "conversation.item.retrieve"]
    assert retrieves == ["out_c1", "out_c1"]
    resent = [e for e in p.wire.sent if e.get("item", {}).get("type") == "function_call_output"]
    assert [e["item"]["call_id"] for e in resent] == ["c1"]
    assert p.answers.unconfirmed.keys() == {"c1"} and "c1" in p.calls.handled


async def test_a_watched_call_that_finished_unseen_is_run() -> None:
    p = Pieces()
    p.calls.call_items["item_c1"] = call("c1")
    p.provider.items["item_c1"] = fc("c1")
    await p.run()
    assert p.tools.executed == ["c1"]


async def test_a_call_from_the_broker_s_records_is_asked_about_too() -> None:
    p = Pieces()
    p.tools.recorded_backlog = Backlog(seen=[call("c1")])
    p.provider.items["item_c1"] = fc("c1", status="incomplete")
    await p.run()
    assert p.tools.abandoned == [("c1", "incomplete")] and p.tools.executed == []


async def test_a_stopping_controller_abandons_what_it_finds_final() -> None:
    p = Pieces(stopping=True)
    p.calls.call_items["item_c1"] = call("c1")
    p.provider.items["item_c1"] = fc("c1")
    await p.run()
    assert p.tools.abandoned == [("c1", "call_ending")] and p.tools.executed == []


async def test_a_finished_call_nobody_saw_as_the_tail_is_answered_unverified() -> None:
    p = Pieces()
    p.provider.items["item_x"] = fc("c_x", id="item_x")
    p.provider.tail = "item_x"
    await p.run()
    assert p.tools.executed == []
    outputs = [e["item"] for e in p.wire.sent if e.get("item", {}).get("call_id") == "c_x"]
    assert [o["output"] for o in outputs] == [UNVERIFIED_OUTPUT]
    assert [r.reason for r in p.wire.reports if isinstance(r, UnprovenCall)] == ["unseen"]


async def test_a_tail_last_seen_streaming_is_retrieved_again_and_judged() -> None:
    """An earlier resync retrieved the tail while the model still streamed it; the call
    then finished while no sideband watched. Known is not finished: it is asked again, and,
    unproven, answered ``call_unverified`` (it once stayed unanswered for ever)."""
    p = Pieces()
    p.lookups.retrieved(fc("c_x", id="item_x", status="in_progress"))
    p.provider.items["item_x"] = fc("c_x", id="item_x")
    p.provider.tail = "item_x"
    await p.run()
    assert p.tools.executed == []
    outputs = [e["item"] for e in p.wire.sent if e.get("item", {}).get("call_id") == "c_x"]
    assert [o["output"] for o in outputs] == [UNVERIFIED_OUTPUT]


async def test_a_tail_seen_finished_is_not_retrieved_again() -> None:
    p = Pieces()
    p.lookups.seen(fc("c_x", id="item_x", status="in_progress"))
    p.lookups.seen(fc("c_x", id="item_x"))
    p.provider.items["item_x"] = fc("c_x", id="item_x")
    p.provider.tail = "item_x"
    await p.run()
    assert not [e for e in p.wire.sent if e["type"] == "conversation.item.retrieve"]


async def test_an_output_item_as_the_tail_is_handed_back_as_if_echoed() -> None:
    p = Pieces()
    tail = Item(id="item_out", type="function_call_output", call_id="c9", output="{}")
    p.provider.items["item_out"] = tail
    p.provider.tail = "item_out"
    await p.run()
    assert p.found == [tail]


async def test_connection_lost_cancels_the_resync_and_keeps_its_work_for_the_next() -> None:
    p = Pieces()
    p.provider.close()  # nobody answers: the resync waits on its first look-up
    p.tools.recorded_backlog = Backlog(undelivered=[output("c1")])
    p.resync.start()
    await p.wire.wait_sent(1)
    (task,) = p.wire.tasks
    p.resync.connection_lost()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert p.answers.undelivered == {"c1": output("c1")}
    p.resync.connection_lost()  # nothing running: nothing to do


# ---- items too large to read -------------------------------------------------------------


async def test_a_tail_too_large_to_read_is_not_asked_for_and_the_rest_is_settled() -> None:
    p = Pieces()
    p.lookups.too_large["item_audio"] = None
    p.provider.tail = "item_audio"
    p.calls.call_items["item_c1"] = call("c1")
    p.provider.items["item_c1"] = fc("c1")
    await p.run()
    retrieves = [e["item_id"] for e in p.wire.sent if e["type"] == "conversation.item.retrieve"]
    assert retrieves == ["item_c1"]
    assert p.tools.executed == ["c1"] and p.found == [] and p.wire.reports == []


async def test_a_watched_call_whose_item_is_too_large_to_read_is_abandoned_never_run() -> None:
    """The call the model streamed came in one frame; an item too large for one is not it."""
    p = Pieces()
    p.tools.recorded_backlog = Backlog(seen=[call("c1")])
    p.lookups.too_large["item_c1"] = None
    await p.run()
    assert p.tools.executed == []
    assert p.tools.abandoned == [("c1", sideband.resync.TOO_LARGE_STATUS)]
    assert "c1" in p.calls.handled


async def test_an_output_whose_id_holds_an_item_too_large_to_read_is_sent_again() -> None:
    """Our output is at most 64 KiB: what holds its id is not it, so it counts as missing."""
    p = Pieces()
    p.tools.recorded_backlog = Backlog(undelivered=[output("c1")])
    p.lookups.too_large["out_c1"] = None
    await p.run()
    assert not [e for e in p.wire.sent if e["type"] == "conversation.item.retrieve"]
    resent = [e for e in p.wire.sent if e.get("item", {}).get("type") == "function_call_output"]
    assert [e["item"]["call_id"] for e in resent] == ["c1"]
    assert p.tools.executed == []
