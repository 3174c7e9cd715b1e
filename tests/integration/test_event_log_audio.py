"""No base64 audio in the event log nor its stream: each payload is stored as its size.

The provider's ``conversation.item.retrieved`` carries a user audio item's audio in full
(docs/protocol.md §0), and a resync retrieves the conversation's tail: a turn the user spoke
while the sideband was away is exactly such an item. An item the page creates with audio is
echoed to the sideband with it. Neither may reach the database, the SSE stream or the
coalescible budget as audio.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from typing import Any

import aiohttp

from broker import app_state
from broker.db.models import SessionRow
from broker.record.event_log import EventRecorder
from tests.conftest import BrokerFactory
from tests.integration.test_events_stream import EventStream, Message, open_stream
from tests.support.audio import speech_like_signal
from tests.support.broker_server import RunningBroker
from tests.support.flow import (
    connect_browser,
    session_events,
    stored_events,
    wait_events,
    wait_session_ended,
    wait_sideband,
)
from tests.support.outages import OUTAGE_FAULT, call_of, clear_faults, drop
from tests.support.servers import RunningEmulator, set_faults


def pcm24k(samples_48k: Any) -> str:
    return base64.b64encode(samples_48k[::2].astype("<i2").tobytes()).decode()


def audio_values(value: Any) -> Iterator[Any]:
    """Every value under an ``audio`` key anywhere in ``value``."""
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "audio":
                yield inner
            yield from audio_values(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from audio_values(inner)


def marker(audio: str) -> dict[str, Any]:
    return {"redacted": "audio", "base64_chars": len(audio)}


def retrieved_audio(emulator: RunningEmulator, call_id: str, item_id: str) -> str:
    """The audio the provider sent in its retrieve of ``item_id`` (the emulator's record)."""
    call = emulator.registry.get(call_id)
    assert call is not None
    [event] = [
        e
        for e in call.sent
        if e["type"] == "conversation.item.retrieved" and e["item"]["id"] == item_id
    ]
    audio: str = event["item"]["content"][0]["audio"]
    return audio


async def test_item_audio_is_stored_and_streamed_as_its_size_after_a_resync(
    reconnecting_broker: RunningBroker, emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    """A page's audio item (echoed while watched) and a turn committed while the sideband was
    away (retrieved by the resync) are in the log and the stream, each audio payload as
    ``{"redacted": "audio", "base64_chars": N}`` with the provider's N; no audio anywhere."""
    broker = reconnecting_broker
    monitor = await broker.new_key("monitor:read")
    session = await broker.create_session()
    response = await open_stream(http, broker, session["id"], monitor)
    try:
        assert response.status == 200
        stream = EventStream(response)
        browser = await connect_browser(broker, session)
        try:
            call_id = await call_of(broker, session)
            # Watched: the page adds a user item with its own audio; the provider echoes it.
            page_audio = pcm24k(speech_like_signal(0.3))
            browser.send(
                {
                    "type": "conversation.item.create",
                    "item": {
                        "id": "item_page_audio",
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_audio", "audio": page_audio}],
                    },
                }
            )
            [page_done] = await wait_events(
                broker,
                session["id"],
                "conversation.item.done",
                lambda p: p["item"]["id"] == "item_page_audio",
            )
            assert page_done["payload"]["item"]["content"] == [
                {"type": "input_audio", "audio": marker(page_audio)}
            ]

            # Away: the user's turn is committed (silence, so the VAD starts no response)
            # and is the conversation's tail when the sideband comes back.
            await set_faults(http, emulator, **OUTAGE_FAULT)
            await drop(http, emulator, call_id)
            await wait_sideband(broker, session["id"], "reconnecting")
            quiet = base64.b64encode(bytes(24_000)).decode()  # 0.5 s of PCM16 silence
            browser.send({"type": "input_audio_buffer.append", "audio": quiet})
            browser.send({"type": "input_audio_buffer.commit"})
            committed = await browser.wait_for("input_audio_buffer.committed")
            turn_id = committed["item_id"]
            await clear_faults(http, emulator)

            [retrieved] = await wait_events(
                broker,
                session["id"],
                "conversation.item.retrieved",
                lambda p: p["item"]["id"] == turn_id,
                timeout=20,
            )
            turn_audio = retrieved_audio(emulator, call_id, turn_id)
            assert len(turn_audio) >= len(quiet)  # the appended half second, and the mic's
            assert retrieved["direction"] == "in"
            [part] = retrieved["payload"]["item"]["content"]
            # The transcript, if the session transcribes, is not audio: it stays.
            assert (part["type"], part["audio"]) == ("input_audio", marker(turn_audio))
        finally:
            await browser.close()
        await wait_session_ended(broker, session["id"], timeout=10)
        received: list[Message] = await stream.rest(timeout=15)
    finally:
        response.close()

    stored = await session_events(broker, session["id"])
    streamed = [(m.event, m.data["type"], m.data["payload"]) for m in received]
    assert streamed == [(e["direction"], e["type"], e["payload"]) for e in stored]
    for text in (json.dumps([e["payload"] for e in stored]), "\n".join(stream.lines)):
        assert page_audio not in text
        assert turn_audio not in text
    assert [a for e in stored for a in audio_values(e["payload"]) if isinstance(a, str)] == []
    assert marker(turn_audio) in [a for e in stored for a in audio_values(e["payload"])]
    [streamed_turn] = [
        m
        for m in received
        if m.data["type"] == "conversation.item.retrieved"
        and m.data["payload"]["item"]["id"] == turn_id
    ]
    assert streamed_turn.data["payload"]["item"]["content"][0]["audio"] == marker(turn_audio)


async def test_audio_weighs_its_marker_against_the_bytes_cap(make_broker: BrokerFactory) -> None:
    """A coalescible event carrying megabytes of audio costs the session's budget only its
    redacted size: it is stored under a 1,000-byte cap."""
    broker = await make_broker(event_log_max_coalescible_bytes=1_000)
    sessionmaker = broker.app[app_state.SESSIONMAKER]
    session = await broker.create_session()
    audio = "A" * 2_000_000
    item = {
        "id": "item_1",
        "type": "message",
        "role": "user",
        "content": [{"type": "input_audio", "audio": audio}],
    }
    async with asyncio.timeout(10):
        recorder = EventRecorder(sessionmaker, session["id"])
        await recorder.start()
        recorder.record("in", {"type": "conversation.item.created", "item": item})
        await recorder.flush()
        async with sessionmaker() as s:
            row = await s.get(SessionRow, session["id"])
        events = await stored_events(broker, session["id"])
    assert row is not None
    assert (row.events_coalescible, row.events_dropped) == (1, 0)
    assert row.events_coalescible_bytes <= 1_000
    [event] = events
    assert event.type == "conversation.item.created"
    assert event.payload["item"]["content"][0]["audio"] == marker(audio)
