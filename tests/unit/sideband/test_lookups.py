"""Lookups: retrieves and tail probes, answered (or not) by hand as the provider would."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import sideband.lookups
from sideband.events import Item, new_item_id, probe_item_create, probe_key
from sideband.lookups import LookupFailed, Lookups, TooLargeToRead
from tests.unit.sideband.fakes import FakeWire


def probe_echo(event: dict[str, Any], item_id: str | None = None) -> tuple[Item, str]:
    """The provider's ``conversation.item.added`` item for a probe we sent, and its key."""
    item = Item.model_validate({**event["item"], "id": item_id or event["item"]["id"]})
    key = probe_key(item)
    assert key is not None
    return item, key


async def answer_probe(
    lookups: Lookups, wire: FakeWire, previous: str | None, *, index: int = 0
) -> str:
    """Answer the ``index``-th probe sent once it is out; returns its key."""
    async with asyncio.timeout(5):
        while True:
            creates = [e for e in wire.sent if e["type"] == "conversation.item.create"]
            if len(creates) > index:
                break
            wire.sent_event.clear()
            await wire.sent_event.wait()
    item, key = probe_echo(creates[index])
    await lookups.probe_item(item, key, previous, added=True)
    return key


async def test_a_retrieve_is_answered_by_the_retrieved_item() -> None:
    wire = FakeWire()
    lookups = Lookups(wire.wiring)
    asked = asyncio.create_task(lookups.retrieve("item_1"))
    await wire.wait_sent(1)
    assert wire.sent[0]["type"] == "conversation.item.retrieve"
    lookups.retrieved(Item(id="item_1", type="message"))
    found = await asked
    assert found is not None and found.id == "item_1"
    assert "item_1" in lookups.known_items


async def test_a_refused_retrieve_means_no_such_item() -> None:
    wire = FakeWire()
    lookups = Lookups(wire.wiring)
    asked = asyncio.create_task(lookups.retrieve("item_gone"))
    await wire.wait_sent(1)
    assert lookups.refused(wire.sent[0]["event_id"])
    assert await asked is None
    assert not lookups.refused(wire.sent[0]["event_id"])  # answered once


async def test_a_retrieve_that_cannot_be_sent_fails() -> None:
    wire = FakeWire()
    wire.up = False
    with pytest.raises(LookupFailed):
        await Lookups(wire.wiring).retrieve("item_1")


async def test_an_unanswered_retrieve_fails_in_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sideband.lookups, "LOOKUP_TIMEOUT", 0.05)
    with pytest.raises(LookupFailed):
        await Lookups(FakeWire().wiring).retrieve("item_1")


async def test_the_item_before_our_probe_is_the_tail_and_the_probe_is_deleted() -> None:
    wire = FakeWire()
    lookups = Lookups(wire.wiring)
    tail = asyncio.create_task(lookups.tail())
    key = await answer_probe(lookups, wire, "item_last")
    assert await tail == "item_last"
    assert wire.sent[-1] == {
        "type": "conversation.item.delete",
        "event_id": wire.sent[-1]["event_id"],
        "item_id": key,
    }


async def test_an_empty_conversation_has_no_tail() -> None:
    wire = FakeWire()
    lookups = Lookups(wire.wiring)
    tail = asyncio.create_task(lookups.tail())
    await answer_probe(lookups, wire, None)
    assert await tail is None


async def test_a_leftover_probe_found_as_the_tail_is_deleted_and_probed_past() -> None:
    wire = FakeWire()
    lookups = Lookups(wire.wiring)
    leftover = new_item_id(sideband.lookups.PROBE_ITEM_PREFIX)
    tail = asyncio.create_task(lookups.tail())
    await answer_probe(lookups, wire, leftover)
    await answer_probe(lookups, wire, "item_real", index=1)
    assert await tail == "item_real"
    deleted = [e["item_id"] for e in wire.sent if e["type"] == "conversation.item.delete"]
    assert leftover in deleted


