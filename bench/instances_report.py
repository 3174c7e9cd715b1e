"""Section 6 of RESULTS.md: two broker instances against one (:mod:`bench.instances`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

TITLE: Final = "## 6. Two instances"
LABELS: Final = {1: "one broker", 2: "two brokers"}


def _ms(value: Any) -> str:
    if value is None:
        return "–"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def _num(value: Any, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _times(value: Any) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _label(count: int) -> str:
    return LABELS.get(count, f"{count} brokers")


def _floor(watcher: Mapping[str, Any] | None, calls: int) -> float | None:
    steps = [s for s in (watcher or {}).get("steps", []) if s["calls"] == calls]
    return steps[0].get("cpu_us_per_event") if steps else None


def _row(label: str, step: Mapping[str, Any], floor: float | None) -> list[str]:
    d = step["dispatch_ms"]
    per_instance = step.get("per_instance")
    split = " / ".join(str(p["calls_owned"]) for p in per_instance) if per_instance else "–"
    cpu = step.get("cpu_us_per_event")
    return [
        label,
        f"{step['calls']:,}",
        _num(step["events_per_s"]),
        _num(cpu),
        f"{step['cpu_utilization'] * 100:.0f}%",
        f"{cpu / floor:.1f}×" if cpu and floor else "–",
        f"{_ms(d['p50'])} / {_ms(d['p99'])}",
        _num(step.get("db_cpu_us_per_event")),
        _num(step.get("rss_kib_per_call")),
        split,
        "yes" if step.get("saturated") else "no",
    ]


def _books(p: Mapping[str, Any]) -> str:
    label = _label(p["instances"]).capitalize()
    if "failed" in p:
        tail = p["failed"].strip().splitlines()
        return f"{label}: **did not start**: {tail[0] if tail else ''} (log tail in the JSON)."
    books, db, own, ended = p["books"], p["db_books"], p["ownership"], p["ended"]
    logs = p["logs"]
    errors = sum(int(log["errors"] or 0) + int(log["flagged"]) for log in logs.values())
    lost = sum(int(log["lease_lost"]) for log in logs.values())
    split = ", ".join(f"{k} {v:,}" for k, v in own["by_instance"].items())
    verdict = "every check held" if not p["problems"] else "**" + "; ".join(p["problems"]) + "**"
    return (
        f"{label}: stopped by {p.get('stopped_by') or 'nothing (every step ran)'}. "
        f"Function calls: {books['function_calls']:,} issued, {books['outputs']:,} answered "
        f"({books['outputs_repeated']} twice, {books['outstanding']} left), "
        f"{db['by_status'].get('succeeded', 0):,} stored as succeeded and injected "
        f"({'exact' if db['exact'] else '**not exact**'}). Offers {split}; leases: "
        f"{own['owned_by_taker']:,} of {own['calls']:,} calls owned by the instance that took "
        f"the offer, {own['moved']} moved. Broker log errors {errors}, leases lost {lost}; "
        f"the calls ended, the brokers had let every one go within {ended['after_s']:g} s "
        f"({ended['live_left']} left). {verdict[0].upper()}{verdict[1:]}."
    )


def instances_section(payload: Mapping[str, Any]) -> list[str]:
    r = payload["results"]
    opts = payload["options"]
    talk = r["talk"]
    lines = [TITLE, ""]
    pinning = r["pinning"]
    cores = pinning.get("brokers") or []
    shared_core = len(set(cores)) == 1 and pinning.get("standin")
    where = (
        f"every broker pinned to core {cores[0]} and the stand-in to core 1 (`taskset`)"
        if shared_core
        else f"brokers on cores {cores or 'unpinned'}, stand-in "
        + ("on core 1" if pinning.get("standin") else "unpinned")
    )
    lines += [
        f"`{payload['command']}` (preset {payload['preset']}, {payload['started_at']}, "
        f"{payload['duration_s'] / 60:.1f} min).",
        "",
        "The talking-calls load of section 5 (a turn every "
        f"{talk['period_s']:g} s per call, {talk['transcript_deltas']} transcript deltas, the "
        f"no-op tool every {talk['function_every']} turns) watched on PostgreSQL by one broker "
        "process, then by two sharing one database (`bench/instances.py`), a fresh database "
        "each. With two, sessions are created and offered round-robin, and each call is owned "
        "(`call_leases`) by the instance that took its offer. Both phases step through the "
        f"same numbers of calls and measure each over {opts['window_s']:g} s once they talk. "
        "*Broker CPU* is all brokers' CPU time together (per event, and as a share of one "
        "core); *database CPU* that of this database's PostgreSQL backends; *× watcher* the "
        "brokers' CPU per event over the minimal watcher's at the same calls (its own "
        f"{opts['watcher_window_s']:g} s window); *calls per instance* the leases each "
        f"holds. Machine: {where}; PostgreSQL unpinned.",
        "",
    ]
    if shared_core:
        lines += [
            "**Two processes on one core measure the coordination overhead, not a "
            "speed-up.** The brokers share core 0 (the stand-in needs the other), so two can "
            "at best match one: the ratio below is what running a second instance costs on "
            "the same CPU (a second event loop and connection pool, two event-log writers "
            "committing half the calls each, every `NOTIFY` delivered to both, lease "
            "renewals). On two machines, or one core each, the capacity would be up to twice "
            "one's, less that cost.",
            "",
        ]
    if "skipped" in r:
        return [*lines, f"Skipped: {r['skipped']}.", ""]
    phases = r["phases"]
    watcher = r.get("watcher")
    rows: list[list[str]] = []
    for p in phases:
        label = _label(p["instances"])
        if "failed" in p:
            rows.append([label, "did not start", *[""] * 9])
            continue
        rows += [_row(label, s, _floor(watcher, s["calls"])) for s in p["steps"]]
    if watcher:
        rows += [_row("minimal watcher", s, None) for s in watcher["steps"]]
    lines += _table(
        [
            "watcher",
            "calls",
            "events/s",
            "broker CPU µs/event",
            "broker CPU",
            "× watcher",
            "dispatch p50 / p99 ms",
            "database CPU µs/event",
            "RSS KiB/call",
            "calls per instance",
            "saturated",
        ],
        rows,
    )
    ratios = r.get("ratios") or []
    if ratios:
        lines += ["", "**Two over one**, at the same number of calls:", ""]
        lines += _table(
            [
                "calls",
                "events/s",
                "broker CPU µs/event",
                "dispatch p50",
                "dispatch p99",
                "database CPU µs/event",
                "RSS KiB/call",
            ],
            [
                [
                    f"{x['calls']:,}",
                    _times(x["events_per_s"]),
                    _times(x["cpu_us_per_event"]),
                    _times(x["dispatch_p50"]),
                    _times(x["dispatch_p99"]),
                    _times(x["db_cpu_us_per_event"]),
                    _times(x["rss_kib_per_call"]),
                ]
                for x in ratios
            ],
        )
    shares = r.get("shares") or []
    if shares:
        lines += [
            "",
            "**Split or shared?** Each instance against one broker holding as many calls "
            "(the steps above): "
            + "; ".join(
                f"at {x['calls']:,} calls each of the two ({x['each_calls']:,} calls) used "
                f"{x['each_cpu_utilization'] * 100:.0f}% of a core, one broker with "
                f"{x['each_calls']:,} calls {x['alone_cpu_utilization'] * 100:.0f}% "
                f"({x['ratio']:.2f}×)"
                for x in shares
            )
            + ". At 1× a second instance costs only what its share of the calls costs a "
            "broker alone: the ratios above are then what one process gains from holding "
            "more calls (its batches grow). Above 1× the pair pays more than the split: "
            "coordination, or two processes contending for one core.",
        ]
    two = [p for p in phases if p["instances"] > 1 and p.get("steps")]
    if two:
        last = two[-1]["steps"][-1]
        each = "; ".join(
            f"`{q['instance']}` {q['calls_owned']:,} calls, "
            f"{q['cpu_utilization'] * 100:.0f}% of a core, its own dispatch timer "
            f"{_ms(q['broker_dispatch_mean_ms'])} ms mean"
            for q in last["per_instance"]
        )
        lines += ["", f"Each of the two at {last['calls']:,} calls: {each}."]
    loads = [s["load_average"] for p in phases for s in p.get("steps", []) if "load_average" in s]
    if loads:
        lines += [
            "",
            f"Load average (1 min) at the end of the windows: {min(loads):.2f} to "
            f"{max(loads):.2f} (this benchmark's own processes make up to about 0.6 of it; "
            "more is other work on the machine).",
        ]
    lines += [""]
    lines += [f"- {_books(p)}" for p in phases]
    if watcher:
        wb = watcher["books"]
        lines += [
            f"- Minimal watcher: {wb['function_calls']:,} function calls, {wb['outputs']:,} "
            f"answered ({'each exactly once' if wb.get('exact') else '**not** exactly once'})."
        ]
    return [*lines, ""]
