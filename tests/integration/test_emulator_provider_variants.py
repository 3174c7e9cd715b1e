"""The emulator's switches for provider behaviours that are uncertain or differ.

The behaviours are listed in docs/protocol.md §0.

Each test shows one switch's effect against a real emulator with an aiortc page and a raw
sideband on loopback, off and on: the broker's own tests then run under both.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from tests.support.browser import FakeBrowser
from tests.support.servers import (
    RunningEmulator,
    SidebandProbe,
    open_call,
    request_json,
    set_faults,
)

PAGE_NOTE = {
    "type": "message",
    "role": "user",
    "content": [{"type": "input_text", "text": "typed by the page"}],
}


async def page_and_sideband(
    http: aiohttp.ClientSession, emulator: RunningEmulator, browser: FakeBrowser
) -> SidebandProbe:
    call_id = await open_call(http, emulator, browser)
    return await SidebandProbe.connect(http, emulator, call_id)


async def nothing_more_of(probe: SidebandProbe, type_: str, wait: float = 0.3) -> bool:
    """True if no ``type_`` event reaches the sideband within ``wait`` seconds."""
    try:
        await probe.wait_for(type_, timeout=wait)
    except TimeoutError:
        return True
    return False


@pytest.mark.parametrize("switched", [False, True])
async def test_page_session_updates_reach_sidebands_unless_switched_off(
    http: aiohttp.ClientSession, emulator: RunningEmulator, switched: bool
) -> None:
    """``sideband_misses_page_session_updates``: the page still gets its answer; the sideband
    gets nothing. A sideband's own update is answered to it either way."""
    await set_faults(http, emulator, sideband_misses_page_session_updates=switched)
    browser = FakeBrowser()
    try:
        sideband = await page_and_sideband(http, emulator, browser)
        browser.send({"type": "session.update", "session": {"type": "realtime", "tools": []}})
        await browser.wait_for("session.updated")
        assert await nothing_more_of(sideband, "session.updated") is switched
        await sideband.send({"type": "session.update", "session": {"type": "realtime"}})
        answer = await sideband.wait_for("session.updated")
        assert answer["session"]["tools"] == []
        await sideband.close()
    finally:
        await browser.close()


@pytest.mark.parametrize("switched", [False, True])
async def test_page_items_reach_sidebands_unless_switched_off(
    http: aiohttp.ClientSession, emulator: RunningEmulator, switched: bool
) -> None:
    """``sideband_misses_page_items``: the page's item is still created (a retrieve finds
    it), but its added/done events go only to the page."""
    await set_faults(http, emulator, sideband_misses_page_items=switched)
    browser = FakeBrowser()
    try:
        sideband = await page_and_sideband(http, emulator, browser)
        browser.send({"type": "conversation.item.create", "item": {**PAGE_NOTE, "id": "item_pg1"}})
        await browser.wait_for("conversation.item.added")
        assert await nothing_more_of(sideband, "conversation.item.added") is switched
        await sideband.send({"type": "conversation.item.retrieve", "item_id": "item_pg1"})
        found = await sideband.wait_for("conversation.item.retrieved")
        assert found["item"]["id"] == "item_pg1"
        await sideband.close()
    finally:
        await browser.close()


@pytest.mark.parametrize("switched", [False, True])
async def test_item_ids_are_the_clients_unless_the_provider_names_them(
    http: aiohttp.ClientSession, emulator: RunningEmulator, switched: bool
) -> None:
    """``provider_item_ids``: a ``conversation.item.create`` with an id gets another one."""
    await set_faults(http, emulator, provider_item_ids=switched)
    browser = FakeBrowser()
    try:
        sideband = await page_and_sideband(http, emulator, browser)
        await sideband.send(
            {"type": "conversation.item.create", "item": {**PAGE_NOTE, "id": "item_ours"}}
        )
        added = await sideband.wait_for("conversation.item.added")
        assert (added["item"]["id"] == "item_ours") is not switched
        await sideband.close()
    finally:
        await browser.close()


