"""The provider's WebSocket session mode (``GET /v1/realtime?model=…``, no WebRTC), driven with
aiohttp's WebSocket client and with the official openai SDK unchanged: text turns, function
calls, appended audio giving ``response.output_audio.delta``, inspection and the end of a
session when its socket closes."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
from typing import Any

import aiohttp
import numpy as np
import pytest
from numpy.typing import NDArray
from openai import AsyncOpenAI
from openai.resources.realtime.realtime import AsyncRealtimeConnection

from emulator import EmulatorSettings
from emulator.model import ACK_TEXT
from emulator.sessions import RealtimeSession
from sideband.azure import ApiKeyCredential, AzureOpenAIProvider
from sideband.errors import ProviderCapabilityError, ProviderError
from sideband.provider import OPENAI_CAPABILITIES, OpenAICompatibleProvider
from tests.conftest import assert_conformant
from tests.support.audio import rms_dbfs, silence, speech_like_signal
from tests.support.broker_server import PROVIDER_KEY
from tests.support.conformance import validate_server_event
from tests.support.servers import LOOKUP_ORDER, RunningEmulator, SidebandProbe, start_emulator

MODEL = "gpt-realtime-mini"


def pcm24k(*segments: NDArray[np.int16]) -> str:
    """48 kHz segments → one base64 PCM16 24 kHz chunk (the session's input format)."""
    samples = np.concatenate(segments)[::2]
    return base64.b64encode(samples.astype("<i2").tobytes()).decode()


async def open_session(
    http: aiohttp.ClientSession, emulator: RunningEmulator, model: str = MODEL
) -> SidebandProbe:
    async with asyncio.timeout(5):
        ws = await http.ws_connect(
            emulator.ws_url, params={"model": model}, headers=emulator.auth(), heartbeat=30
        )
    return SidebandProbe(ws)


def session_of(emulator: RunningEmulator, probe: SidebandProbe) -> RealtimeSession:
    [created] = [e for e in probe.events if e["type"] == "session.created"]
    session = emulator.registry.get(created["session"]["id"])
    assert isinstance(session, RealtimeSession)
    return session


async def say(probe: SidebandProbe, text: str) -> None:
    await probe.send(
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": text}],
            },
        }
    )


def of_type(events: list[dict[str, Any]], type_: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == type_]


def decoded_audio(events: list[dict[str, Any]], response_id: str) -> NDArray[np.int16]:
    chunks = [
        base64.b64decode(e["delta"])
        for e in of_type(events, "response.output_audio.delta")
        if e["response_id"] == response_id
    ]
    return np.frombuffer(b"".join(chunks), dtype="<i2").astype(np.int16)


