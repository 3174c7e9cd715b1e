"""A frame over the sideband's 16 MiB limit costs one socket, never the call's tool calls.

The provider's ``conversation.item.retrieved`` carries the whole item, base64 audio
included, so a user audio turn of more than about 4½ minutes (24 kHz PCM16) is a frame
larger than the broker's sideband accepts; aiohttp closes the socket with 1009. A page can
build one at will (appends, then a commit). Once, every resync that met such an item as the
conversation's tail retrieved it again and lost the socket again, so the call's tools never
ran. Now the item whose retrieve was outstanding is remembered as too large to read and each
resync goes on past it; an oversized frame the broker did not ask for (the answer to the
page's own retrieve, fanned out to every connection) counts as tampering. Each test runs the
real stack: emulator, aiortc page, broker, HTTP tool backend on loopback.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any, Final

import aiohttp
import pytest

from broker import app_state
from broker.call.tamper_policy import MAX_TAMPERS_REVERTED, TamperResponder
from broker.record.event_log import EventRecorder
from broker.session.end_reason import EndReason
from broker.session.limits import TamperPolicy
from sideband import OversizedFrame
from tests.support.broker_server import RunningBroker
from tests.support.browser import FakeBrowser
from tests.support.flow import (
    LOOKUP_42_OUTPUT,
    ask,
    connect_browser,
    says,
    session_events,
    wait_events,
    wait_session_ended,
    wait_sideband,
)
from tests.support.outages import ALL_PROVIDER_SWITCHES, OUTAGE_FAULT, call_of, drop, wait_row
from tests.support.servers import RunningEmulator, set_faults
from tests.support.tool_backend import ToolBackend

LIMIT: Final = 16 * 1024 * 1024
CHUNK_BYTES: Final = 192_000
"""Four seconds of 24 kHz PCM16 a message: its base64 (256,000 characters) keeps the append
under the data channel's 256 KiB message size (aiortc's, and Chrome's)."""
CHUNKS: Final = 72
"""4 min 48 s of audio, 18,432,000 base64 characters: over 16 MiB appended, and the
retrieve's answer is as large."""
SILENCE: Final = base64.b64encode(bytes(CHUNK_BYTES)).decode("ascii")


async def commit_long_turn(browser: FakeBrowser) -> str:
    """What a page does to make a huge audio item: many appends, then a commit; its item id."""
    assert CHUNKS * len(SILENCE) > LIMIT
    for _ in range(CHUNKS):
        browser.send({"type": "input_audio_buffer.append", "audio": SILENCE})
    browser.send({"type": "input_audio_buffer.commit"})
    committed = await browser.wait_for("input_audio_buffer.committed", timeout=60)
    item_id: str = committed["item_id"]
    return item_id


def attaches(emulator: RunningEmulator, call_id: str) -> int:
    call = emulator.registry.get(call_id)
    assert call is not None
    return len(call.sideband_attaches)


@pytest.mark.parametrize(
    ("provider", "policy"),
    [({}, "revert"), (ALL_PROVIDER_SWITCHES, "hangup")],
    ids=["provider-as-recorded", "every-switch-hangup-policy"],
)
async def test_a_huge_audio_turn_at_the_tail_costs_one_socket_and_tools_run_after(
    reconnecting_broker: RunningBroker,
    emulator: RunningEmulator,
    tool_backend: ToolBackend,
    http: aiohttp.ClientSession,
    provider: dict[str, Any],
    policy: str,
) -> None:
    """The page commits over 16 MiB of audio while the sideband is away, so the resync's
    retrieve of the conversation's tail is a frame over the limit: that socket is lost
    (1009), recorded as an ``oversized_frame`` naming the item, and the next resync goes past
    the item without asking again. Three attaches in all, no loop, and a tool call the model
    makes afterwards runs exactly once. A long turn may be honest, so even ``on_tamper:
    hangup`` keeps the call."""
    broker = reconnecting_broker
    await set_faults(http, emulator, **provider)
    session = await broker.create_session(tools=["lookup_order"], limits={"on_tamper": policy})
    browser = await connect_browser(broker, session)
    try:
        call_id = await call_of(broker, session)
        await set_faults(http, emulator, **OUTAGE_FAULT)
        await drop(http, emulator, call_id)
        await wait_sideband(broker, session["id"], "reconnecting")
        audio_item = await commit_long_turn(browser)
        await set_faults(http, emulator, sideband_attach_error=None)
        [tamper] = await wait_events(
            broker,
            session["id"],
            "broker.tamper",
            lambda p: p["kind"] == "oversized_frame",
            timeout=20,
        )
        # The re-attach after the lost socket (its resync must not retrieve the item again).
        await wait_events(
            broker,
            session["id"],
            "broker.sideband_attached",
            lambda p: p["kind"] == "reconnect",
            count=2,
            timeout=20,
        )
        await wait_sideband(broker, session["id"])
        ask(browser, 'lookup_order {"order_id": "42"}')
        fc = await browser.wait_for("response.function_call_arguments.done", timeout=15)
        await browser.wait_for("response.done", says(LOOKUP_42_OUTPUT), timeout=15)
        row = await wait_row(broker, session["id"], fc["call_id"])
    finally:
        await browser.close()
    assert tamper["payload"] == {
        "type": "broker.tamper",
        "kind": "oversized_frame",
        "policy": policy,
        "item_id": audio_item,
        "limit": LIMIT,
    }
    assert (row["status"], row["path"]) == ("succeeded", "sideband")
    assert len(tool_backend.calls_for(fc["call_id"])) == 1
    assert len(tool_backend.calls_to("lookup_order")) == 1
    # Attached, re-attached after the drop, re-attached once after the oversized frame.
    assert attaches(emulator, call_id) == 3
    lost = await session_events(broker, session["id"], "broker.sideband_lost")
    assert [e["payload"]["close_code"] for e in lost] == [1006, 1009]
    attached = await session_events(broker, session["id"], "broker.sideband_attached")
    assert [e["payload"]["kind"] for e in attached] == ["attach", "reconnect", "reconnect"]
    detail = await broker.get_session(session["id"])
    assert [r["call_id"] for r in detail["tool_calls"]] == [fc["call_id"]]
    assert detail["state"] == "live"


