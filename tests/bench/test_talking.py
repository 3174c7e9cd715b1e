"""The talking-calls benchmark (issue 16): its stand-in provider, and a tiny run end to end.

The stand-in's tests run it in this process on a loopback port and speak to it as a
sideband client would. The end-to-end tests run ``bench.talking`` at the smoke preset into a
temporary directory: they check that the books balance (every function call got exactly one
output, from the broker and from the minimal watcher), that events were counted and the
broker saw no tampering, that the overload phase found the brake graceful (refusals 503
with Retry-After, no 500, nothing lost, recovery), and that the report renders; never how
fast anything was.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bench import talking, talking_overload
from bench.context import BenchContext
from bench.probe import SIDEBAND_ONLY_OFFER
from bench.stack import NOOP_TOOL, PROVIDER_KEY, provider_session_config
from bench.standin import Profile, Standin, create_app
from bench.standin_wire import DEFAULT_KEY
from tests.conftest import skip_or_fail

pytestmark = pytest.mark.timeout(180)

AUTH = {"Authorization": f"Bearer {PROVIDER_KEY}"}
# Fast enough to see a whole turn within a test, every turn a function call.
FAST = Profile(period_s=0.2, delta_interval_s=0.01, speech_s=0.01, function_every=1)


class RunningStandin:
    def __init__(self, standin: Standin, runner: web.AppRunner) -> None:
        self.standin = standin
        self.runner = runner
        self.base = f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.fixture
async def running() -> AsyncIterator[RunningStandin]:
    standin = Standin(PROVIDER_KEY, FAST, session_created_on_attach=False)
    runner = web.AppRunner(create_app(standin))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield RunningStandin(standin, runner)
    await runner.cleanup()


async def _offer(http: aiohttp.ClientSession, base: str, key: str = PROVIDER_KEY) -> Any:
    form = aiohttp.FormData()
    form.add_field("sdp", SIDEBAND_ONLY_OFFER, content_type="application/sdp")
    form.add_field(
        "session",
        json.dumps(provider_session_config("talking test")),
        content_type="application/json",
    )
    async with asyncio.timeout(10):
        resp = await http.post(
            f"{base}/v1/realtime/calls", data=form, headers={"Authorization": f"Bearer {key}"}
        )
        await resp.read()
    return resp


async def _next(
    ws: aiohttp.ClientWebSocketResponse, kind: str, call_id: str | None = None
) -> dict[str, Any]:
    """The next event of type ``kind`` (of an item with ``call_id``); others are skipped."""
    async with asyncio.timeout(10):
        while True:
            msg = await ws.receive()
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            event: dict[str, Any] = json.loads(msg.data)
            if event["type"] == kind and (
                call_id is None or event.get("item", {}).get("call_id") == call_id
            ):
                return event


async def test_an_offer_makes_a_call_whose_sideband_answers_a_probe_with_the_full_session(
    running: RunningStandin,
) -> None:
    async with aiohttp.ClientSession() as http:
        resp = await _offer(http, running.base)
        assert resp.status == 201
        assert "a=setup:active" in await resp.text()
        call_id = resp.headers["Location"].rsplit("/", 1)[-1]
        assert call_id.startswith("rtc_u2_")
        url = f"{running.base}/v1/realtime?call_id={call_id}"
        async with http.ws_connect(url, headers=AUTH) as ws:
            await ws.send_json(
                {"type": "session.update", "event_id": "evt_1", "session": {"type": "realtime"}}
            )
            updated = await _next(ws, "session.updated")
            session = updated["session"]
            assert session["instructions"] == "talking test"
            assert [t["name"] for t in session["tools"]] == [NOOP_TOOL]
            # The provider's defaults are filled in and merged with what was posted.
            assert session["audio"]["input"]["turn_detection"]["create_response"] is True
            assert session["audio"]["output"]["voice"] == "marin"
            await ws.send_json(
                {
                    "type": "session.update",
                    "event_id": "evt_2",
                    "session": {"type": "realtime", "instructions": "changed"},
                }
            )
            assert (await _next(ws, "session.updated"))["session"]["instructions"] == "changed"
            async with asyncio.timeout(10):
                hangup = await http.post(
                    f"{running.base}/v1/realtime/calls/{call_id}/hangup", headers=AUTH
                )
            assert hangup.status == 200
            async with asyncio.timeout(10):
                while (await ws.receive()).type != aiohttp.WSMsgType.CLOSE:
                    pass
    assert running.standin.stats.probes == 1
    assert running.standin.stats.session_updates == 1


def test_the_standin_key_is_the_benchmarks_provider_key() -> None:
    # Written out twice (the stand-in must not import the emulator): they must not drift.
    assert DEFAULT_KEY == PROVIDER_KEY


async def test_unknown_calls_and_bad_keys_are_refused(running: RunningStandin) -> None:
    async with aiohttp.ClientSession() as http:
        assert (await _offer(http, running.base, key="wrong")).status == 401
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{running.base}/v1/realtime?call_id=rtc_nope", headers=AUTH)
        assert refused.value.status == 404
    assert not running.standin.calls


async def test_a_function_call_round_is_timed_and_answered_once(running: RunningStandin) -> None:
    """Talking: the model calls the tool; the output is timed; the answer is spoken."""
    async with aiohttp.ClientSession() as http:
        [call_id] = running.standin.create_calls(1, provider_session_config("round"))
        url = f"{running.base}/v1/realtime?call_id={call_id}"
        async with http.ws_connect(url, headers=AUTH) as ws:
            done = await _next(ws, "response.done")
            [call] = done["response"]["output"]
            assert call["type"] == "function_call" and call["name"] == NOOP_TOOL
            assert done["response"]["usage"]["total_tokens"] > 0
            output = {"type": "function_call_output", "call_id": call["call_id"], "output": "{}"}
            await ws.send_json({"type": "conversation.item.create", "item": output})
            echo = await _next(ws, "conversation.item.added", call["call_id"])
            assert echo["item"]["id"]
            await ws.send_json({"type": "response.create", "event_id": "evt_create"})
            created_event = await _next(ws, "response.created")
            await ws.send_json({"type": "response.create", "event_id": "evt_again"})
            refused = await _next(ws, "error")
            assert refused["error"]["event_id"] == "evt_again"
            assert refused["error"]["code"] == "conversation_already_has_active_response"
            spoken = await _next(ws, "response.done")
            assert spoken["response"]["id"] == created_event["response"]["id"]
            assert spoken["response"]["output"][0]["content"][0]["transcript"]
            await ws.send_json(
                {
                    "type": "conversation.item.retrieve",
                    "event_id": "evt_r",
                    "item_id": echo["item"]["id"],
                }
            )
            retrieved = await _next(ws, "conversation.item.retrieved")
            assert retrieved["item"]["call_id"] == call["call_id"]
            await ws.send_json(
                {"type": "conversation.item.retrieve", "event_id": "evt_m", "item_id": "item_x"}
            )
            assert (await _next(ws, "error"))["error"]["event_id"] == "evt_m"
            # A second output for the same call is counted as such (the broker must never).
            await ws.send_json({"type": "conversation.item.create", "item": output})
            await _next(ws, "conversation.item.added", call["call_id"])
    stats = running.standin.stats
    assert stats.outputs == 1 and stats.outputs_repeated == 1
    assert len(stats.dispatch_s) == 1 and stats.dispatch_s[0] > 0
    assert stats.events_sent > 40


# ---- end to end ---------------------------------------------------------------------------


def _check_books(books: dict[str, Any]) -> None:
    """Every function call issued got exactly one output, and some were issued."""
    assert books["function_calls"] > 0
    assert books["outputs"] == books["function_calls"]
    assert books["outputs_repeated"] == 0 and books["outputs_unknown"] == 0
    assert books["outstanding"] == 0 and books["exact"] is True


def _check_step(step: dict[str, Any]) -> None:
    assert step["events_sent"] > 0 and step["events_per_s"] > 0
    assert step["cpu_us_per_event"] > 0
    assert step["turns"] > 0
    dispatch = step["dispatch_ms"]
    assert dispatch["count"] == step["outputs"]
    if dispatch["count"]:
        assert 0 < dispatch["p50"] <= dispatch["p99"] <= dispatch["max"]


def test_broker_on_sqlite_answers_every_function_call_once(smoke_run: Path) -> None:
    payload = json.loads((smoke_run / "results" / "talking.json").read_text())
    assert payload["preset"] == "smoke"
    broker = payload["results"]["brokers"]["sqlite"]
    assert [s["calls"] for s in broker["steps"]] == [3, 6]
    assert broker["stopped_by"] is None
    for step in broker["steps"]:
        assert step["setup_errors"] == 0, step["setup_error_samples"]
        _check_step(step)
        # Every answer to a function call was preceded by a config probe.
        assert step["probes"] >= step["outputs"]
        assert step["rss_kib_per_call"] is not None
        metrics = step["broker_metrics"]
        assert metrics.get("broker_tamper_events_total", 0) == 0
        assert metrics.get("broker_sideband_failures_total", 0) == 0
    _check_books(broker["books"])


def test_minimal_watcher_answers_every_function_call_once(smoke_run: Path) -> None:
    results = json.loads((smoke_run / "results" / "talking.json").read_text())["results"]
    watcher = results["watcher"]
    assert [s["calls"] for s in watcher["steps"]] == [3, 6]
    for step in watcher["steps"]:
        _check_step(step)
        assert step["probes"] == 0  # it never probes the session
    _check_books(watcher["books"])
    assert watcher["watcher_counts"]["outputs"] == watcher["books"]["outputs"]


def _check_overload(overload: dict[str, Any]) -> None:
    """The overload phase at a tiny ceiling: refused properly, nothing lost, recovered."""
    assert overload["problems"] == [] and overload["ok"] is True
    assert 3 <= overload["ceiling"] <= 4
    assert overload["reached"] and overload["grow"]["opened"] == overload["ceiling"]
    press = overload["press"]
    assert press["sessions_tried"] >= 4 and press["offers_tried"] >= 4
    assert press["not_refused_properly"] == 0
    # Every new session, offer and readiness probe at the ceiling: 503 with Retry-After.
    tried = press["sessions_tried"] + press["offers_tried"] + press["readyz_polled"]
    assert press["refused_properly"] == tried
    assert overload["replies"]["press"]["readyz"] == {"503 overloaded live_calls": 4}
    assert overload["retry_after_seen"] == ["5"]
    assert overload["status_500"] == 0
    recovery = overload["recovery"]
    assert recovery["ready_after_s"] is not None
    assert recovery["reopened"] == recovery["attached"] == recovery["expected"] >= 2
    assert overload["ceiling_holds_again"] is True
    for books in (overload["books_at_ceiling"], overload["books"]):
        _check_books(books)
        assert books["unanswered_at_end"] == 0
    usage = overload["usage"]
    assert usage["responses_sent"] > 0 and usage["exact"] is True
    assert usage["broker_responses_total"] == usage["stored_responses"] == usage["responses_sent"]
    recorded = overload["tool_calls_recorded"]
    assert recorded["recorded"] == recorded["succeeded"] == overload["books"]["function_calls"]
    assert overload["metrics"]["sideband_failures"] == 0
    assert overload["metrics"]["sessions_degraded"] == 0
    assert overload["metrics"]["refusals"]['reason="live_calls"'] >= press["sessions_tried"]
    assert set(overload["sessions"]["states"]) <= {"live", "ended", "created"}
    assert overload["log_problems"] == {"errors": 0, "flagged": 0, "samples": []}


def test_broker_on_sqlite_refuses_calls_over_its_ceiling_and_loses_nothing(
    smoke_run: Path,
) -> None:
    payload = json.loads((smoke_run / "results" / "talking.json").read_text())
    _check_overload(payload["results"]["brokers"]["sqlite"]["overload"])


def test_the_overload_ceiling_is_the_knee_else_an_unsaturated_step_else_the_first() -> None:
    def step(calls: int, saturated: bool) -> dict[str, Any]:
        return {"calls": calls, "saturated": saturated}

    steps = [step(100, False), step(300, False), step(1000, True)]
    assert talking_overload.overload_ceiling(steps, 100, None) == (100, "the knee")
    assert talking_overload.overload_ceiling(steps, None, None) == (
        300,
        "the largest unsaturated step",
    )
    saturated = [step(100, True), step(300, True)]
    assert talking_overload.overload_ceiling(saturated, None, None) == (100, "the first step")
    ceiling, source = talking_overload.overload_ceiling(steps, 100, 4) or (0, "")
    assert ceiling == 4 and "capped" in source
    assert talking_overload.overload_ceiling([step(0, True)], None, None) is None
    assert talking_overload.overload_ceiling([], None, None) is None


def test_only_a_503_overloaded_for_live_calls_with_retry_after_is_the_ceilings_refusal() -> None:
    Reply = talking_overload.Reply
    assert Reply(503, "overloaded", "live_calls", "5").refused_at_ceiling()
    assert not Reply(503, "overloaded", "live_calls", None).refused_at_ceiling()
    assert not Reply(503, "overloaded", "loop_lag", "5").refused_at_ceiling()
    assert not Reply(503, "draining", None, "5").refused_at_ceiling()
    assert not Reply(500, "internal_error").refused_at_ceiling()
    assert not Reply(201).refused_at_ceiling()
    assert Reply(503, "overloaded", "live_calls", "5").label == "503 overloaded live_calls"


def test_labelled_metrics_are_read_by_their_labels() -> None:
    text = "\n".join(
        [
            "# TYPE broker_overload_refusals_total counter",
            'broker_overload_refusals_total{reason="live_calls"} 9.0',
            'broker_overload_refusals_total{reason="loop_lag"} 2.0',
            "broker_overloaded 1.0",
            "broker_overloaded_other 5.0",
        ]
    )
    by_label = talking_overload.metric_by_label(text, "broker_overload_refusals_total")
    assert by_label == {'reason="live_calls"': 9.0, 'reason="loop_lag"': 2.0}
    assert talking_overload.metric_total(text, "broker_overloaded") == 1.0
    assert talking_overload.metric_total(None, "broker_overloaded") == 0.0


def test_report_renders_the_talking_table(smoke_run: Path) -> None:
    text = (smoke_run / "RESULTS.md").read_text()
    section = text[text.index("## 5. Talking calls") :]
    assert "| broker, SQLite | 3 |" in section and "| broker, SQLite | 6 |" in section
    assert "| minimal watcher | 6 |" in section
    assert "**The knee**" in section
    assert "each exactly once" in section and "not** each exactly once" not in section
    assert "talking calls: broker CPU per event" in text  # the target row
    overload = section[section.index("**Overload at the ceiling**") :]
    assert ("| SQLite | 4 (" in overload or "| SQLite | 3 (" in overload) and "| 0 |" in overload
    assert ": exact |" in overload
    assert "- SQLite: every check held" in overload


@pytest.mark.postgres
async def test_broker_on_postgres_answers_every_function_call_once(tmp_path: Path) -> None:
    """The PostgreSQL phase (skipped without the server; CI fails)."""
    options = replace(talking.PRESETS["smoke"], steps=(3,), databases=("postgres",))
    ctx = BenchContext(
        out_dir=tmp_path / "results",
        work_dir=tmp_path / "work",
        profiles_dir=tmp_path / "profiles",
        preset="smoke",
        command="pytest",
    )
    payload = await talking.run(options, ctx)
    broker = payload["results"]["brokers"]["postgres"]
    if "skipped" in broker:
        skip_or_fail(broker["skipped"])
    [step] = broker["steps"]
    assert step["calls"] == 3 and step["setup_errors"] == 0
    _check_step(step)
    _check_books(broker["books"])
    _check_overload(broker["overload"])