async def test_a_session_starts_with_session_created_and_answers_a_text_turn(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    """The first event is session.created (call defaults, the query's model); a text turn
    gets its answer; the session is in the registry under its id and inspectable."""
    probe = await open_session(http, emulator)
    try:
        created = await probe.next_event()
        assert created["type"] == "session.created"
        assert created["session"]["model"] == MODEL
        assert created["session"]["id"].startswith("sess_")
        assert created["session"]["audio"]["output"]["format"] == {
            "type": "audio/pcm",
            "rate": 24000,
        }
        await probe.send(
            {
                "type": "session.update",
                "session": {"type": "realtime", "output_modalities": ["text"]},
            }
        )
        updated = await probe.wait_for("session.updated")
        assert updated["session"]["output_modalities"] == ["text"]
        await say(probe, "hello there")
        await probe.send({"type": "response.create"})
        done = await probe.wait_for("response.done")
        assert done["response"]["status"] == "completed"
        text = await probe.wait_for("response.output_text.done")
        assert text["text"] == "You said: hello there"
        await probe.wait_for("rate_limits.updated")
        session = session_of(emulator, probe)
        assert [item["role"] for item in session.conversation] == ["user", "assistant"]
        async with http.get(
            f"{emulator.root_url}/_emulator/calls/{session.call_id}", headers=emulator.auth()
        ) as response:
            assert response.status == 200
            snapshot = await response.json()
        assert snapshot["media"] == "websocket"
        assert snapshot["session"]["model"] == MODEL
        assert {r["source"] for r in snapshot["received"]} == {"websocket"}
        # Errors go to the sender, as on a sideband.
        await probe.send(
            {"type": "conversation.item.retrieve", "item_id": "nope", "event_id": "e1"}
        )
        error = await probe.wait_for("error")
        assert error["error"]["code"] == "item_not_found"
        assert error["error"]["event_id"] == "e1"
    finally:
        await probe.close()


async def test_closing_the_socket_ends_the_session_and_ending_it_closes_the_socket(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    """A client close ends the session (reason client_closed); the admin end closes the
    socket with its close code; a sideband cannot attach to a session."""
    first = await open_session(http, emulator)
    await first.wait_for("session.created")
    session = session_of(emulator, first)
    async with asyncio.timeout(5):
        response = await http.get(
            emulator.ws_url, params={"call_id": session.call_id}, headers=emulator.auth()
        )
        assert response.status == 404
        hangup = await http.post(
            f"{emulator.base_url}/realtime/calls/{session.call_id}/hangup", headers=emulator.auth()
        )
        assert hangup.status == 404
        assert not session.ended
    await first.close()
    async with asyncio.timeout(5):
        await session.wait_ended()
    assert session.end_reason == "client_closed"

    second = await open_session(http, emulator)
    await second.wait_for("session.created")
    other = session_of(emulator, second)
    async with http.post(
        f"{emulator.root_url}/_emulator/calls/{other.call_id}/end",
        json={"reason": "max_duration", "close_code": 1001},
        headers=emulator.auth(),
    ) as response:
        assert response.status == 200
    closed = await second.wait_closed()
    assert closed.type is aiohttp.WSMsgType.CLOSE
    assert closed.data == 1001
    assert other.end_reason == "max_duration"


async def test_session_handshake_needs_a_key_and_accepts_a_client_secret(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    """A bad key is 401 before the upgrade; a client secret opens a session with the
    secret's config."""
    async with asyncio.timeout(5):
        response = await http.get(
            emulator.ws_url, params={"model": MODEL}, headers={"Authorization": "Bearer sk-bad"}
        )
        assert response.status == 401
        async with http.post(
            f"{emulator.base_url}/realtime/client_secrets",
            json={"session": {"type": "realtime", "model": "gpt-realtime", "instructions": "Be"}},
            headers=emulator.auth(),
        ) as minted:
            secret = (await minted.json())["value"]
        ws = await http.ws_connect(
            emulator.ws_url,
            params={"model": MODEL},
            headers={"Authorization": f"Bearer {secret}"},
        )
    probe = SidebandProbe(ws)
    try:
        created = await probe.wait_for("session.created")
        assert created["session"]["instructions"] == "Be"
        assert created["session"]["model"] == "gpt-realtime"
    finally:
        await probe.close()


async def test_a_function_call_round_trip_over_a_session(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    """The scripted model calls a tool the user names; the output goes back and the next
    response quotes it."""
    probe = await open_session(http, emulator)
    try:
        await probe.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "output_modalities": ["text"],
                    "tools": [LOOKUP_ORDER],
                },
            }
        )
        await probe.wait_for("session.updated")
        await say(probe, "please lookup_order 42")
        await probe.send({"type": "response.create"})
        arguments = await probe.wait_for("response.function_call_arguments.done")
        assert arguments["name"] == "lookup_order"
        assert arguments["arguments"] == '{"order_id":"42"}'
        await probe.wait_for("response.done")
        await probe.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "function_call_output",
                    "call_id": arguments["call_id"],
                    "output": '{"status":"shipped"}',
                },
            }
        )
        await probe.send({"type": "response.create"})
        quoted = await probe.wait_for("response.output_text.done")
        assert quoted["text"] == 'lookup_order returned: {"status":"shipped"}'
    finally:
        await probe.close()


