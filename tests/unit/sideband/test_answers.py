"""AnswerLedger: an output's way from decided to answered, and what a lost connection resets."""

from __future__ import annotations

from sideband.answers import AnswerLedger
from tests.unit.sideband.fakes import output


def echoed_ledger(*call_ids: str) -> AnswerLedger:
    """Outputs sent and echoed on this connection, not yet answered."""
    ledger = AnswerLedger()
    for call_id in call_ids:
        out = output(call_id)
        ledger.sending(out)
        ledger.sent(out)
        assert ledger.echo(call_id, out.item_id) == out
    return ledger


def test_an_output_is_wanted_answered_once_echoed_and_not_before() -> None:
    ledger = AnswerLedger()
    out = output("c1")
    ledger.sending(out)
    ledger.sent(out)
    assert ledger.pending("c1") == out and ledger.outstanding
    assert not ledger.wanted()  # sent is not delivered: the model would not see it yet
    assert ledger.echo("c1", out.item_id) == out
    assert ledger.pending("c1") is None and ledger.confirmed.is_set()
    assert ledger.wanted()


def test_an_unsent_output_waits_for_the_next_connection() -> None:
    ledger = AnswerLedger()
    out = output("c1")
    ledger.sending(out)
    ledger.unsent(out)
    assert ledger.undelivered == {"c1": out} and ledger.unconfirmed == {}
    assert not ledger.wanted()


def test_the_providers_own_id_for_our_output_is_remembered() -> None:
    ledger = AnswerLedger()
    out = output("c1")
    ledger.sending(out)
    ledger.echo("c1", "item_provider")
    assert ledger.provider_output_ids == {"c1": "item_provider"}
    assert {"out_c1", "item_provider"} <= ledger.own_output_ids


def test_outputs_going_out_together_hold_the_request_back() -> None:
    ledger = echoed_ledger("c1")
    with ledger.batch():
        assert not ledger.wanted()
    assert ledger.wanted()


def test_a_response_created_after_the_echo_answers_it() -> None:
    ledger = echoed_ledger("c1")
    ledger.requested = "evt_ours"
    assert ledger.response_created("r2") is True
    assert ledger.requested is None
    assert ledger.unanswered == set() and ledger.covering == {"r2": {"c1"}}
    assert not ledger.wanted()  # r2 is active
    ledger.response_done("r2")
    assert ledger.active_response is None and not ledger.outstanding


def test_a_response_nobody_asked_for_is_not_ours() -> None:
    assert AnswerLedger().response_created("r1") is False


def test_what_a_cancelled_response_would_have_answered_is_owed_again() -> None:
    ledger = echoed_ledger("c1")
    ledger.response_created("r2")
    ledger.cancelled("r2")
    ledger.response_done("r2")
    assert ledger.unanswered == {"c1"} and ledger.wanted()


def test_a_pending_request_or_an_active_response_is_in_the_way() -> None:
    ledger = echoed_ledger("c1")
    ledger.requested = "evt_1"
    assert not ledger.wanted()
    ledger.requested = None
    ledger.active_response = "r_other"
    assert not ledger.wanted()


def test_after_a_late_attach_the_active_response_is_unknown_until_one_starts() -> None:
    ledger = AnswerLedger()
    assert ledger.idle
    ledger.lost_track()
    assert not ledger.idle
    ledger.response_created("r1")
    ledger.response_done("r1")
    assert ledger.idle


def test_connection_lost_resets_what_only_that_connection_could_settle() -> None:
    ledger = echoed_ledger("c2")
    # c2's answer was cancelled by us (a forgery): it is owed for certain.
    ledger.response_created("r_cancelled")
    ledger.cancelled("r_cancelled")
    for call_id, echoed in (("c1", True), ("c3", False)):
        out = output(call_id)
        ledger.sending(out)
        ledger.sent(out)
        if echoed:
            ledger.echo(call_id, out.item_id)
    ledger.requested = "evt_ours"
    ledger.connection_lost()
    assert ledger.unconfirmed == {} and ledger.undelivered == {"c3": output("c3")}
    assert ledger.requested is None and ledger.active_response is None
    assert ledger.covering == {} and ledger.cancelled_by_us == set()
    assert ledger.unanswered == {"c2"} and ledger.echoed == {"c2"}
    # Whether a response read the others while no sideband watched is the resync's question.
    assert ledger.carried == {"c1", "c3"}


def test_carried_outputs_need_an_answer_only_if_ours_is_the_tail() -> None:
    for tail_is_ours, expected in ((True, {"c1"}), (False, set())):
        ledger = echoed_ledger("c1")
        ledger.connection_lost()
        assert ledger.carried == {"c1"}
        ledger.settle_carried(tail_is_ours=tail_is_ours)
        assert ledger.carried == set()
        assert ledger.unanswered == expected and ledger.echoed == expected


def test_a_carried_output_still_missing_is_not_settled_by_the_tail() -> None:
    ledger = AnswerLedger()
    out = output("c1")
    ledger.sending(out)
    ledger.sent(out)
    ledger.connection_lost()
    ledger.settle_carried(tail_is_ours=True)
    assert ledger.unanswered == set() and ledger.undelivered == {"c1": out}


def test_an_output_a_resync_finds_is_confirmed_and_carried() -> None:
    ledger = AnswerLedger()
    out = output("c1")
    ledger.undelivered["c1"] = out
    assert ledger.found("c1", "item_provider") == out
    assert ledger.pending("c1") is None and "item_provider" in ledger.own_output_ids
    # Found in the conversation: the next response reads it.
    assert ledger.carried == {"c1"}
    ledger.response_created("r1")
    assert ledger.carried == set() and ledger.covering == {"r1": {"c1"}}
