"""Section 7 of RESULTS.md: trusted server sessions relayed (:mod:`bench.trusted`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

TITLE: Final = "## 7. Trusted server sessions (relayed audio)"
LABELS: Final = {"direct": "direct (the floor)", "relayed": "relayed by the broker"}
ROLES: Final = ("backends", "emulator", "broker")


def _num(value: Any, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _ms(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}"


def _times(value: Any) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def relay_rates(step: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """Frames per second and audio KiB per second the broker's own meters counted relayed."""
    meters = step.get("relay_meters")
    if not meters or not step.get("window_s"):
        return None, None
    frames = sum(v for k, v in meters.items() if k.startswith("broker_trusted_relay_frames"))
    audio = sum(v for k, v in meters.items() if k.startswith("broker_trusted_relay_audio_bytes"))
    return frames / step["window_s"], audio / 1024 / step["window_s"]


def _role_cells(step: Mapping[str, Any], key: str, digits: int) -> list[str]:
    values = step.get(key, {})
    return [_num(values.get(role), digits) if role in values else "–" for role in ROLES]


def _share_cells(step: Mapping[str, Any]) -> list[str]:
    shares = step.get("cpu_share", {})
    return [f"{shares[role]:.0%}" if role in shares else "–" for role in ROLES]


def trusted_section(payload: Mapping[str, Any]) -> list[str]:
    """The section's lines: what ran, the per-step table, relay over floor, the books."""
    r = payload["results"]
    opts = payload["options"]
    cycle = r["cycle"]
    pinning = r["pinning"]
    where = (
        f"the broker pinned to core {opts['broker_cpu']} and the emulator to core "
        f"{opts['emulator_cpu']} (`taskset`), the backends unpinned in the benchmark's process"
        if pinning.get("broker") and pinning.get("emulator")
        else "nothing pinned"
    )
    lines = [
        TITLE,
        "",
        f"`{payload['command']}` (preset {payload['preset']}, {payload['started_at']}, "
        f"{payload['duration_s'] / 60:.1f} min; broker database: {payload['database']}).",
        "",
        "Backends with no browser (`bench/trusted.py`), each holding one realtime session over "
        "a WebSocket and talking in a cycle: "
        f"{cycle['speech_s']:g} s of speech-like audio then {cycle['silence_s']:g} s of "
        f"silence, appended as `input_audio_buffer.append` in {cycle['chunk_ms']} ms chunks "
        "(PCM16 24 kHz, base64) at the pace of real time; the provider's server VAD ends each "
        "turn and the emulator (`python -m emulator`, speech as tones) answers with about 1 s "
        "of audio as `response.output_audio.delta` (100 ms each) beside its transcript. "
        "**Direct** (the floor): the backends talk to the emulator's WebSocket session mode. "
        "**Relayed**: each session is created with a `sessions:trusted` key "
        '(`"connection_type": "trusted_server"`) and its backend connects to '
        "`GET /api/v1/sessions/{id}/connect`; the broker holds the provider's session and "
        "relays every event both ways. Sessions step up (the sessions of a step stay for the "
        f"next); each step is measured over {opts['window_s']:g} s once its sessions talk "
        f"({opts['warmup_s']:g} s). *Audio events* are the appends sent plus the audio deltas "
        "received; *CPU µs per audio event* is each process's CPU time (user + system, every "
        "thread, `/proc`) over them; *answer* runs from a backend receiving `speech_stopped` "
        "to it receiving the answer's first audio delta. *Relay over floor*: the broker's CPU "
        "per relayed audio event over the backends' own in the direct phase (a client that "
        "encodes every append and parses every event: the least an endpoint pays); *system "
        "over direct*: every process's CPU per audio event, relayed over direct. "
        f"Machine: {where}; load average at the start "
        f"{payload['machine']['load_average_at_start']} (other work shared the machine).",
        "",
    ]
    rows = []
    for mode in ("direct", "relayed"):
        phase = r["phases"].get(mode)
        if phase is None:
            continue
        for step in phase.get("steps", []):
            if "cpu_share" not in step:
                continue
            latency = step["answer_latency_ms"]
            rows.append(
                [
                    LABELS[mode],
                    _num(step["sessions"]),
                    _num(step["audio_events_per_s"]),
                    _num(step["events_received_per_s"]),
                    *_role_cells(step, "cpu_us_per_audio_event", 0),
                    *_share_cells(step),
                    f"{_ms(latency['p50'])} / {_ms(latency['p99'])}",
                    _num(step.get("broker_rss_kib_per_session"), 0),
                    "yes" if step.get("saturated") else "no",
                ]
            )
    lines += _table(
        [
            "path",
            "sessions",
            "audio events/s",
            "events received/s",
            "backends µs/audio event",
            "emulator µs/audio event",
            "broker µs/audio event",
            "backends CPU",
            "emulator CPU",
            "broker CPU",
            "answer p50 / p99 ms",
            "broker KiB/session",
            "saturated",
        ],
        rows,
    )
    metered = [s for s in r["phases"].get("relayed", {}).get("steps", []) if "relay_meters" in s]
    if metered:
        lines += [
            "",
            "**The broker's own meters** (`broker_trusted_relay_frames_total`, "
            "`broker_trusted_relay_audio_bytes_total`, both directions) over the same windows:",
            "",
        ]
        meter_rows = []
        for step in metered:
            frames, audio_kib = relay_rates(step)
            cpu = step["cpu_share"].get("broker")
            per_frame = cpu * 1e6 / frames if frames and cpu is not None else None
            meter_rows.append(
                [
                    _num(step["sessions"]),
                    _num(frames),
                    _num(audio_kib),
                    _num(per_frame),
                ]
            )
        lines += _table(
            ["sessions", "frames relayed/s", "audio KiB relayed/s", "broker µs per relayed frame"],
            meter_rows,
        )
    if r["ratios"]:
        lines += ["", "**Relay over floor**, at the same number of sessions:", ""]
        lines += _table(
            [
                "sessions",
                "broker µs per relayed audio event",
                "floor µs per audio event",
                "relay over floor",
                "system over direct",
                "answer p50 added ms",
            ],
            [
                [
                    _num(x["sessions"]),
                    _num(x["broker_us_per_audio_event"]),
                    _num(x["floor_us_per_audio_event"]),
                    _times(x["relay_over_floor"]),
                    _times(x["system_over_direct"]),
                    _ms(x["added_latency_p50_ms"]),
                ]
                for x in r["ratios"]
            ],
        )
    lines.append("")
    for mode in ("direct", "relayed"):
        phase = r["phases"].get(mode)
        if phase is None:
            continue
        if "failed" in phase:
            lines.append(f"- {LABELS[mode].capitalize()}: failed: {phase['failed'][:300]}")
            continue
        totals = phase["totals"]
        line = (
            f"- {LABELS[mode].capitalize()}: stopped by {phase['stopped_by']}. "
            f"{totals['appends']:,} appends sent, {totals['audio_deltas']:,} audio deltas and "
            f"{totals['events']:,} events received, {totals['turns']:,} turns, "
            f"{totals['responses']:,} responses; errors {totals['errors']}, sockets closed "
            f"early {totals['closed_early']}"
        )
        if "broker_log_errors" in phase:
            line += f", broker log errors {phase['broker_log_errors']}"
        if phase.get("broker_leases_lost"):
            line += (
                f", calls the broker let go for want of a lease renewal "
                f"{phase['broker_leases_lost']}"
            )
        lines.append(line + ".")
    lines.append("")
    return lines
