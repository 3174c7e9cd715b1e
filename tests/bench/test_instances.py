"""The two-instance benchmark (issue 17) at its smoke size, from the shared ``smoke_run``.

One broker, then two sharing a PostgreSQL database, watch the same talking calls; the tests
check that the calls were spread over both and each owned by the instance that took its
offer, that the books balance (every function call answered once and stored once), that the
ratios were computed for every step, and that the report renders; never how fast anything was.
Without the PostgreSQL server the benchmark records a skip, and so do these tests (CI fails).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.instances import ratios, shares
from tests.conftest import skip_or_fail

pytestmark = pytest.mark.timeout(180)


def _results(root: Path) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads((root / "results" / "instances.json").read_text())
    assert payload["benchmark"] == "instances" and payload["preset"] == "smoke"
    results: dict[str, Any] = payload["results"]
    if "skipped" in results:
        skip_or_fail(results["skipped"])
    return results


@pytest.mark.postgres
def test_one_then_two_brokers_answer_every_function_call_once(smoke_run: Path) -> None:
    phases = _results(smoke_run)["phases"]
    assert [p["instances"] for p in phases] == [1, 2]
    for p in phases:
        assert p["problems"] == [], p["problems"]
        assert [s["calls"] for s in p["steps"]] == [3, 6]
        assert p["books"]["exact"] and p["books"]["function_calls"] > 0
        assert p["db_books"]["exact"] and p["db_books"]["issued"] == p["books"]["function_calls"]
        assert p["ownership"]["exact"] and p["ownership"]["calls"] == 6
        assert p["ended"]["live_left"] == 0
        assert p["exit_codes"] == [0] * p["instances"]
        for step in p["steps"]:
            assert step["setup_errors"] == 0, step["setup_error_samples"]
            assert step["events_sent"] > 0 and step["cpu_us_per_event"] > 0
            assert step["db_backends"] > 0
            assert step["outputs_repeated"] == 0


@pytest.mark.postgres
def test_two_brokers_split_the_calls_by_who_took_the_offer(smoke_run: Path) -> None:
    two = _results(smoke_run)["phases"][1]
    assert two["ownership"]["by_instance"] == {"bench-2a": 3, "bench-2b": 3}
    assert two["ownership"]["owned_by_taker"] == 6 and two["ownership"]["moved"] == 0
    last = two["steps"][-1]["per_instance"]
    assert [(q["instance"], q["calls_owned"]) for q in last] == [("bench-2a", 3), ("bench-2b", 3)]
    # Both did the work of their own calls.
    assert all(q["live_sessions"] == 3 and q["cpu_utilization"] > 0 for q in last)


@pytest.mark.postgres
def test_ratios_and_the_watcher_floor_cover_every_step(smoke_run: Path) -> None:
    results = _results(smoke_run)
    assert [x["calls"] for x in results["ratios"]] == [3, 6]
    # 6 calls, 3 each: compared with the one broker's step at 3 calls.
    assert [(x["calls"], x["each_calls"]) for x in results["shares"]] == [(6, 3)]
    assert all(x["events_per_s"] and x["cpu_us_per_event"] for x in results["ratios"])
    watcher = results["watcher"]
    assert [s["calls"] for s in watcher["steps"]] == [3, 6]
    assert watcher["books"]["exact"]


def test_the_ratio_is_the_last_phase_over_the_first_at_the_same_calls() -> None:
    def step(calls: int, cpu: float, p99: float | None) -> dict[str, Any]:
        return {
            "calls": calls,
            "events_per_s": 100.0,
            "cpu_us_per_event": cpu,
            "cpu_utilization": 0.5,
            "dispatch_ms": {"p50": 2.0, "p99": p99},
            "db_cpu_us_per_event": 10.0,
            "rss_kib_per_call": 100.0,
        }

    one = {"steps": [step(100, 100.0, 10.0), step(200, 90.0, 20.0)]}
    two = {"steps": [step(100, 150.0, None), step(400, 80.0, 30.0)]}
    [at_100] = ratios([one, two])
    assert at_100["calls"] == 100 and at_100["cpu_us_per_event"] == 1.5
    assert at_100["dispatch_p99"] is None and at_100["events_per_s"] == 1.0
    assert ratios([one]) == []


def test_each_instance_is_compared_with_one_broker_holding_as_many_calls() -> None:
    def step(calls: int, cpu: float, owned: list[int] | None = None) -> dict[str, Any]:
        per_instance = [{"calls_owned": n, "cpu_utilization": cpu} for n in owned or [calls]]
        return {"calls": calls, "cpu_utilization": cpu, "per_instance": per_instance}

    one = {"steps": [step(100, 0.1), step(200, 0.2)]}
    two = {"steps": [step(200, 0.12, [100, 100]), step(400, 0.2, [200, 200])]}
    assert [(x["calls"], x["each_calls"], x["ratio"]) for x in shares([one, two])] == [
        (200, 100, 1.2),
        (400, 200, 1.0),
    ]
    # An uneven split has no single comparison.
    assert shares([one, {"steps": [step(200, 0.1, [150, 50])]}]) == []


@pytest.mark.postgres
def test_report_renders_the_two_instances_section(smoke_run: Path) -> None:
    _results(smoke_run)
    text = (smoke_run / "RESULTS.md").read_text()
    section = text[text.index("## 6. Two instances") :]
    assert "| one broker | 6 |" in section and "| two brokers | 6 | " in section
    assert "| 3 / 3 |" in section  # the calls each of the two owns
    assert "**Two over one**" in section and "**Split or shared?**" in section
    assert section.count("Every check held") == 2
    assert "not a speed-up" in section