@pytest.mark.parametrize(
    ("policy", "frames", "end_reason"),
    [("hangup", 1, "tamper"), ("revert", MAX_TAMPERS_REVERTED, "tamper_repeated")],
)
async def test_oversized_frames_the_broker_did_not_ask_for_end_the_call(
    reconnecting_broker: RunningBroker,
    emulator: RunningEmulator,
    policy: str,
    frames: int,
    end_reason: str,
) -> None:
    """The page retrieves its own huge audio item; the provider fans the answer out to the
    sideband too, which loses its socket (1009) with no retrieve of the broker's outstanding.
    A page could keep the sideband flapping this way, so each is an attempt: under
    ``on_tamper: hangup`` the first ends the call (``tamper``), under ``revert`` the fifth
    (``tamper_repeated``)."""
    broker = reconnecting_broker
    session = await broker.create_session(tools=["lookup_order"], limits={"on_tamper": policy})
    browser = await connect_browser(broker, session)
    try:
        call_id = await call_of(broker, session)
        call = emulator.registry.get(call_id)
        assert call is not None
        audio_item = await commit_long_turn(browser)
        for n in range(frames):
            async with asyncio.timeout(20):  # the re-attach after the previous frame
                while len(call.sideband_attaches) <= n or not call.sidebands:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            browser.send({"type": "conversation.item.retrieve", "item_id": audio_item})
            tampers = await wait_events(
                broker,
                session["id"],
                "broker.tamper",
                lambda p: p["kind"] == "oversized_frame",
                count=n + 1,
                timeout=20,
            )
        detail = await wait_session_ended(broker, session["id"], timeout=20)
    finally:
        await browser.close()
    assert [t["payload"] for t in tampers] == [
        {
            "type": "broker.tamper",
            "kind": "oversized_frame",
            "policy": policy,
            "item_id": None,
            "limit": LIMIT,
        }
    ] * frames
    assert (detail["state"], detail["end_reason"]) == ("ended", end_reason)
    lost = await session_events(broker, session["id"], "broker.sideband_lost")
    assert [e["payload"]["close_code"] for e in lost][:frames] == [1009] * frames
    assert call.ended


async def test_blamed_oversized_frames_never_hang_up_but_the_fifth_ends_the_call(
    broker: RunningBroker,
) -> None:
    """An oversized frame blamed on the broker's own retrieve may be an honest long turn: it
    never ends a call by itself, even under ``on_tamper: hangup``. But a page can time huge
    frames of its own to the broker's retrieves, so each still counts: the fifth ends the
    call (``tamper_repeated``). Run on the broker's own event log."""
    session = await broker.create_session(tools=["lookup_order"])
    recorder = EventRecorder(broker.app[app_state.SESSIONMAKER], session["id"])
    ended: list[EndReason] = []

    async def end_call(reason: EndReason) -> None:
        ended.append(reason)

    responder = TamperResponder(session["id"], TamperPolicy.HANGUP, recorder, end_call)
    async with asyncio.timeout(10):
        await recorder.start()
        writer = asyncio.create_task(recorder.run(), name="test-recorder")
        for n in range(MAX_TAMPERS_REVERTED - 1):
            await responder.tampered(OversizedFrame(item_id=f"item_{n}", limit=LIMIT))
        assert ended == []
        await responder.tampered(OversizedFrame(item_id="item_last", limit=LIMIT))
        recorder.stop()
        await writer
    assert ended == [EndReason.TAMPER_REPEATED]
    stored = await session_events(broker, session["id"], "broker.tamper")
    assert [e["payload"]["item_id"] for e in stored] == [
        *(f"item_{n}" for n in range(MAX_TAMPERS_REVERTED - 1)),
        "item_last",
    ]
