"""A phone call's keypad (broker side): keys recorded, kept for ``dtmf`` tools, keypad turns.

And the tools' side: ``dtmf = true`` in the tools file (default false, a boolean), and the
``X-DTMF-Digits`` header an HTTP tool gets only when it declares it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker.call.keypad import DTMF_EVENT, DtmfRecord, Keypad, KeypadTurn
from broker.record.event_classes import EventClass
from broker.tools.dtmf import MAX_DIGITS, DtmfDigits
from broker.tools.executors import HttpExecutor, ToolContext
from broker.tools.registry import ToolConfigError, load_registry
from sideband.notes import note_item_create


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any], EventClass | None]] = []

    def record(
        self, direction: str, event: dict[str, Any], event_class: EventClass | None = None
    ) -> None:
        self.events.append((direction, event, event_class))


def keypad(
    turn: KeypadTurn | None = None, record: DtmfRecord = DtmfRecord.DIGITS
) -> tuple[Keypad, Recorder, DtmfDigits]:
    recorder, digits = Recorder(), DtmfDigits()
    pad = Keypad("sess_1", recorder, digits, turn, record)  # type: ignore[arg-type]
    return pad, recorder, digits


def test_every_key_is_recorded_and_kept_for_the_call() -> None:
    pad, recorder, digits = keypad()
    assert [pad.pressed(key) for key in "12#"] == [None, None, None]
    assert [e for _, e, _ in recorder.events] == [
        {"type": DTMF_EVENT, "digit": key} for key in "12#"
    ]
    assert digits.of("sess_1") == "12#"
    assert digits.of("sess_other") == ""
    pad.forget()
    assert digits.of("sess_1") == ""


def test_an_unknown_key_is_ignored_and_the_kept_keys_are_bounded() -> None:
    pad, recorder, digits = keypad()
    assert pad.pressed("x") is None
    assert recorder.events == []
    for _ in range(MAX_DIGITS + 5):
        pad.pressed("7")
    assert digits.of("sess_1") == "7" * MAX_DIGITS


def test_keys_up_to_the_terminator_make_a_turn() -> None:
    pad, _, digits = keypad(KeypadTurn("#", "Order {digits}: lookup_order {digits}"))
    assert [pad.pressed(key) for key in "1234"] == [None] * 4
    assert pad.pressed("#") == "Order 1234: lookup_order 1234"
    assert pad.pressed("#") is None  # the terminator alone says nothing
    assert pad.pressed("9") is None
    assert pad.pressed("#") == "Order 9: lookup_order 9"
    assert digits.of("sess_1") == "1234##9#"


def test_a_masking_keypad_records_no_key_but_tools_and_the_model_get_them() -> None:
    pad, recorder, digits = keypad(KeypadTurn("#", "Order {digits}"), DtmfRecord.MASKED)
    assert [pad.pressed(key) for key in "4711#"] == [None] * 4 + ["Order 4711"]
    assert [e for _, e, _ in recorder.events] == [
        {"type": DTMF_EVENT, "digit": "*", "masked": True}
    ] * 5
    assert digits.of("sess_1") == "4711#"
    raw = {"type": "input_audio_buffer.dtmf_event_received", "event": "4", "received_at": 1}
    assert pad.stored(raw) == {**raw, "event": "*", "masked": True}
    assert raw["event"] == "4"  # the event itself goes on as it came
    # The turn's message: the note sent, and the provider's echo of its item, are masked.
    note = note_item_create("item_nt1", "Order 4711", role="user")
    stored = pad.stored(note)
    assert stored["item"]["content"] == [{"type": "input_text", "text": "Order ****"}]
    assert note["item"]["content"][0]["text"] == "Order 4711"
    echo = {"type": "conversation.item.done", "item": note["item"]}
    assert "4711" not in str(pad.stored(echo))
    other = note_item_create("item_nt2", "Order 4711 is late.", role="system")
    assert pad.stored(other) is other  # not the turn's message: the model's own is kept


def test_a_keypad_keeping_the_digits_stores_events_as_they_came() -> None:
    pad, _, _ = keypad(KeypadTurn("#"))
    pad.pressed("1")
    pad.pressed("#")
    raw = {"type": "input_audio_buffer.dtmf_event_received", "event": "1"}
    note = note_item_create("item_nt1", "The caller pressed 1 on the keypad.", role="user")
    assert pad.stored(raw) is raw and pad.stored(note) is note


def test_the_default_prompt() -> None:
    pad, _, _ = keypad(KeypadTurn("*"))
    pad.pressed("5")
    assert pad.pressed("*") == "The caller pressed 5 on the keypad."


async def test_the_tools_file_takes_dtmf_as_a_boolean(tmp_path: Path) -> None:
    path = tmp_path / "tools.toml"
    path.write_text(
        '[tools.a]\npython = "broker.tools.demo:lookup_order"\ndtmf = true\n'
        '[tools.b]\npython = "broker.tools.demo:lookup_order"\n'
    )
    async with httpx.AsyncClient() as http:
        registry = load_registry(path, http, env={})
        assert (registry["a"].dtmf, registry["b"].dtmf) == (True, False)
        path.write_text('[tools.a]\npython = "broker.tools.demo:lookup_order"\ndtmf = "yes"\n')
        with pytest.raises(ToolConfigError, match="dtmf must be true or false"):
            load_registry(path, http, env={})


@pytest.mark.parametrize(("dtmf", "header"), [("12#", "12#"), ("", ""), (None, None)])
async def test_an_http_tool_gets_the_keys_only_when_it_declares_them(
    dtmf: str | None, header: str | None
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ok": True})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        executor = HttpExecutor("https://tools.test/x", http, None, 5.0)
        out = await executor({}, ToolContext("sess_1", "call_1", "x", dtmf))
    assert json.loads(out) == {"ok": True}
    assert seen[0].headers.get("X-DTMF-Digits") == header
