"""PageWatch: which items and responses are the page's, and what a lost connection resets."""

from __future__ import annotations

from sideband.events import Item
from sideband.page_watch import PageWatch, vad_responds
from sideband.tamper import ForgedOutput, PageItem, PageItems, PagePolicy, PageResponses
from tests.unit.sideband.fakes import FakeWire


def planted_call(item_id: str = "item_planted") -> Item:
    return Item(id=item_id, type="function_call", call_id="c_p", name="refund", arguments="{}")


def assistant(item_id: str) -> Item:
    return Item(id=item_id, type="message", role="assistant")


async def test_a_restricted_item_while_nothing_is_generated_is_deleted_and_reported() -> None:
    wire = FakeWire()
    page = PageWatch(PagePolicy(), wire.wiring)
    await page.judge(planted_call(), idle=True)
    assert wire.types() == ["conversation.item.delete"]
    assert page.planted_pending == {"item_planted"}
    assert wire.reports == [
        PageItem(
            item_id="item_planted",
            item_type="function_call",
            call_id="c_p",
            tool="refund",
            deleted=True,
        )
    ]
    await page.judge(planted_call(), idle=True)  # its .done after .added: judged once
    assert len(wire.sent) == 1


async def test_during_a_response_an_item_is_a_suspect_until_the_response_says() -> None:
    wire = FakeWire()
    page = PageWatch(PagePolicy(), wire.wiring)
    await page.judge(assistant("item_model"), idle=False)
    await page.judge(assistant("item_page"), idle=False)
    assert wire.sent == []
    page.model_made("item_model")
    await page.plant_suspects()
    assert [e["item_id"] for e in wire.sent] == ["item_page"]


async def test_what_a_page_may_add_is_left_alone() -> None:
    wire = FakeWire()
    page = PageWatch(PagePolicy(items=PageItems.ALLOW), wire.wiring)
    await page.judge(assistant("item_seed"), idle=True)
    await page.judge(Item(id="item_user", type="message", role="user"), idle=True)
    assert wire.sent == [] and wire.reports == []
    # A function call is never the page's to add, whatever the policy.
    await page.judge(planted_call(), idle=True)
    assert len(wire.sent) == 1


async def test_a_planted_item_stops_blocking_once_gone_or_refused() -> None:
    wire = FakeWire()
    page = PageWatch(PagePolicy(), wire.wiring)
    await page.judge(planted_call("item_a"), idle=True)
    await page.judge(planted_call("item_b"), idle=True)
    assert page.deleted("item_a") and not page.deleted("item_a")
    assert page.refused(wire.sent[1]["event_id"])
    assert page.planted_pending == set()
    assert not page.refused(wire.sent[0]["event_id"])  # item_a's delete was answered already


async def test_an_unsent_delete_is_no_pending_delete_and_is_retried_on_the_next_socket() -> None:
    wire = FakeWire()
    page = PageWatch(PagePolicy(), wire.wiring)
    await page.judge(planted_call("item_a"), idle=True)
    wire.up = False
    await page.judge(planted_call("item_b"), idle=True)
    assert page.planted_pending == {"item_a"}
    assert wire.reports[-1] == PageItem(
        item_id="item_b",
        item_type="function_call",
        call_id="c_p",
        tool="refund",
        deleted=False,
    )
    wire.up = True
    await page.redelete()
    assert [e["item_id"] for e in wire.sent] == ["item_a", "item_a"]


async def test_a_forged_output_is_deleted_and_reported() -> None:
    wire = FakeWire()
    page = PageWatch(PagePolicy(), wire.wiring)
    await page.forged(Item(id="item_f", type="function_call_output", call_id="c1", output="{}"))
    assert wire.types() == ["conversation.item.delete"]
    assert wire.reports == [ForgedOutput(item_id="item_f", call_id="c1", deleted=True)]


def test_only_a_turn_voice_detection_ended_starts_a_response_of_its_own() -> None:
    page = PageWatch(PagePolicy(responses=PageResponses.CANCEL), FakeWire().wiring)
    assert page.response_started(ours=False)  # nobody trusted asked: the page's
    assert not page.response_started(ours=True)
    page.committed("item_typed")  # the page committed the buffer itself
    assert page.response_started(ours=False)
    page.speech_stopped("item_spoken")
    page.committed("item_spoken")
    assert not page.response_started(ours=False)
    assert page.response_started(ours=False)  # one turn, one response


def test_without_create_response_a_spoken_turn_starts_nothing() -> None:
    page = PageWatch(PagePolicy(responses=PageResponses.CANCEL), FakeWire().wiring)
    page.session_seen({"audio": {"input": {"turn_detection": {"create_response": False}}}})
    page.speech_stopped("item_spoken")
    page.committed("item_spoken")
    assert page.response_started(ours=False)


def test_under_the_default_policy_no_response_is_the_pages_to_cancel() -> None:
    page = PageWatch(PagePolicy(), FakeWire().wiring)
    assert not page.response_started(ours=False)


def test_connection_lost_forgets_the_lost_sockets_turns() -> None:
    page = PageWatch(PagePolicy(responses=PageResponses.CANCEL), FakeWire().wiring)
    page.speech_stopped("item_spoken")
    page.committed("item_spoken")
    page.speech_stopped("item_next")
    page.connection_lost()
    assert page.response_started(ours=False)  # the committed turn went with the socket
    page.committed("item_next")  # its speech_stopped did too
    assert page.response_started(ours=False)


def test_turn_detection_answers_by_itself_unless_told_not_to() -> None:
    assert vad_responds({})
    assert vad_responds({"audio": {"input": {"turn_detection": {"type": "server_vad"}}}})
    assert not vad_responds({"audio": {"input": {"turn_detection": None}}})
    assert not vad_responds({"audio": {"input": {"turn_detection": {"create_response": False}}}})
