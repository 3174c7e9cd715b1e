"""The trusted relay's own rules: what a backend may not send, a slow backend, audio metering."""

from __future__ import annotations

import asyncio
import base64
from typing import Any, cast

import pytest
from aiohttp import web

from broker.call.trusted_relay import TrustedRelay, _audio_bytes, broker_owned
from broker.metrics import BrokerMetrics
from broker.tools.codes import ToolErrorCode
from broker.tools.executors import ToolExecutionError


class _Socket:
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send_str(self, text: str) -> None:
        self.sent.append(text)


def _relay(queue_size: int = 4) -> tuple[TrustedRelay, BrokerMetrics]:
    metrics = BrokerMetrics()
    ws = cast(web.WebSocketResponse, _Socket())
    return TrustedRelay("sess_x", ws, metrics.trusted, queue_size=queue_size), metrics


@pytest.mark.parametrize(
    "event",
    [
        {"type": "session.update", "session": {"instructions": "obey"}},
        {"type": "session.update", "session": {"tools": []}},
        {"type": "session.update", "session": {"tool_choice": "none"}},
        {"type": "session.update", "session": {"model": "gpt-realtime-large"}},
        {"type": "response.create", "response": {"instructions": "say yes"}},
        {"type": "response.create", "response": {"tools": [{"type": "function", "name": "x"}]}},
        {"type": "conversation.item.create", "item": {"type": "function_call_output"}},
        {"type": "conversation.item.create", "item": {"type": "function_call", "name": "x"}},
    ],
)
def test_what_the_broker_owns_is_refused(event: dict[str, Any]) -> None:
    assert broker_owned(event) is not None


@pytest.mark.parametrize(
    "event",
    [
        {"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}},
        {"type": "response.create"},
        {"type": "response.create", "response": {"conversation": "none", "metadata": {}}},
        {"type": "conversation.item.create", "item": {"type": "message", "role": "user"}},
        {"type": "input_audio_buffer.append", "audio": "AAAA"},
    ],
)
def test_the_rest_goes_through(event: dict[str, Any]) -> None:
    assert broker_owned(event) is None


def test_audio_is_counted_as_the_pcm_it_carries() -> None:
    pcm = bytes(range(250)) * 4  # 1000 bytes: base64 with padding
    data = base64.b64encode(pcm).decode()
    assert _audio_bytes({"type": "input_audio_buffer.append", "audio": data}) == 1000
    assert _audio_bytes({"type": "response.output_audio.delta", "delta": data}) == 1000
    assert _audio_bytes({"type": "response.output_audio_transcript.delta", "delta": "hi"}) == 0


async def test_a_backend_too_far_behind_is_dropped_and_its_tool_calls_fail() -> None:
    relay, metrics = _relay(queue_size=2)
    waiting = asyncio.ensure_future(relay.call_tool("call_1", "check_stock", "{}"))
    await asyncio.sleep(0)  # the call is queued (1 of 2)
    relay.forward({"type": "response.created"})
    assert not relay.gone.is_set()
    relay.forward({"type": "response.done"})  # a third event: over the bound
    assert relay.too_slow and relay.gone.is_set()
    with pytest.raises(ToolExecutionError) as failed:
        await waiting
    assert failed.value.code is ToolErrorCode.TOOL_UNREACHABLE
    with pytest.raises(ToolExecutionError):
        await relay.call_tool("call_2", "check_stock", "{}")
    frames = metrics.registry.get_sample_value(
        "broker_trusted_relay_frames_total", {"direction": "to_backend"}
    )
    assert frames == 2
