"""A phone caller's keys on the sideband (``input_audio_buffer.dtmf_event_received``).

The event has no ``event_id`` (docs/protocol.md §0, "SIP"): it parses, is recorded, and the
controller's ``last_event_id`` keeps the last id it saw. Each key goes to a keypad observer;
the message it may return (a keypad turn) goes in as a ``user`` message of the broker's,
answered with a ``response.create``, and is never taken for a page item. An observer without
a keypad hears nothing and nothing is sent.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sideband import CallController
from sideband.events import InputAudioBufferDtmfEventReceived, parse_server_event
from sideband.notes import NOTE_ITEM_PREFIX
from sideband.tamper import OwnedSession, PageItems, PagePolicy
from tests.unit.sideband.test_controller import Observer, QueueConnection, RecordingTools
from tests.unit.sideband.test_controller_tamper import CONFIG, Reports, answer_probe, finish


def dtmf(key: str) -> dict[str, Any]:
    return {"type": "input_audio_buffer.dtmf_event_received", "event": key, "received_at": 1}


class KeypadObserver(Observer):
    """Answers a turn once ``#`` ends some keys, as a line's keypad turn would."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: list[str] = []
        self._pending = ""

    def dtmf(self, digit: str) -> str | None:
        self.keys.append(digit)
        if digit != "#":
            self._pending += digit
            return None
        pending, self._pending = self._pending, ""
        return f"The caller pressed {pending} on the keypad."


async def start(
    observer: Observer,
) -> tuple[CallController, QueueConnection, asyncio.Task[int | None], Reports]:
    conn = QueueConnection()

    async def connect() -> Any:
        return conn

    reports = Reports()
    controller = CallController(
        "rtc_phone",
        connect,
        RecordingTools(),
        observer,
        owned_session=OwnedSession.from_config(CONFIG),
        tamper=reports,
        page=PagePolicy(items=PageItems.REFUSE),
    )
    task = asyncio.create_task(controller.run())
    await conn.wait_sent(1)
    conn.sent.clear()
    return controller, conn, task, reports


def test_the_event_parses_without_an_event_id() -> None:
    event = parse_server_event(dtmf("5"))
    assert isinstance(event, InputAudioBufferDtmfEventReceived)
    assert (event.event, event.event_id, event.received_at) == ("5", None, 1)


async def test_keys_reach_the_keypad_and_a_turn_goes_in_as_our_user_message() -> None:
    observer = KeypadObserver()
    controller, conn, task, reports = await start(observer)
    conn.inbox.put_nowait({"type": "session.updated", "event_id": "ev_1", "session": CONFIG})
    for key in "42":
        conn.inbox.put_nowait(dtmf(key))
    await asyncio.sleep(0.05)
    assert observer.keys == ["4", "2"]
    assert conn.sent == []  # no turn yet
    assert controller.last_event_id == "ev_1"  # an event without an id changes nothing
    conn.inbox.put_nowait(dtmf("#"))
    await conn.wait_sent(1)
    [create] = conn.sent[:1]
    item = create["item"]
    assert create["type"] == "conversation.item.create"
    assert (item["role"], item["content"][0]["text"]) == (
        "user",
        "The caller pressed 42 on the keypad.",
    )
    assert item["id"].startswith(NOTE_ITEM_PREFIX)
    await answer_probe(conn, 1)
    await conn.wait_sent(3)
    assert conn.sent[2]["type"] == "response.create"
    # The provider's echo of our user message is not a page item: nothing is deleted.
    conn.inbox.put_nowait({"type": "conversation.item.added", "item": item})
    await asyncio.sleep(0.05)
    await finish(conn, task)
    assert [e["type"] for e in conn.sent] == [
        "conversation.item.create",
        "session.update",
        "response.create",
    ]
    assert reports.tampers == []
    assert ("in", "input_audio_buffer.dtmf_event_received") in observer.records


async def test_an_observer_without_a_keypad_only_records_the_keys() -> None:
    observer = Observer()
    _, conn, task, _ = await start(observer)
    for key in "1#":
        conn.inbox.put_nowait(dtmf(key))
    await asyncio.sleep(0.05)
    await finish(conn, task)
    assert conn.sent == []
    assert observer.records.count(("in", "input_audio_buffer.dtmf_event_received")) == 2