async def test_someone_elses_probe_is_deleted() -> None:
    wire = FakeWire()
    lookups = Lookups(wire.wiring)
    other = probe_item_create(new_item_id(sideband.lookups.PROBE_ITEM_PREFIX))
    item, key = probe_echo(other)
    await lookups.probe_item(item, key, "item_x", added=True)
    assert wire.sent == [
        {"type": "conversation.item.delete", "event_id": wire.sent[0]["event_id"], "item_id": key}
    ]


async def test_connection_lost_fails_pending_questions_and_forgets_probe_deletes() -> None:
    wire = FakeWire()
    lookups = Lookups(wire.wiring)
    tail = asyncio.create_task(lookups.tail())
    await wire.wait_sent(1)
    asked = asyncio.create_task(lookups.retrieve("item_1"))
    await wire.wait_sent(2)
    retrieve_event = wire.sent[1]["event_id"]
    lookups.connection_lost()
    with pytest.raises(LookupFailed):
        await asked
    with pytest.raises(LookupFailed):
        await tail
    # The unanswered probe may have been added all the same: the tail sent its delete as it
    # gave up, and the probe stays a leftover until seen deleted. That delete went out on the
    # lost socket too: its error (or silence) belongs to the old connection.
    probe_delete = wire.sent[-1]
    assert probe_delete["type"] == "conversation.item.delete"
    lookups.connection_lost()
    assert not lookups.refused(probe_delete["event_id"])
    assert not lookups.refused(retrieve_event)
    before = len(wire.sent)
    again = asyncio.create_task(lookups.tail())
    await wire.wait_sent(before + 2)
    assert wire.sent[before]["item_id"] == probe_delete["item_id"]
    lookups.connection_lost()
    with pytest.raises(LookupFailed):
        await again


async def test_a_leftover_seen_deleted_is_not_deleted_again() -> None:
    wire = FakeWire()
    lookups = Lookups(wire.wiring)
    tail = asyncio.create_task(lookups.tail())
    await wire.wait_sent(1)
    lookups.connection_lost()
    with pytest.raises(LookupFailed):
        await tail
    leftover = wire.sent[-1]["item_id"]
    lookups.deleted(leftover)
    before = len(wire.sent)
    again = asyncio.create_task(lookups.tail())
    await wire.wait_sent(before + 1)
    assert wire.sent[before]["type"] == "conversation.item.create"
    lookups.fail_all()
    with pytest.raises(LookupFailed):
        await again


async def test_an_oversized_frame_is_blamed_on_the_pending_retrieve_never_on_a_probe() -> None:
    """The socket broke on a frame over the limit while a probe and a retrieve were out:
    the retrieve's item is the one too large to read (a probe is answered by a small
    event), and it is never asked for again, on this socket or the next."""
    wire = FakeWire()
    lookups = Lookups(wire.wiring)
    tail = asyncio.create_task(lookups.tail())
    await wire.wait_sent(1)
    asked = asyncio.create_task(lookups.retrieve("item_audio"))
    await wire.wait_sent(2)
    assert lookups.frame_too_large() == ["item_audio"]
    lookups.connection_lost()
    for pending in (asked, tail):
        with pytest.raises(LookupFailed):
            await pending
    before = len(wire.sent)
    with pytest.raises(TooLargeToRead):
        await lookups.retrieve("item_audio")
    assert len(wire.sent) == before  # not asked again
    assert lookups.frame_too_large() == []  # nothing outstanding now: nothing blamed


async def test_the_items_too_large_to_read_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sideband.lookups, "MAX_TOO_LARGE", 2)
    wire = FakeWire()
    lookups = Lookups(wire.wiring)
    for n in range(3):
        asked = asyncio.create_task(lookups.retrieve(f"item_{n}"))
        await wire.wait_sent(n + 1)
        assert lookups.frame_too_large() == [f"item_{n}"]
        lookups.connection_lost()
        with pytest.raises(LookupFailed):
            await asked
    assert list(lookups.too_large) == ["item_1", "item_2"]