@pytest.mark.parametrize("code", ["item_not_found", "invalid_value"])
async def test_the_code_for_a_missing_item_is_a_switch(
    http: aiohttp.ClientSession, emulator: RunningEmulator, code: str
) -> None:
    """``missing_item_error_code``: a retrieve and a delete of a missing item get that code,
    with the client's ``event_id``."""
    await set_faults(http, emulator, missing_item_error_code=code)
    browser = FakeBrowser()
    try:
        sideband = await page_and_sideband(http, emulator, browser)
        for event_type in ("conversation.item.retrieve", "conversation.item.delete"):
            event_id = f"evt_{event_type.rsplit('.', 1)[-1]}"
            await sideband.send({"type": event_type, "event_id": event_id, "item_id": "nope"})
            error = await sideband.wait_for(
                "error", lambda e, eid=event_id: e["error"]["event_id"] == eid
            )
            assert error["error"]["code"] == code
        await sideband.close()
    finally:
        await browser.close()


@pytest.mark.parametrize("switched", [False, True])
async def test_empty_instructions_clear_unless_the_provider_keeps_them(
    http: aiohttp.ClientSession, emulator: RunningEmulator, switched: bool
) -> None:
    """``keep_instructions_on_empty``: ``""`` at creation keeps the default, and ``""`` in an
    update keeps what is in force; off, both clear (the spec's reading)."""
    await set_faults(http, emulator, keep_instructions_on_empty=switched)
    browser = FakeBrowser()
    try:
        call_id = await open_call(
            http, emulator, browser, session={"type": "realtime", "instructions": ""}
        )
        created = await browser.wait_for("session.created")
        assert (created["session"]["instructions"] != "") is switched
        sideband = await SidebandProbe.connect(http, emulator, call_id)
        for instructions, event_id in (("Be kind.", "evt_set"), ("", "evt_clear")):
            await sideband.send(
                {
                    "type": "session.update",
                    "event_id": event_id,
                    "session": {"type": "realtime", "instructions": instructions},
                }
            )
        # Answers come in order: the second session.updated answers the "" update.
        await sideband.wait_for("session.updated")
        async with asyncio.timeout(5):
            while (
                len(updates := [e for e in sideband.events if e["type"] == "session.updated"]) < 2
            ):
                await sideband.next_event()
        assert updates[1]["session"]["instructions"] == ("Be kind." if switched else "")
        await sideband.close()
    finally:
        await browser.close()


async def hang_up(http: aiohttp.ClientSession, emulator: RunningEmulator, call_id: str) -> int:
    status, _ = await request_json(
        http, emulator, "POST", f"/v1/realtime/calls/{call_id}/hangup", None
    )
    return status


def hangup_log(caplog: pytest.LogCaptureFixture, call_id: str) -> list[str]:
    """The emulator's log lines about the call's end, in the order it wrote them."""
    marks = ("hangup answered", "detached", "ended reason=hangup")
    return [
        mark
        for record in caplog.records
        if record.name.startswith("emulator") and call_id in record.getMessage()
        for mark in marks
        if mark in record.getMessage()
    ]


@pytest.mark.parametrize("switched", [False, True])
async def test_hangup_answers_as_termination_begins_unless_switched(
    http: aiohttp.ClientSession,
    emulator: RunningEmulator,
    browser: FakeBrowser,
    caplog: pytest.LogCaptureFixture,
    switched: bool,
) -> None:
    """Hangup "returns 200 OK when OpenAI begins terminating" (the spec): the emulator answers,
    then ends the call and closes the sideband (1000). ``hangup_answers_after_close``: the
    answer comes only once the sideband is closed and the call has ended."""
    caplog.set_level(logging.INFO, logger="emulator")
    await set_faults(http, emulator, hangup_answers_after_close=switched)
    call_id = await open_call(http, emulator, browser)
    call = emulator.registry.get(call_id)
    assert call is not None
    sideband = await SidebandProbe.connect(http, emulator, call_id)
    [link] = call.sidebands
    closing = asyncio.create_task(sideband.wait_closed(), name="sideband-wait-closed")
    try:
        assert await hang_up(http, emulator, call_id) == 200
        if switched:
            assert call.ended and call.sidebands == []
        assert (await closing).data == 1000
        async with asyncio.timeout(5):
            await link.detached.wait()
    finally:
        closing.cancel()
        await sideband.close()
    assert (call.ended, call.end_reason, call.sidebands) == (True, "hangup", [])
    if switched:
        expected = ["ended reason=hangup", "detached", "hangup answered"]
    else:
        expected = ["hangup answered", "ended reason=hangup", "detached"]
    assert hangup_log(caplog, call_id) == expected
