"""Out-of-band responses (``response.create`` with ``response.conversation: "none"``,
docs/protocol.md §3.2), driven over a real sideband: the response events arrive, the
conversation is unchanged, and a later normal response never reads what the out-of-band one
said."""

from __future__ import annotations

from typing import Any

import aiohttp

from emulator import EmulatorSettings
from emulator.model import ACK_TEXT
from tests.conftest import assert_conformant
from tests.support.broker_server import PROVIDER_KEY
from tests.support.browser import FakeBrowser
from tests.support.servers import (
    RunningEmulator,
    SidebandProbe,
    open_call,
    set_faults,
    start_emulator,
)

LOOKUP = {
    "type": "function",
    "name": "lookup_order",
    "description": "Look up an order.",
    "parameters": {
        "type": "object",
        "properties": {"order_id": {"type": "string"}},
        "required": ["order_id"],
    },
}
SESSION = {
    "type": "realtime",
    "output_modalities": ["text"],
    "tools": [LOOKUP],
    "audio": {"input": {"turn_detection": None}},
}


async def text_call(
    http: aiohttp.ClientSession, emulator: RunningEmulator, browser: FakeBrowser
) -> tuple[str, SidebandProbe]:
    call_id = await open_call(http, emulator, browser, SESSION)
    return call_id, await SidebandProbe.connect(http, emulator, call_id)


async def say(probe: SidebandProbe, text: str) -> str:
    """Add a user text message; return its item id once it is in the conversation."""
    item_id = f"item_user_{len(probe.events)}"
    await probe.send(
        {
            "type": "conversation.item.create",
            "item": {
                "id": item_id,
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": text}],
            },
        }
    )
    await probe.wait_for("conversation.item.done", lambda e: e["item"]["id"] == item_id)
    return item_id


async def run_response(probe: SidebandProbe, response: dict[str, Any]) -> dict[str, Any]:
    """Send ``response.create``; return its ``response.done`` response object."""
    already = {e["response"]["id"] for e in probe.events if e["type"] == "response.created"}
    await probe.send({"type": "response.create", "response": response})
    created = await probe.wait_for("response.created", lambda e: e["response"]["id"] not in already)
    response_id = created["response"]["id"]
    done = await probe.wait_for("response.done", lambda e: e["response"]["id"] == response_id)
    result: dict[str, Any] = done["response"]
    return result


def events_of(probe: SidebandProbe, response_id: str) -> list[dict[str, Any]]:
    return [
        e
        for e in probe.events
        if e.get("response_id") == response_id or e.get("response", {}).get("id") == response_id
    ]


def texts(response: dict[str, Any]) -> list[str]:
    return [
        part.get("text") or part.get("transcript") or ""
        for item in response["output"]
        if item["type"] == "message"
        for part in item["content"]
    ]