async def test_appended_speech_gets_a_spoken_answer_as_audio_deltas(
    http: aiohttp.ClientSession,
) -> None:
    """Default session (server VAD, audio out): appended speech then silence is a turn; the
    response carries its audio as output_audio.delta (PCM16 24 kHz, ~100 ms chunks) before
    output_audio.done, with the transcript beside it, and no output_audio_buffer events."""
    emulator = await start_emulator(EmulatorSettings(api_key=PROVIDER_KEY, speech="tone"))
    probe = await open_session(http, emulator)
    try:
        await probe.wait_for("session.created")
        await probe.send(
            {
                "type": "input_audio_buffer.append",
                "audio": pcm24k(silence(0.3), speech_like_signal(0.8), silence(0.8)),
            }
        )
        committed = await probe.wait_for("input_audio_buffer.committed")
        done = await probe.wait_for("response.done", timeout=10)
        response_id = done["response"]["id"]
        assert done["response"]["status"] == "completed"
        assert done["response"]["conversation_id"] is not None
        transcript = await probe.wait_for("response.output_audio_transcript.done")
        assert transcript["transcript"] == "I heard you."
        types = [e["type"] for e in probe.events]
        assert types.index("response.output_audio.done") < types.index(
            "response.output_audio_transcript.done"
        )
        assert types.index("response.output_audio.delta") < types.index(
            "response.output_audio.done"
        )
        assert not [t for t in types if t.startswith("output_audio_buffer.")]
        deltas = [
            e
            for e in of_type(probe.events, "response.output_audio.delta")
            if e["response_id"] == response_id
        ]
        assert all(len(base64.b64decode(e["delta"])) <= 4800 for e in deltas)
        audio = decoded_audio(probe.events, response_id)
        assert 0.3 < audio.size / 24000 < 5  # "I heard you." as tones
        assert rms_dbfs(audio) > -30
        [item] = [i for i in done["response"]["output"] if i["type"] == "message"]
        assert item["content"][0]["transcript"] == "I heard you."
        session = session_of(emulator, probe)
        assert session.conversation[0]["id"] == committed["item_id"]
    finally:
        await probe.close()
        await emulator.close()
    assert_conformant(emulator)


async def test_committed_audio_without_vad_and_a_g711_output(
    http: aiohttp.ClientSession,
) -> None:
    """Turn detection off: append, commit and response.create; μ-law output is 8 kHz bytes."""
    emulator = await start_emulator(EmulatorSettings(api_key=PROVIDER_KEY, speech="tone"))
    probe = await open_session(http, emulator)
    try:
        await probe.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "audio": {
                        "input": {"turn_detection": None},
                        "output": {"format": {"type": "audio/pcmu"}},
                    },
                },
            }
        )
        await probe.wait_for("session.updated")
        await probe.send(
            {"type": "input_audio_buffer.append", "audio": pcm24k(speech_like_signal(0.5))}
        )
        await probe.send({"type": "input_audio_buffer.commit"})
        await probe.wait_for("input_audio_buffer.committed")
        await probe.send({"type": "response.create"})
        done = await probe.wait_for("response.done", timeout=10)
        chunks = [
            base64.b64decode(e["delta"])
            for e in of_type(probe.events, "response.output_audio.delta")
            if e["response_id"] == done["response"]["id"]
        ]
        assert chunks and all(len(c) <= 800 for c in chunks)
        assert 0.3 < sum(len(c) for c in chunks) / 8000 < 5
    finally:
        await probe.close()
        await emulator.close()
    assert_conformant(emulator)


# ---- the official SDK, unchanged ---------------------------------------------------------


@pytest.fixture
async def client(emulator: RunningEmulator) -> Any:
    async with AsyncOpenAI(api_key=PROVIDER_KEY, base_url=emulator.base_url, max_retries=0) as sdk:
        yield sdk


async def recv_until(conn: AsyncRealtimeConnection, type_: str) -> list[dict[str, Any]]:
    """Read raw events (strictly validated) until one of ``type_``; return them all."""
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        while True:
            event = json.loads(await conn.recv_bytes())
            validate_server_event(event)
            events.append(event)
            if event["type"] == type_:
                return events


