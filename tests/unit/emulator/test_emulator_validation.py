"""Offer, session and item validation plus conversation edits, without sockets."""

from __future__ import annotations

from typing import Any

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from emulator._conversation import delete_item, insert_item
from emulator._items import normalize_client_item
from emulator._session import check_session_fields, initial_session, merge_session
from emulator.errors import ClientEventError, InvalidSdpError
from emulator.peer import validate_offer


async def _real_offer() -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("audio")
        pc.createDataChannel("oai-events")
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)
    finally:
        await pc.close()


async def test_real_offer_passes() -> None:
    """An offer aiortc generates is accepted."""
    validate_offer(await _real_offer())


@pytest.mark.parametrize("text", ["", "   ", "hello", "v=0\r\n", "v=0\r\nm=audio 9 RTP 0\r\n"])
def test_garbage_is_not_an_offer(text: str) -> None:
    """Text aiortc would happily 'parse' is still rejected as invalid_sdp."""
    with pytest.raises(InvalidSdpError) as info:
        validate_offer(text)
    assert info.value.status == 400
    assert info.value.code == "invalid_sdp"


async def test_answer_sdp_is_not_an_offer() -> None:
    """An SDP whose setup role is active (an answer) is refused."""
    offer = await _real_offer()
    with pytest.raises(InvalidSdpError, match="not an offer"):
        validate_offer(offer.replace("a=setup:actpass", "a=setup:active"))


@pytest.mark.parametrize(
    ("session", "code", "param"),
    [
        ({"instructions": "x"}, "missing_required_parameter", "session.type"),
        ({"type": "transcription"}, "invalid_value", "session.type"),
        ({"type": "realtime", "voice": "marin"}, "unknown_parameter", "session.voice"),
        ({"type": "realtime", "tools": {}}, "invalid_type", "session.tools"),
        ("nope", "invalid_type", "session"),
    ],
)
def test_session_field_errors(session: Any, code: str, param: str) -> None:
    """session.update/posted sessions fail with the API's error codes and params."""
    with pytest.raises(ClientEventError) as info:
        check_session_fields(session)
    assert (info.value.code, info.value.param) == (code, param)


def test_initial_session_defaults_and_model_precedence() -> None:
    """Defaults follow the GA shape; posted model beats ?model= beats gpt-realtime."""
    session = initial_session(None, None)
    assert session["type"] == "realtime"
    assert session["object"] == "realtime.session"
    assert session["id"].startswith("sess_")
    assert session["model"] == "gpt-realtime"
    assert session["output_modalities"] == ["audio"]
    assert session["audio"]["output"]["voice"] == "alloy"  # recorded: the unset default
    assert initial_session(None, "gpt-realtime-mini")["model"] == "gpt-realtime-mini"
    posted = {"type": "realtime", "model": "gpt-realtime-2"}
    assert initial_session(posted, "gpt-realtime-mini")["model"] == "gpt-realtime-2"


def test_merge_is_partial_and_deep_for_audio() -> None:
    """Top-level fields replace; audio sides merge key by key; model never changes."""
    session = initial_session({"type": "realtime", "instructions": "a"}, None)
    merge_session(
        session,
        {
            "type": "realtime",
            "model": "other",
            "tools": [{"type": "function", "name": "t", "parameters": {}}],
            "audio": {"output": {"voice": "cedar"}, "input": {"turn_detection": None}},
        },
    )
    assert session["model"] == "gpt-realtime"
    assert session["instructions"] == "a"
    assert session["tools"][0]["name"] == "t"
    assert session["audio"]["output"] == {
        "format": {"type": "audio/pcm", "rate": 24000},
        "voice": "cedar",
        "speed": 1.0,
    }
    assert session["audio"]["input"]["turn_detection"] is None
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}


def test_normalize_items() -> None:
    """Client items get an id, object and status; required fields are enforced."""
    item = normalize_client_item(
        {"type": "function_call_output", "call_id": "call_1", "output": '{"ok":true}'}
    )
    assert item["id"].startswith("item_")
    assert (item["object"], item["status"], item["output"]) == (
        "realtime.item",
        "completed",
        '{"ok":true}',
    )
    kept = normalize_client_item(
        {"id": "mine", "type": "message", "role": "system", "content": [{"type": "input_text"}]}
    )
    assert kept["id"] == "mine"
    cases: list[tuple[Any, str, str]] = [
        (None, "missing_required_parameter", "item"),
        (
            {"type": "function_call_output", "output": "x"},
            "missing_required_parameter",
            "item.call_id",
        ),
        (
            {"type": "function_call_output", "call_id": "c", "output": {"a": 1}},
            "invalid_type",
            "item.output",
        ),
        ({"type": "message", "role": "robot", "content": []}, "invalid_value", "item.role"),
        (
            {"type": "message", "role": "user", "content": [{"type": "output_text"}]},
            "invalid_value",
            "item.content[0].type",
        ),
        ({"type": "banana"}, "invalid_value", "item.type"),
    ]
    for raw, code, param in cases:
        with pytest.raises(ClientEventError) as info:
            normalize_client_item(raw)
        assert (info.value.code, info.value.param) == (code, param), raw


def test_conversation_insert_and_delete() -> None:
    """previous_item_id positions items; unknown ids and duplicates are errors."""
    conversation: list[dict[str, Any]] = []
    assert insert_item(conversation, {"id": "a"}, None) is None
    assert insert_item(conversation, {"id": "c"}, None) == "a"
    assert insert_item(conversation, {"id": "b"}, "a") == "a"
    assert insert_item(conversation, {"id": "r"}, "root") is None
    assert [i["id"] for i in conversation] == ["r", "a", "b", "c"]
    with pytest.raises(ClientEventError, match="already exists"):
        insert_item(conversation, {"id": "a"}, None)
    with pytest.raises(ClientEventError) as info:
        insert_item(conversation, {"id": "z"}, "missing")
    assert info.value.code == "item_not_found"
    assert delete_item(conversation, "b") == "b"
    with pytest.raises(ClientEventError) as info:
        delete_item(conversation, "b")
    assert info.value.code == "item_not_found"
