"""The pieces the benchmarks stand on: the emulator's bench route, the probe, the summaries."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from bench.browser import make_offer
from bench.probe import SIDEBAND_ONLY_OFFER, DispatchProbe
from bench.profiling import package_of, records_from_pyspy, summarize
from bench.stack import (
    NOOP_TOOL,
    PROVIDER_KEY,
    Emulator,
    provider_session_config,
    start_emulator,
)
from bench.stats import percentile, summarize_ms
from emulator import Call
from emulator.admin import SidebandOnlyCall

AUTH = {"Authorization": f"Bearer {PROVIDER_KEY}"}


@pytest.fixture
async def bench_emulator() -> AsyncIterator[Emulator]:
    running = await start_emulator()
    yield running
    await running.close()


async def _create_call(
    http: aiohttp.ClientSession, emulator: Emulator, sdp: str, key: str = PROVIDER_KEY
) -> aiohttp.ClientResponse:
    form = aiohttp.FormData()
    form.add_field("sdp", sdp, content_type="application/sdp")
    form.add_field(
        "session",
        json.dumps(provider_session_config("bench test")),
        content_type="application/json",
    )
    async with asyncio.timeout(10):
        resp = await http.post(
            f"{emulator.bench_base_url}/realtime/calls",
            data=form,
            headers={"Authorization": f"Bearer {key}"},
        )
        await resp.read()
    return resp


async def test_sideband_only_call_runs_a_tool_round_over_its_sideband(
    bench_emulator: Emulator,
) -> None:
    """A sideband-only call has no peer but a full sideband: the probe times one tool round."""
    async with aiohttp.ClientSession() as http:
        resp = await _create_call(http, bench_emulator, SIDEBAND_ONLY_OFFER)
        assert resp.status == 201
        assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"  # as /v1 answers
        call_id = resp.headers["Location"].rsplit("/", 1)[-1]
        call = bench_emulator.registry.get(call_id)
        assert isinstance(call, SidebandOnlyCall)
        assert call.sent.maxlen is not None and call.sent.maxlen < 1000
        probe = DispatchProbe(call)
        sideband_url = f"{bench_emulator.bench_base_url}/realtime?call_id={call_id}"
        async with asyncio.timeout(10), http.ws_connect(sideband_url, headers=AUTH) as ws:

            async def answer_the_call() -> None:
                # What the broker does: the output for the call, then a response.create.
                while True:
                    event = json.loads((await ws.receive()).data)
                    if event["type"] == "response.function_call_arguments.done":
                        assert event["name"] == NOOP_TOOL
                        output = {"type": "function_call_output", "call_id": event["call_id"]}
                        await ws.send_json(
                            {"type": "conversation.item.create", "item": {**output, "output": "{}"}}
                        )
                        await ws.send_json({"type": "response.create"})
                        return

            answering = asyncio.create_task(answer_the_call())
            sample = await probe.round(timeout=10)
            await answering
        assert sample is not None and sample > 0
        assert len(probe.function_calls) == 1
        async with asyncio.timeout(10):
            hangup = await http.post(
                f"{bench_emulator.bench_base_url}/realtime/calls/{call_id}/hangup", headers=AUTH
            )
        assert hangup.status == 200
        assert call.ended and call.end_reason == "hangup"


async def test_bench_route_gives_other_offers_a_webrtc_call(bench_emulator: Emulator) -> None:
    """Only the marked offer is peerless: a browser's offer gets the normal aiortc call."""
    offer = await make_offer()
    async with aiohttp.ClientSession() as http:
        resp = await _create_call(http, bench_emulator, offer)
        assert resp.status == 201
        call = bench_emulator.registry.get(resp.headers["Location"].rsplit("/", 1)[-1])
        assert call is not None and type(call) is Call
        async with asyncio.timeout(10):
            await call.end("hangup")


async def test_bench_route_refuses_what_v1_refuses(bench_emulator: Emulator) -> None:
    async with aiohttp.ClientSession() as http:
        assert (
            await _create_call(http, bench_emulator, SIDEBAND_ONLY_OFFER, "wrong")
        ).status == 401
        bad = await _create_call(http, bench_emulator, "v=0\r\nnot an offer\r\n")
        assert bad.status == 400
        async with asyncio.timeout(10):
            other = await http.post(
                f"{bench_emulator.bench_base_url}/realtime/calls",
                data="{}",
                headers={**AUTH, "Content-Type": "application/json"},
            )
        assert other.status == 415
    assert not bench_emulator.registry.calls


def test_percentiles_interpolate() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0
    summary = summarize_ms([0.001, 0.002, 0.003])
    assert summary["count"] == 3 and summary["p50"] == 2.0 and summary["max"] == 3.0
    assert summarize_ms([])["p50"] is None


def test_profile_summary_leaves_idle_out_and_charges_c_calls_to_their_caller() -> None:
    loop = ("_run_once", "/usr/lib/python3.11/asyncio/base_events.py")
    records = [
        ([loop, ("select", "/usr/lib/python3.11/selectors.py"), ("epoll.poll", "<built-in>")], 6.0),
        (
            [
                ("main", "/repo/broker/cli.py"),
                loop,
                ("flush", "/repo/broker/record/event_log.py"),
                ("execute", "/venv/lib/python3.11/site-packages/sqlalchemy/orm/session.py"),
            ],
            3.0,
        ),
        (
            [loop, ("_execute", "/venv/site-packages/aiosqlite/core.py"), ("put", "<built-in>")],
            1.0,
        ),
    ]
    summary = summarize(records)
    assert summary.busy_share == pytest.approx(40.0)
    assert dict(summary.packages) == pytest.approx({"sqlalchemy": 75.0, "aiosqlite": 25.0})
    inclusive = dict(summary.app_inclusive)
    assert inclusive == pytest.approx({"flush (broker/record/event_log.py)": 75.0})  # not cli.main
    assert package_of("/x/lib/python3.11/json/decoder.py") == "json (stdlib)"


def test_pyspy_raw_lines_become_records(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_text(
        "thread (0x1): MainThread;_run_once (asyncio/base_events.py:1922);"
        "flush (broker/record/event_log.py:123) 7\n"
        "garbage without a count\n"
    )
    [(stack, weight)] = records_from_pyspy(raw)
    assert weight == 7
    assert stack[-1] == ("flush", "broker/record/event_log.py")
