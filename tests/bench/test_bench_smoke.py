"""The four benchmarks at tiny sizes, so they never rot (``make bench`` runs the real sizes).

One run of ``python -m bench --preset smoke`` (``smoke_run`` in ``conftest.py``, shared with
``test_talking.py``) feeds every test here. Nothing is timed: the tests check that each
benchmark ran its whole course and wrote the fields RESULTS.md is built from, with values
that make sense (counts, order of percentiles), never how fast anything was.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bench import audit_append
from bench.context import BenchContext
from tests.conftest import skip_or_fail

BENCHMARKS = ("offer_overhead", "dispatch_latency", "capacity", "audit_append")

pytestmark = pytest.mark.timeout(180)


def _result(root: Path, name: str) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads((root / "results" / f"{name}.json").read_text())
    assert payload["benchmark"] == name
    assert payload["preset"] == "smoke"
    assert payload["machine"]["cores"] >= 1
    assert payload["duration_s"] >= 0
    return payload


def _sane(summary: dict[str, Any], count: int) -> None:
    """A latency summary of ``count`` samples whose statistics are in order."""
    assert summary["count"] == count
    assert 0 < summary["p50"] <= summary["p90"] <= summary["p99"] <= summary["max"]
    assert summary["mean"] > 0


def test_offer_overhead(smoke_run: Path) -> None:
    results = _result(smoke_run, "offer_overhead")["results"]
    pairs = results["pairs_measured"]
    assert pairs == 3
    assert results["error_count"] == 0, results["errors"]
    for kind in ("webrtc", "sideband_only"):
        _sane(results[kind]["direct_ms"], pairs)
        _sane(results[kind]["broker_ms"], pairs)
        assert results[kind]["paired_added_ms"]["count"] == pairs
        assert results[kind]["ratio"]["p50"] > 0
        assert set(results[kind]["added_ms"]) == {"p50", "p99"}


def test_dispatch_latency(smoke_run: Path) -> None:
    results = _result(smoke_run, "dispatch_latency")["results"]
    steps = results["steps"]
    assert [s["live_sessions"] for s in steps] == [1, 3]
    for step in steps:
        assert step["setup_errors"] == 0, step["setup_error_samples"]
        assert step["timeouts"] == 0
        _sane(step["dispatch_ms"], 5)
        # The broker timed the same calls on its side of the sideband.
        assert step["broker_dispatch_mean_ms"] > 0
        assert step["broker_cpu_ms_per_call"] >= 0
        assert step["broker_rss_mib"] > 0
    bridge = results["bridge"]
    assert bridge["timeouts"] == 0 and bridge["errors"] == []
    _sane(bridge["dispatch_ms"], 3)
    assert results["sideband_over_bridge"]["p50"] > 0
    assert "profile" not in results  # not asked for


def test_capacity(smoke_run: Path) -> None:
    results = _result(smoke_run, "capacity")["results"]
    steps = results["steps"]
    assert [s["live_sessions"] for s in steps] == [3, 6]
    assert results["stopped_by"] is None
    for step in steps:
        assert step["setup_errors"] == 0, step["setup_error_samples"]
        assert step["timeouts"] == 0
        assert step["calls_started"] >= step["live_sessions"]
        assert step["calls_completed"] == step["calls_started"]
        _sane(step["dispatch_ms"], step["calls_completed"])
        assert step["broker_rss_mib"] >= results["broker_rss_baseline_mib"] > 0
        assert step["broker_cpu_ms_per_call"] > 0
        assert isinstance(step["saturated"], bool)


def _chained(chain: dict[str, Any], *, two_chainers: bool) -> None:
    """The smoke run's signed audit workload: every record appended was chained, once."""
    runs = [chain["end_to_end"]]
    if two_chainers:
        runs.append(chain["end_to_end_two_chainers"])
        assert sum(runs[-1]["chained_by_each"]) == 200
    else:
        assert "end_to_end_two_chainers" not in chain
    for run in runs:
        assert run["appended"] == run["chained"] == 200
        # The chain (whole: the run checks seq 1..N, nothing pending) grew by what was appended.
        assert run["chain_length"] - run["chain_start"] == 200
        assert run["chained_per_s"] > 0 and run["appends_per_s"] > 0
    assert chain["chainer_alone"]["records"] == 200
    assert chain["in_memory"]["records"] == 200
    assert chain["sign"]["signatures"] == 500
    floor = chain["sign"]["signatures_per_s"]
    assert 0 < chain["chainer_alone"]["records_per_s"]
    assert chain["ratio_to_sign"]["chainer_alone"] == round(
        chain["chainer_alone"]["records_per_s"] / floor, 3
    )


def test_audit_append_sqlite(smoke_run: Path) -> None:
    results = _result(smoke_run, "audit_append")["results"]
    sqlite = results["sqlite"]
    assert sqlite["event_log_batched"]["events"] == 200
    assert sqlite["event_log_batched"]["events_per_s"] > 0
    _sane(sqlite["event_log_single"]["latency_ms"], 20)
    _sane(sqlite["tool_call_records"]["sequential"]["latency_ms"], 10)
    assert sqlite["tool_call_records"]["concurrent"]["calls"] == 16
    _chained(sqlite["audit_chain"], two_chainers=False)


def test_report(smoke_run: Path) -> None:
    text = (smoke_run / "RESULTS.md").read_text()
    for heading in (
        "## Targets",
        "## 1. Offer overhead",
        "## 2. Tool dispatch latency",
        "## 3. Capacity",
        "## 4. Audit append throughput",
    ):
        assert heading in text
    assert "**Machine**" in text and "**Command**" in text and "**Date**" in text
    assert "**Signed audit trail**" in text and "Ed25519 sign/s" in text
    for target in ("dispatch p50", "dispatch p99", "offer overhead", "live sessions in one"):
        assert target in text
    if importlib.util.find_spec("matplotlib") is not None:
        assert (smoke_run / "dispatch.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "No plot: matplotlib is not installed" in text


@pytest.mark.postgres
async def test_audit_append_postgres(tmp_path: Path) -> None:
    """The PostgreSQL half of the audit benchmark (skipped without the server; CI fails)."""
    options = audit_append.PRESETS["smoke"]
    ctx = BenchContext(
        out_dir=tmp_path / "results",
        work_dir=tmp_path / "work",
        profiles_dir=tmp_path / "profiles",
        preset="smoke",
        command="pytest",
    )
    payload = await audit_append.run(replace(options, db_kinds=("postgres",)), ctx)
    postgres = payload["results"]["postgres"]
    if "skipped" in postgres:
        skip_or_fail(postgres["skipped"])
    assert postgres["event_log_batched"]["events"] == 200
    _sane(postgres["event_log_single"]["latency_ms"], 20)
    _sane(postgres["tool_call_records"]["sequential"]["latency_ms"], 10)
    assert postgres["tool_call_records"]["concurrent"]["calls"] == 16
    _chained(postgres["audit_chain"], two_chainers=True)