async def test_an_out_of_band_response_streams_but_leaves_the_conversation_alone(
    emulator: RunningEmulator, http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    """conversation "none" with instructions: the acknowledgement streams with a null
    conversation id and the metadata echoed; no conversation.item.* for it, a retrieve does
    not find it, and the next normal response answers the user, not the acknowledgement."""
    call_id, sideband = await text_call(http, emulator, browser)
    try:
        user_item = await say(sideband, "hello there")
        call = emulator.registry.get(call_id)
        assert call is not None
        before = [item["id"] for item in call.conversation]
        response = await run_response(
            sideband,
            {
                "conversation": "none",
                "instructions": "Tell the user you are working on it.",
                "tool_choice": "none",
                "metadata": {"purpose": "ack", "call_id": "call_1"},
            },
        )
        assert response["status"] == "completed"
        assert response["conversation_id"] is None
        assert response["metadata"] == {"purpose": "ack", "call_id": "call_1"}
        assert texts(response) == [ACK_TEXT]
        [item] = response["output"]
        seen = events_of(sideband, response["id"])
        types = [e["type"] for e in seen]
        assert types[0] == "response.created"
        assert seen[0]["response"]["conversation_id"] is None
        assert seen[0]["response"]["metadata"] == {"purpose": "ack", "call_id": "call_1"}
        for expected in (
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.done",
        ):
            assert expected in types
        assert (
            "".join(e["delta"] for e in seen if e["type"] == "response.output_text.delta")
            == ACK_TEXT
        )
        # Nothing about its item reached the conversation.
        assert not [
            e
            for e in sideband.events
            if e["type"].startswith("conversation.item.") and e["item"]["id"] == item["id"]
        ]
        assert [i["id"] for i in call.conversation] == before == [user_item]
        await sideband.send(
            {"type": "conversation.item.retrieve", "item_id": item["id"], "event_id": "ev_r"}
        )
        error = await sideband.wait_for("error", lambda e: e["error"]["event_id"] == "ev_r")
        assert error["error"]["code"] == "item_not_found"
        # The next response reads the conversation: the user's words, not the acknowledgement.
        following = await run_response(sideband, {})
        assert following["conversation_id"] == call.conversation_id
        assert texts(following) == ["You said: hello there"]
        assert ACK_TEXT not in str(following)
        assert [i["id"] for i in call.conversation][:1] == [user_item]
        assert len(call.conversation) == 2
    finally:
        await sideband.close()


async def test_an_out_of_band_response_calls_no_tool(
    emulator: RunningEmulator, http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    """A user turn naming a tool: out of band (no instructions) the model answers in words and
    adds nothing; the normal response that follows calls the tool."""
    call_id, sideband = await text_call(http, emulator, browser)
    try:
        await say(sideband, "lookup_order 42")
        response = await run_response(sideband, {"conversation": "none"})
        assert [item["type"] for item in response["output"]] == ["message"]
        assert texts(response) == ["You said: lookup_order 42"]
        call = emulator.registry.get(call_id)
        assert call is not None
        assert len(call.conversation) == 1
        following = await run_response(sideband, {"conversation": "auto"})
        [function_call] = following["output"]
        assert function_call["type"] == "function_call"
        assert function_call["name"] == "lookup_order"
        assert function_call["arguments"] == '{"order_id":"42"}'
    finally:
        await sideband.close()


async def test_an_out_of_band_response_runs_beside_the_conversations_response(
    http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    """While a normal response streams, an out-of-band one is accepted (no
    conversation_already_has_active_response) and can be cancelled by its id; a bad
    conversation value is refused."""
    # 50 ms between deltas: the normal response streams for 2 s, the acknowledgement 0.3 s.
    emulator = await start_emulator(EmulatorSettings(api_key=PROVIDER_KEY, token_interval=0.05))
    _, sideband = await text_call(http, emulator, browser)
    try:
        await say(sideband, " ".join(["word"] * 40))  # a long echo keeps the response going
        await sideband.send({"type": "response.create"})
        normal = await sideband.wait_for("response.created")
        await sideband.send(
            {"type": "response.create", "response": {"conversation": "none", "instructions": "x"}}
        )
        oob = await sideband.wait_for(
            "response.created", lambda e: e["response"]["id"] != normal["response"]["id"]
        )
        await sideband.send({"type": "response.cancel", "response_id": oob["response"]["id"]})
        cancelled = await sideband.wait_for(
            "response.done", lambda e: e["response"]["id"] == oob["response"]["id"]
        )
        assert cancelled["response"]["status"] == "cancelled"
        completed = await sideband.wait_for(
            "response.done", lambda e: e["response"]["id"] == normal["response"]["id"]
        )
        assert completed["response"]["status"] == "completed"
        # The out-of-band response started and ended while the normal one streamed.
        assert sideband.events.index(oob) < sideband.events.index(completed)
        assert sideband.events.index(cancelled) < sideband.events.index(completed)
        await sideband.send(
            {"type": "response.create", "response": {"conversation": "other"}, "event_id": "ev_b"}
        )
        error = await sideband.wait_for("error", lambda e: e["error"]["event_id"] == "ev_b")
        assert error["error"]["code"] == "invalid_value"
        assert error["error"]["param"] == "response.conversation"
        assert not [e for e in sideband.events if e["type"] == "error" and e is not error]
    finally:
        await sideband.close()
        await emulator.close()
    assert_conformant(emulator)


async def test_single_active_response_refuses_any_second_response_by_its_event_id(
    http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    """single_active_response on: an out-of-band response.create while the conversation's
    response runs, and an in-band or out-of-band one while an out-of-band one runs, each get
    conversation_already_has_active_response naming their event_id, and start nothing; once
    the running response is done, the next one is accepted."""
    emulator = await start_emulator(EmulatorSettings(api_key=PROVIDER_KEY, token_interval=0.05))
    _, sideband = await text_call(http, emulator, browser)

    async def refused(response: dict[str, Any], event_id: str, running: str) -> None:
        await sideband.send({"type": "response.create", "response": response, "event_id": event_id})
        error = await sideband.wait_for("error", lambda e: e["error"]["event_id"] == event_id)
        assert error["error"]["code"] == "conversation_already_has_active_response"
        assert running in error["error"]["message"]

    def created() -> list[str]:
        return [e["response"]["id"] for e in sideband.events if e["type"] == "response.created"]

    try:
        switches = await set_faults(http, emulator, single_active_response=True)
        assert switches["single_active_response"] is True
        await say(sideband, " ".join(["word"] * 40))  # each response streams for about 2 s
        await sideband.send({"type": "response.create"})
        normal = (await sideband.wait_for("response.created"))["response"]["id"]
        await refused({"conversation": "none", "instructions": "x"}, "ev_oob_1", normal)
        done = await sideband.wait_for("response.done", lambda e: e["response"]["id"] == normal)
        assert done["response"]["status"] == "completed"

        await sideband.send({"type": "response.create", "response": {"conversation": "none"}})
        oob = (
            await sideband.wait_for("response.created", lambda e: e["response"]["id"] != normal)
        )["response"]["id"]
        await refused({}, "ev_in_1", oob)
        await refused({"conversation": "none"}, "ev_oob_2", oob)
        done = await sideband.wait_for("response.done", lambda e: e["response"]["id"] == oob)
        assert done["response"]["status"] == "completed"
        assert created() == [normal, oob]  # nothing refused ever started

        following = await run_response(sideband, {"conversation": "none", "instructions": "x"})
        assert texts(following) == [ACK_TEXT]
        errors = [e["error"]["event_id"] for e in sideband.events if e["type"] == "error"]
        assert errors == ["ev_oob_1", "ev_in_1", "ev_oob_2"]
    finally:
        await sideband.close()
        await emulator.close()
    assert_conformant(emulator)


async def test_an_out_of_band_audio_response_speaks_without_entering_the_conversation(
    emulator: RunningEmulator, http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    """Audio output: the acknowledgement's transcript streams and its audio plays on the
    call; the conversation is unchanged."""
    call_id, sideband = await text_call(http, emulator, browser)
    try:
        response = await run_response(
            sideband,
            {"conversation": "none", "instructions": "ack", "output_modalities": ["audio"]},
        )
        assert texts(response) == [ACK_TEXT]
        transcript = await sideband.wait_for(
            "response.output_audio_transcript.done", lambda e: e["response_id"] == response["id"]
        )
        assert transcript["transcript"] == ACK_TEXT
        call = emulator.registry.get(call_id)
        assert call is not None
        assert call.conversation == []
    finally:
        await sideband.close()
