"""ToolCalls: final calls run once and are answered together; the rest abandoned or left."""

from __future__ import annotations

import asyncio
import json

from sideband.answers import AnswerLedger
from sideband.events import Item, Response
from sideband.tamper import OutputLedger, UnprovenCall, Verdict
from sideband.tool_calls import UNVERIFIED_OUTPUT, ToolCalls
from tests.unit.sideband.fakes import FakeWire, call
from tests.unit.sideband.test_controller import RecordingTools, fc_item


class Pieces:
    def __init__(self) -> None:
        self.wire = FakeWire()
        self.tools = RecordingTools()
        self.outputs = OutputLedger()
        self.answers = AnswerLedger()
        self.responds = 0
        self.calls = ToolCalls(
            self.wire.wiring,
            self.tools,
            outputs=self.outputs,
            answers=self.answers,
            respond=self.respond,
        )

    async def respond(self) -> None:
        self.responds += 1


def response(status: str, *call_ids: str, response_id: str = "r1") -> Response:
    return Response(
        id=response_id,
        status=status,
        output=[Item.model_validate(fc_item(c)) for c in call_ids],
    )


async def test_a_completed_responses_calls_run_once_then_one_request_follows() -> None:
    p = Pieces()
    p.calls.response_done(response("completed", "c1", "c2"), stopping=False, draining=False)
    p.calls.response_done(response("completed", "c1", "c2"), stopping=False, draining=False)
    await p.wire.settle()
    assert p.tools.seen == ["c1", "c2"] and p.tools.executed == ["c1", "c2"]
    assert [e["item"]["call_id"] for e in p.wire.sent] == ["c1", "c2"]
    assert p.responds == 1  # after both outputs, not between them
    assert p.answers.unconfirmed.keys() == {"c1", "c2"}
    sent = Item.model_validate(p.wire.sent[0]["item"])
    assert p.outputs.classify(sent) is Verdict.OWN
    assert p.calls.idle.is_set()


async def test_idle_only_once_the_taken_up_calls_are_answered() -> None:
    p = Pieces()
    p.tools.release.clear()
    p.calls.response_done(response("completed", "c1"), stopping=False, draining=False)
    await asyncio.sleep(0.01)
    assert not p.calls.idle.is_set()
    p.tools.release.set()
    await p.wire.settle()
    assert p.calls.idle.is_set()


async def test_calls_of_a_response_that_did_not_complete_are_abandoned() -> None:
    p = Pieces()
    p.calls.response_done(response("cancelled", "c1"), stopping=False, draining=False)
    p.calls.response_done(response("completed", "c2"), stopping=True, draining=False)
    await p.wire.settle()
    assert p.tools.abandoned == [("c1", "cancelled"), ("c2", "call_ending")]
    assert p.tools.executed == [] and p.wire.sent == []
    assert p.calls.handled == {"c1", "c2"}


async def test_a_draining_controller_leaves_final_calls_for_the_next_process() -> None:
    p = Pieces()
    p.calls.response_done(response("completed", "c1"), stopping=False, draining=True)
    await p.wire.settle()
    assert p.tools.executed == [] and p.tools.abandoned == []
    assert p.calls.handled == set()


async def test_the_seen_record_comes_first_and_once() -> None:
    p = Pieces()
    p.calls.arguments_done("item_c1", call("c1"))
    p.calls.arguments_done("item_c1", call("c1"))
    p.calls.response_done(response("completed", "c1"), stopping=False, draining=False)
    await p.wire.settle()
    assert p.tools.seen == ["c1"] and p.tools.executed == ["c1"]
    assert p.calls.call_items == {"item_c1": call("c1")}


def test_a_call_the_model_only_began_is_known_as_started() -> None:
    p = Pieces()
    streaming = Item.model_validate({**fc_item("c1"), "status": "in_progress"})
    p.calls.model_item(streaming, "r1")
    p.calls.model_item(Item(id="item_msg", type="message", role="assistant"), "r1")
    assert p.calls.started_items == {"item_c1": call("c1")} and p.calls.call_items == {}
    p.calls.model_item(Item.model_validate(fc_item("c1")), "r1")
    assert p.calls.call_items == {"item_c1": call("c1")}


async def test_an_output_that_cannot_be_sent_waits_for_the_next_connection() -> None:
    p = Pieces()
    p.wire.up = False
    p.calls.response_done(response("completed", "c1"), stopping=False, draining=False)
    await p.wire.settle()
    assert p.answers.undelivered.keys() == {"c1"} and p.answers.unanswered == set()


async def test_an_unproven_call_is_answered_unverified_and_reported_never_run() -> None:
    p = Pieces()
    p.calls.answer_unproven([(call("c_x"), "unseen")])
    await p.wire.settle()
    assert p.tools.executed == [] and p.calls.handled == {"c_x"}
    assert [e["item"]["output"] for e in p.wire.sent] == [UNVERIFIED_OUTPUT]
    assert json.loads(UNVERIFIED_OUTPUT)["error"]["code"] == "call_unverified"
    assert p.wire.reports == [
        UnprovenCall(
            item_id="item_c_x", call_id="c_x", tool="lookup_order", reason="unseen", answered=True
        )
    ]
    # It has no record of the broker's to mark injected.
    p.calls.injected("c_x", p.answers.echo("c_x", p.wire.sent[0]["item"]["id"]))
    await p.wire.settle()
    assert p.tools.injected == []


async def test_an_unproven_calls_unsent_answer_is_reported_unanswered() -> None:
    p = Pieces()
    p.wire.up = False
    p.calls.answer_unproven([(call("c_x"), "partial")])
    await p.wire.settle()
    assert isinstance(p.wire.reports[0], UnprovenCall) and not p.wire.reports[0].answered


async def test_an_output_confirmed_the_first_time_is_reported_injected_once() -> None:
    p = Pieces()
    p.calls.response_done(response("completed", "c1"), stopping=False, draining=False)
    await p.wire.settle()
    out_id = p.wire.sent[0]["item"]["id"]
    p.calls.injected("c1", p.answers.echo("c1", out_id))
    p.calls.injected("c1", p.answers.echo("c1", out_id))
    await p.wire.settle()
    assert p.tools.injected == ["c1"]