async def test_the_sdk_connects_by_model_and_runs_text_tool_and_audio_turns(
    emulator: RunningEmulator, client: AsyncOpenAI
) -> None:
    """realtime.connect(model=…) opens a session: session.created first; a text turn, a
    tool round trip, and appended audio committed into a spoken answer (audio deltas)."""
    async with asyncio.timeout(5):
        conn = await client.realtime.connect(model=MODEL).enter()
    try:
        [created] = await recv_until(conn, "session.created")
        assert created["session"]["model"] == MODEL
        await conn.session.update(
            session={
                "type": "realtime",
                "output_modalities": ["text"],
                "tools": [LOOKUP_ORDER],
                "audio": {"input": {"turn_detection": None}},
            }
        )
        await recv_until(conn, "session.updated")
        await conn.conversation.item.create(
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "hi"}],
            }
        )
        await conn.response.create()
        events = await recv_until(conn, "response.done")
        assert [e["text"] for e in events if e["type"] == "response.output_text.done"] == [
            "You said: hi"
        ]

        await conn.conversation.item.create(
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "lookup_order 7"}],
            }
        )
        await conn.response.create()
        done = (await recv_until(conn, "response.done"))[-1]
        [call] = done["response"]["output"]
        assert call["name"] == "lookup_order"
        await conn.conversation.item.create(
            item={"type": "function_call_output", "call_id": call["call_id"], "output": '{"ok":1}'}
        )
        await conn.response.create()
        events = await recv_until(conn, "response.done")
        assert [e["text"] for e in events if e["type"] == "response.output_text.done"] == [
            'lookup_order returned: {"ok":1}'
        ]

        await conn.input_audio_buffer.append(audio=pcm24k(speech_like_signal(0.5)))
        await conn.input_audio_buffer.commit()
        await recv_until(conn, "input_audio_buffer.committed")
        await conn.response.create(response={"output_modalities": ["audio"]})
        events = await recv_until(conn, "response.done")
        types = [e["type"] for e in events]
        assert "response.output_audio.delta" in types
        assert "response.output_audio.done" in types
        transcript = [e for e in events if e["type"] == "response.output_audio_transcript.done"]
        assert transcript[0]["transcript"] == "I heard you."
    finally:
        await conn.close()


# ---- the broker's provider side: Provider.session_target ---------------------------------


async def test_the_providers_session_target_dials_a_session(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    """OpenAICompatibleProvider.session_target: ``ws…/realtime?model=…`` with the sideband's
    auth opens a session; Azure and a provider without websocket_sessions refuse with a
    ProviderError-family error naming the capability."""
    provider = OpenAICompatibleProvider(emulator.base_url, PROVIDER_KEY, http)
    target = provider.session_target("gpt-realtime model")
    assert target.url.scheme == "ws"
    assert target.url.path == "/v1/realtime"
    assert dict(target.url.query) == {"model": "gpt-realtime model"}
    async with asyncio.timeout(5):
        ws = await http.ws_connect(target.url, headers=await target.dial_headers())
    probe = SidebandProbe(ws)
    try:
        created = await probe.wait_for("session.created")
        assert created["session"]["model"] == "gpt-realtime model"
    finally:
        await probe.close()
    secure = OpenAICompatibleProvider("https://api.example/v1/", "sk-x", http)
    assert str(secure.session_target("m").url) == "wss://api.example/v1/realtime?model=m"

    lacking = OpenAICompatibleProvider(
        emulator.base_url,
        PROVIDER_KEY,
        http,
        capabilities=dataclasses.replace(OPENAI_CAPABILITIES, websocket_sessions=False),
    )
    azure = AzureOpenAIProvider("https://x.openai.azure.com/openai/v1", ApiKeyCredential("k"), http)
    for refusing in (lacking, azure):
        with pytest.raises(ProviderError) as info:
            refusing.session_target("gpt-realtime")
        assert isinstance(info.value, ProviderCapabilityError)
        assert info.value.capability == "websocket_sessions"
        assert "websocket_sessions" in str(info.value)


async def test_an_out_of_band_acknowledgement_in_a_session_speaks_as_audio_deltas(
    http: aiohttp.ClientSession,
) -> None:
    """Out of band in a WebSocket session: the acknowledgement's audio and transcript stream
    as events, with a null conversation id, and the conversation stays as it was."""
    emulator = await start_emulator(EmulatorSettings(api_key=PROVIDER_KEY, speech="tone"))
    probe = await open_session(http, emulator)
    try:
        await probe.wait_for("session.created")
        await say(probe, "hello")
        await probe.wait_for("conversation.item.done")
        await probe.send(
            {
                "type": "response.create",
                "response": {
                    "conversation": "none",
                    "instructions": "Say you are on it.",
                    "metadata": {"broker": "ack"},
                },
            }
        )
        done = await probe.wait_for("response.done", timeout=10)
        assert done["response"]["conversation_id"] is None
        assert done["response"]["metadata"] == {"broker": "ack"}
        transcript = await probe.wait_for("response.output_audio_transcript.done")
        assert transcript["transcript"] == ACK_TEXT
        assert decoded_audio(probe.events, done["response"]["id"]).size > 0
        session = session_of(emulator, probe)
        assert [item["role"] for item in session.conversation] == ["user"]
    finally:
        await probe.close()
        await emulator.close()
    assert_conformant(emulator)
