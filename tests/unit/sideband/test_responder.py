"""Responder: one response.create when an output needs an answer and nothing is in the way."""

from __future__ import annotations

from sideband.answers import AnswerLedger
from sideband.config_watch import ConfigWatch
from sideband.events import SessionUpdated, is_session_probe
from sideband.responder import Responder
from sideband.tamper import OwnedSession
from tests.unit.sideband.fakes import FakeWire, output

OWNED = OwnedSession(instructions="Be brief.", tools=(), tool_choice="auto")
SESSION = {"type": "realtime", "instructions": "Be brief.", "tools": [], "tool_choice": "auto"}


class Pieces:
    def __init__(self, *, guarded: bool = False) -> None:
        self.wire = FakeWire()
        self.answers = AnswerLedger()
        self.blocked = False
        self.stopping = False
        self.connection: object = object()
        self.config = (
            ConfigWatch(
                self.wire.wiring, OWNED, stopping=lambda: self.stopping, probe_interval=None
            )
            if guarded
            else None
        )
        self.responder = Responder(
            self.wire.wiring,
            self.answers,
            blocked=lambda: self.blocked,
            config=self.config,
            connection=lambda: self.connection,
            stopping=lambda: self.stopping,
        )

    def echoed(self, call_id: str) -> None:
        out = output(call_id)
        self.answers.sending(out)
        self.answers.sent(out)
        self.answers.echo(call_id, out.item_id)


async def test_an_echoed_output_gets_one_request() -> None:
    p = Pieces()
    await p.responder.respond()
    assert p.wire.sent == []
    p.echoed("c1")
    await p.responder.respond()
    await p.responder.respond()  # ours is pending
    assert p.wire.types() == ["response.create"]
    assert p.answers.requested == p.wire.sent[0]["event_id"]


async def test_nothing_is_asked_while_something_else_is_in_the_way() -> None:
    p = Pieces()
    p.echoed("c1")
    p.blocked = True
    await p.responder.respond()
    assert p.wire.sent == []


async def test_a_request_that_cannot_be_sent_is_not_pending() -> None:
    p = Pieces()
    p.echoed("c1")
    p.wire.up = False
    await p.responder.respond()
    assert p.answers.requested is None


async def test_a_refused_request_is_no_longer_pending() -> None:
    p = Pieces()
    p.echoed("c1")
    await p.responder.respond()
    event_id = p.wire.sent[0]["event_id"]
    assert not p.responder.refused("evt_other", "x")
    assert p.responder.refused(event_id, "conversation_already_has_active_response")
    assert p.answers.requested is None
    assert not p.responder.refused(event_id, "conversation_already_has_active_response")


async def test_with_a_guard_the_session_is_probed_before_the_request() -> None:
    p = Pieces(guarded=True)
    assert p.config is not None
    p.echoed("c1")
    await p.responder.respond()
    await p.wire.wait_sent(1)
    assert is_session_probe(p.wire.sent[0])
    await p.config.check(SessionUpdated(type="session.updated", session=SESSION))
    await p.wire.settle()
    assert p.wire.types() == ["session.update", "response.create"]


async def test_an_unanswered_probe_asserts_the_config_before_the_request() -> None:
    p = Pieces(guarded=True)
    assert p.config is not None
    p.echoed("c1")
    await p.responder.respond()
    await p.wire.wait_sent(1)
    assert p.config.refused(p.wire.sent[0]["event_id"], "x")
    await p.wire.settle()
    assert p.wire.types() == ["session.update", "session.update", "response.create"]
    assert p.wire.sent[1]["session"]["instructions"] == "Be brief."


async def test_a_probe_answered_after_the_connection_changed_asks_nothing() -> None:
    p = Pieces(guarded=True)
    assert p.config is not None
    p.echoed("c1")
    await p.responder.respond()
    await p.wire.wait_sent(1)
    p.connection = object()
    await p.config.check(SessionUpdated(type="session.updated", session=SESSION))
    await p.wire.settle()
    assert p.wire.types() == ["session.update"]
    # The next connection asks again; its probe goes unanswered, so the config is asserted.
    await p.responder.respond()
    await p.wire.wait_sent(2)
    p.config.fail_waiters()
    await p.wire.settle()
    assert p.wire.types() == ["session.update"] * 3 + ["response.create"]


async def test_while_one_request_is_being_prepared_no_second_is() -> None:
    p = Pieces(guarded=True)
    assert p.config is not None
    p.echoed("c1")
    await p.responder.respond()
    await p.wire.wait_sent(1)
    await p.responder.respond()
    await p.config.check(SessionUpdated(type="session.updated", session=SESSION))
    await p.wire.settle()
    assert p.wire.types() == ["session.update", "response.create"]
