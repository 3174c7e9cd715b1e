"""The trusted-sessions benchmark (issue 22) at its smoke size, from the shared ``smoke_run``.

Backends stream audio appends and receive audio deltas, straight at the emulator's
WebSocket session mode (the floor) and relayed by the broker's trusted sessions; the tests
check that both phases ran with every session talking (turns answered with audio, no
errors, no socket lost), that the broker was measured and the ratios computed, and that
the section renders; never how fast anything was.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from bench.trusted import PRESETS, ratios, talking_cycle
from bench.trusted_report import TITLE, relay_rates, trusted_section

pytestmark = pytest.mark.timeout(180)


def _payload(root: Path) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads((root / "results" / "trusted.json").read_text())
    assert payload["benchmark"] == "trusted" and payload["preset"] == "smoke"
    return payload


def test_both_paths_carry_audio_both_ways_without_errors(smoke_run: Path) -> None:
    phases = _payload(smoke_run)["results"]["phases"]
    assert sorted(phases) == ["direct", "relayed"]
    for mode, phase in phases.items():
        assert "failed" not in phase, phase.get("failed")
        assert phase["stopped_by"].startswith("nothing"), phase["stopped_by"]
        [step] = phase["steps"]
        assert step["sessions"] == 2 and step["setup_errors"] == 0
        assert step["appends_per_s"] > 0 and step["audio_deltas_per_s"] > 0
        assert step["errors"] == 0 and step["closed_early"] == 0
        assert step["turns"] > 0 and step["answer_latency_ms"]["count"] > 0
        roles = {"backends", "emulator"} | ({"broker"} if mode == "relayed" else set())
        assert set(step["cpu_us_per_audio_event"]) == roles
        # /proc counts CPU in clock ticks (10 ms): in the smoke run's short window a side
        # that did little may have used less than one. Measured, never negative, not all nil.
        used = step["cpu_us_per_audio_event"].values()
        assert all(v is not None and v >= 0 for v in used) and any(v > 0 for v in used)
        totals = phase["totals"]
        # Every turn is answered (but those cut off by the end of the run).
        assert totals["errors"] == 0 and totals["responses"] >= totals["turns"] - step["sessions"]
    assert phases["relayed"]["broker_log_errors"] == 0
    # The broker metered what it relayed: frames both ways, audio bytes both ways.
    frames, audio_kib = relay_rates(phases["relayed"]["steps"][0])
    assert frames and frames > 0 and audio_kib and audio_kib > 0


def test_the_relay_is_compared_with_the_floor_and_the_section_renders(smoke_run: Path) -> None:
    payload = _payload(smoke_run)
    [row] = payload["results"]["ratios"]
    assert row["sessions"] == 2
    if row["floor_us_per_audio_event"]:
        assert row["relay_over_floor"] and row["relay_over_floor"] > 0
    else:
        # The floor used under one clock tick in the smoke window: no ratio, rather than a
        # division by zero or a made-up one.
        assert row["relay_over_floor"] is None
    assert row["system_over_direct"] and row["system_over_direct"] > 0
    lines = trusted_section(payload)
    assert lines[0] == TITLE
    text = "\n".join(lines)
    assert payload["command"] in text and "relayed by the broker" in text
    assert TITLE in (smoke_run / "RESULTS.md").read_text()


def test_the_cycle_is_real_time_speech_then_silence() -> None:
    options = PRESETS["smoke"]
    cycle = talking_cycle(options)
    assert len(cycle) == 20  # 1 s of speech and 1 s of silence in 100 ms chunks
    sizes = {len(base64.b64decode(chunk)) for chunk in cycle}
    assert sizes == {24_000 * 2 // 10}  # 100 ms of PCM16 at 24 kHz
    assert base64.b64decode(cycle[0]) != base64.b64decode(cycle[-1])
    assert set(base64.b64decode(cycle[-1])) == {0}


def test_ratios_pair_steps_by_sessions() -> None:
    def step(sessions: int, **cpu: float) -> dict[str, Any]:
        return {
            "sessions": sessions,
            "cpu_share": {},
            "cpu_us_per_audio_event": cpu,
            "answer_latency_ms": {"p50": 10.0},
        }

    direct = {"steps": [step(10, backends=20.0, emulator=40.0), step(20, backends=10.0)]}
    relayed = {"steps": [step(10, backends=20.0, emulator=40.0, broker=90.0), step(30)]}
    assert ratios(direct, relayed) == [
        {
            "sessions": 10,
            "broker_us_per_audio_event": 90.0,
            "floor_us_per_audio_event": 20.0,
            "relay_over_floor": 4.5,
            "system_over_direct": 2.5,
            "added_latency_p50_ms": 0.0,
        }
    ]
