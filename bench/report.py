"""``bench/RESULTS.md`` and ``bench/dispatch.png`` from the JSON results of a run.

Run alone to rebuild both from ``bench/results/*.json``: ``python -m bench.report``.
"""

from __future__ import annotations

import argparse
import importlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from .context import BENCH_DIR, DEFAULT_OUT
from .instances_report import instances_section
from .stack import ROOT
from .trusted_report import trusted_section

BENCHMARKS: Final = (
    "offer_overhead",
    "dispatch_latency",
    "capacity",
    "audit_append",
    "talking",
    "instances",
    "trusted",
)
DEFAULT_RESULTS_MD: Final = BENCH_DIR / "RESULTS.md"
DEFAULT_PLOT: Final = BENCH_DIR / "dispatch.png"
ANALYSIS: Final = BENCH_DIR / "ANALYSIS.md"
"""The hand-written reading of the numbers, included in RESULTS.md under the targets."""

TARGET_DISPATCH_P50_MS: Final = 1.0
TARGET_DISPATCH_P99_MS: Final = 5.0
TARGET_DISPATCH_AT: Final = 1000
TARGET_OFFER_ADDED_P50_MS: Final = 5.0
TARGET_SESSIONS: Final = 5000
TARGET_RSS_MIB: Final = 1024
TARGET_TALKING_CALLS: Final = 1000
TARGET_TALKING_P50_MS: Final = 2.0
TARGET_TALKING_P99_MS: Final = 10.0
TARGET_TALKING_CPU_RATIO: Final = 2.0
TARGET_TALKING_KIB_PER_CALL: Final = 100
TALKING_PLOT_NAME: Final = "talking.png"
"""Written next to the dispatch plot."""
DB_LABELS: Final = {"sqlite": "SQLite", "postgres": "PostgreSQL"}


def load_results(out_dir: Path) -> dict[str, dict[str, Any]]:
    """Every ``<benchmark>.json`` present in ``out_dir``, by benchmark name."""
    found = {}
    for name in BENCHMARKS:
        path = out_dir / f"{name}.json"
        if path.exists():
            found[name] = json.loads(path.read_text())
    return found


def _ms(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def _num(value: Any, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def _rel(path: str | None) -> str:
    if not path:
        return "–"
    try:
        return str(Path(path).resolve().relative_to(BENCH_DIR))
    except ValueError:
        return path


@dataclass(frozen=True)
class Target:
    name: str
    measured: str
    met: bool | None
    limit: str = ""


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _profile_lines(profile: dict[str, Any] | None) -> list[str]:
    """What a profile says dominates, in three lines."""
    if not profile or not profile.get("packages"):
        return []
    packages = ", ".join(f"{p['package']} {p['percent']:.0f}%" for p in profile["packages"][:6])
    functions = ", ".join(
        f"`{f['function']}` {f['percent']:.0f}%" for f in profile.get("broker_inclusive", [])[:6]
    )
    leaves = ", ".join(f"`{f['function']}` {f['percent']:.0f}%" for f in profile["functions"][:4])
    lines = [
        f"  Profile [{_rel(profile.get('file'))}]({_rel(profile.get('file'))}) "
        f"({profile.get('profiler')}; shares of the broker's busy time):",
        f"  by package: {packages};",
        f"  under broker functions: {functions};",
        f"  hottest leaves: {leaves}.",
    ]
    sql = profile.get("sql")
    if sql and "statements_per_call" in sql:
        kinds = ", ".join(f"{kind} ×{n:g}" for kind, n in list(sql["by_kind_per_call"].items())[:8])
        lines.append(
            f"  SQL per call: {sql['statements_per_call']:g} statements in "
            f"{sql['commits_per_call']:g} commits ({kinds})."
        )
    return lines


def _dispatch_step_at(dispatch: dict[str, Any], target: int) -> dict[str, Any] | None:
    steps = dispatch["results"]["steps"]
    exact = [s for s in steps if s["target_sessions"] == target]
    return exact[0] if exact else (steps[-1] if steps else None)


def _targets(results: dict[str, dict[str, Any]]) -> list[Target]:
    targets: list[Target] = []
    dispatch = results.get("dispatch_latency")
    if dispatch is not None:
        step = _dispatch_step_at(dispatch, TARGET_DISPATCH_AT)
        profile = dispatch["results"].get("profile")
        limit = ""
        if step is not None:
            limit = (
                f"The broker spends {_ms(step.get('broker_cpu_ms_per_call'))} ms of CPU per call "
                f"(its own timer: {_ms(step.get('broker_dispatch_mean_ms'))} ms mean)."
            )
        for name, key, bound in (
            ("p50", "p50", TARGET_DISPATCH_P50_MS),
            ("p99", "p99", TARGET_DISPATCH_P99_MS),
        ):
            if step is None:
                targets.append(Target(f"dispatch {name} ≤ {bound:g} ms", "not measured", None))
                continue
            value = step["dispatch_ms"][key]
            at = step["live_sessions"]
            label = f"dispatch {name} ≤ {bound:g} ms at {TARGET_DISPATCH_AT:,} live sessions"
            measured = f"{_ms(value)} ms at {at:,} live sessions"
            met = value is not None and value <= bound and at >= TARGET_DISPATCH_AT
            targets.append(Target(label, measured, met, "" if met else limit))
        unmet = [i for i, t in enumerate(targets) if t.limit]
        if unmet and profile:
            first = targets[unmet[0]]
            extra = "\n".join(_profile_lines(profile))
            targets[unmet[0]] = Target(first.name, first.measured, first.met, f"{limit}\n{extra}")
            for i in unmet[1:]:
                targets[i] = Target(
                    targets[i].name, targets[i].measured, targets[i].met, "as above."
                )
    offer = results.get("offer_overhead")
    if offer is not None:
        webrtc = offer["results"]["webrtc"]
        added = webrtc["added_ms"]["p50"]
        paired = webrtc["paired_added_ms"]["p50"]
        only = offer["results"]["sideband_only"]["added_ms"]["p50"]
        met = added is not None and added <= TARGET_OFFER_ADDED_P50_MS
        limit = ""
        if not met:
            limit = (
                f"With an instant provider (sideband-only offers) the broker still adds "
                f"{_ms(only)} ms: that is its own work (auth, SDP checks, database writes, the "
                "provider request)."
            )
            if offer["results"].get("profile"):
                limit += "\n" + "\n".join(_profile_lines(offer["results"]["profile"]))
        targets.append(
            Target(
                f"offer overhead ≤ {TARGET_OFFER_ADDED_P50_MS:g} ms p50",
                f"{_ms(added)} ms p50 added (median of paired differences {_ms(paired)} ms)",
                met,
                limit,
            )
        )
    capacity = results.get("capacity")
    if capacity is not None:
        steps = capacity["results"]["steps"]
        under = [s for s in steps if s["broker_rss_mib"] < TARGET_RSS_MIB]
        best = max(under, key=lambda s: s["live_sessions"]) if under else None
        held = best["live_sessions"] if best else 0
        met = held >= TARGET_SESSIONS
        measured = (
            f"{held:,} live sessions at {_num(best['broker_rss_mib'])} MiB RSS"
            if best
            else "no step under the limit"
        )
        limit = ""
        if not met:
            stopped = capacity["results"].get("stopped_by")
            last = steps[-1] if steps else None
            limit = f"Stepping stopped: {stopped}." if stopped else ""
            if last is not None:
                limit += (
                    f" Last step: {last['live_sessions']:,} sessions, "
                    f"{_num(last['broker_rss_mib'])} MiB RSS "
                    f"({_num(last['broker_rss_per_session_kib'])} KiB per session)."
                )
            limit += "\n" + "\n".join(_profile_lines(capacity["results"].get("profile")))
        targets.append(
            Target(
                f"≥ {TARGET_SESSIONS:,} live sessions in one process under "
                f"{TARGET_RSS_MIB // 1024} GiB RSS",
                measured,
                met,
                limit.strip(),
            )
        )
    talking = results.get("talking")
    if talking is not None:
        targets += _talking_targets(talking["results"])
    return targets


def _watcher_step(results: dict[str, Any], calls: int) -> dict[str, Any] | None:
    steps = [s for s in results["watcher"]["steps"] if s["calls"] == calls]
    return steps[0] if steps else None


def _cpu_ratio(results: dict[str, Any], step: dict[str, Any]) -> float | None:
    """The broker's CPU per event over the minimal watcher's at the same number of calls."""
    floor = _watcher_step(results, step["calls"])
    if floor is None or not floor.get("cpu_us_per_event") or not step.get("cpu_us_per_event"):
        return None
    return float(step["cpu_us_per_event"]) / float(floor["cpu_us_per_event"])


def _talking_targets(r: dict[str, Any]) -> list[Target]:
    """The issue-16 targets, judged on the SQLite broker (PostgreSQL's row is in the section)."""
    broker = r["brokers"].get("sqlite") or next(iter(r["brokers"].values()), None)
    if not broker or not broker.get("steps"):
        return []
    steps = broker["steps"]
    at = [s for s in steps if s["calls"] >= TARGET_TALKING_CALLS]
    step = at[0] if at else steps[-1]
    reached = step["calls"] >= TARGET_TALKING_CALLS
    where = f"at {step['calls']:,} talking calls"
    d = step["dispatch_ms"]
    limit = "" if reached else f"Stepping stopped: {broker.get('stopped_by') or 'not reached'}."
    targets = []
    for name, value, bound in (
        ("p50", d["p50"], TARGET_TALKING_P50_MS),
        ("p99", d["p99"], TARGET_TALKING_P99_MS),
    ):
        met = reached and value is not None and value <= bound
        targets.append(
            Target(
                f"talking calls: dispatch {name} ≤ {bound:g} ms at {TARGET_TALKING_CALLS:,} calls",
                f"{_long_ms(value)} ms {where}",
                met,
                "" if met else limit or "see the talking-calls section.",
            )
        )
    # A saturated step's CPU is its backlog's too (and its turns wait): not a cost per event.
    judged = [s for s in steps if not s.get("saturated")] or steps
    ratios = [(s, _cpu_ratio(r, s)) for s in judged]
    known = [(s, x) for s, x in ratios if x is not None]
    if known:
        worst_step, worst = max(known, key=lambda pair: pair[1])
        targets.append(
            Target(
                f"talking calls: broker CPU per event ≤ {TARGET_TALKING_CPU_RATIO:g}× the "
                "minimal watcher's",
                f"{worst:.1f}× at {worst_step['calls']:,} calls "
                f"({_num(worst_step['cpu_us_per_event'])} µs per event)",
                worst <= TARGET_TALKING_CPU_RATIO,
            )
        )
    sized = [s for s in judged if s.get("rss_kib_per_call") is not None]
    if sized:
        last = sized[-1]
        targets.append(
            Target(
                f"talking calls: ≤ {TARGET_TALKING_KIB_PER_CALL} KiB per call",
                f"{_num(last['rss_kib_per_call'])} KiB at {last['calls']:,} calls",
                last["rss_kib_per_call"] <= TARGET_TALKING_KIB_PER_CALL,
            )
        )
    return targets


def _offer_section(offer: dict[str, Any]) -> list[str]:
    r = offer["results"]
    rows = []
    for kind, label in (("webrtc", "WebRTC (aiortc answer)"), ("sideband_only", "sideband-only")):
        k = r[kind]
        rows.append(
            [
                label,
                _num(k["broker_ms"]["count"]),
                _ms(k["direct_ms"]["p50"]),
                _ms(k["broker_ms"]["p50"]),
                _ms(k["added_ms"]["p50"]),
                _ms(k["direct_ms"]["p99"]),
                _ms(k["broker_ms"]["p99"]),
                _ms(k["added_ms"]["p99"]),
                _num(k["ratio"]["p50"], 2),
                _num(k["ratio"]["p99"], 2),
                f"{_ms(k['paired_added_ms']['p50'])} / {_ms(k['paired_added_ms']['p99'])}",
            ]
        )
    lines = [
        "## 1. Offer overhead",
        "",
        "SDP offer → answer round trip, straight to the emulator vs. through the broker, "
        "interleaved in one run (`bench/offer_overhead.py`). Milliseconds.",
        "",
    ]
    lines += _table(
        [
            "provider answer",
            "pairs",
            "direct p50",
            "broker p50",
            "added p50",
            "direct p99",
            "broker p99",
            "added p99",
            "ratio p50",
            "ratio p99",
            "paired added p50 / p99",
        ],
        rows,
    )
    lines += [
        "",
        "*added* is broker − direct of each percentile; *paired added* the percentiles of "
        "each pair's difference (the two offers of a pair ran back to back), which an outlier "
        "on one path moves less.",
    ]
    waits = [
        (label, r[kind].get("answer_wait_added_ms"), r[kind].get("broker_nowait_ms"))
        for kind, label in (("webrtc", "WebRTC"), ("sideband_only", "sideband-only"))
    ]
    if all(wait is not None and wait.get("count") for _, wait, _ in waits):
        lines += [
            "",
            "The broker holds the SDP answer until the call's sideband attached (so a page "
            "can do nothing unwatched). What that costs, measured against a second broker "
            "with the wait off (`BROKER_SIDEBAND_ANSWER_WAIT_S=0`) in the same rotation:",
            "",
        ]
        lines += _table(
            ["provider answer", "no-wait broker p50", "wait added p50", "wait added p99"],
            [
                [label, _ms(nowait["p50"]), _ms(wait["p50"]), _ms(wait["p99"])]
                for label, wait, nowait in waits
                if wait is not None and nowait is not None
            ],
        )
    if r.get("error_count"):
        lines += ["", f"Errors: {r['error_count']} (first: {r['errors'][:3]})."]
    return [*lines, ""]


def _dispatch_section(dispatch: dict[str, Any]) -> list[str]:
    r = dispatch["results"]
    rows = []
    for s in r["steps"]:
        d = s["dispatch_ms"]
        rows.append(
            [
                f"sideband, {s['live_sessions']:,} live",
                _num(d["count"]),
                _ms(d["p50"]),
                _ms(d["p99"]),
                _ms(d["max"]),
                _ms(s.get("broker_dispatch_mean_ms")),
                _ms(s.get("broker_cpu_ms_per_call")),
                _num(s.get("broker_rss_mib")),
                _num(s["timeouts"]),
            ]
        )
    bridge = r.get("bridge")
    if bridge:
        d = bridge["dispatch_ms"]
        rows.append(
            [
                f"bridge, {bridge['browsers']} aiortc browser(s)",
                _num(d["count"]),
                _ms(d["p50"]),
                _ms(d["p99"]),
                _ms(d["max"]),
                "–",
                "–",
                "–",
                _num(bridge["timeouts"]),
            ]
        )
    lines = [
        "## 2. Tool dispatch latency",
        "",
        "From the emulator sending `response.function_call_arguments.done` to the emulator "
        "receiving the broker's `function_call_output`, no-op tool, one call at a time over "
        "the live sessions (`bench/dispatch_latency.py`). Milliseconds; *broker mean* is the "
        "broker's own `broker_dispatch_seconds` over the same calls, *CPU/call* the broker "
        "process's CPU time per call.",
        "",
    ]
    lines += _table(
        [
            "path",
            "calls",
            "p50",
            "p99",
            "max",
            "broker mean",
            "CPU/call",
            "RSS MiB",
            "timeouts",
        ],
        rows,
    )
    if bridge and bridge.get("errors"):
        lines += ["", f"Bridge errors: {bridge['errors'][:3]}."]
    ratio = r.get("sideband_over_bridge")
    if ratio:
        lines += [
            "",
            f"Sideband/bridge ratio at {r['steps'][0]['live_sessions']:,} live session(s): "
            f"p50 {_num(ratio['p50'], 2)}, p99 {_num(ratio['p99'], 2)} "
            "(below 1: the sideband is faster).",
        ]
    return [*lines, ""]


def _capacity_section(capacity: dict[str, Any]) -> list[str]:
    r = capacity["results"]
    opts = capacity["options"]
    rows = []
    for s in r["steps"]:
        d = s["dispatch_ms"]
        rows.append(
            [
                f"{s['live_sessions']:,}",
                _num(s.get("setup_sessions_per_s"), 1),
                f"{_num(s['broker_rss_idle_mib'])} / {_num(s['broker_rss_mib'])}",
                _num(s["broker_rss_per_session_kib"]),
                f"{_num(s['calls_completed'])} / {_num(s['calls_offered'])}",
                _num(s["completed_per_s"], 1),
                f"{_ms(d['p50'])} / {_ms(d['p99'])} / {_ms(d['max'])}",
                f"{s['broker_cpu_utilization'] * 100:.0f}%",
                _ms(s["broker_cpu_ms_per_call"]),
                f"{s['driver_and_emulator_cpu_utilization'] * 100:.0f}%",
                _num(s.get("drain_s"), 1),
                _num(s.get("session_probes")),
                "yes" if s.get("saturated") else "no",
            ]
        )
    lines = [
        "## 3. Capacity",
        "",
        f"Live sessions held by one broker process, each calling the no-op tool once every "
        f"{opts['period_s']:g} s at a random phase for {opts['window_s']:g} s per step "
        f"(`bench/capacity.py`). Broker RSS at start: {_num(r['broker_rss_baseline_mib'])} MiB; "
        f"peak: {_num(r['broker_rss_peak_mib'])} MiB. RSS per session is (loaded RSS − RSS at "
        "start) / sessions; CPU/call is the broker's CPU time in the window over the calls "
        "completed (idle sessions' upkeep included).",
        "",
    ]
    lines += _table(
        [
            "live sessions",
            "setup /s",
            "RSS MiB idle / loaded",
            "KiB/session",
            "calls done / offered",
            "calls/s",
            "dispatch p50 / p99 / max ms",
            "broker CPU",
            "CPU ms/call",
            "emulator+driver CPU",
            "drain s",
            "config probes",
            "saturated",
        ],
        rows,
    )
    lines += [
        "",
        "*config probes*: the broker's probes of the provider's session config in the window "
        "(one before each of its `response.create`, plus one per live call every "
        "`BROKER_SESSION_PROBE_INTERVAL_S`).",
    ]
    lines += ["", f"Stopped by: {r.get('stopped_by') or 'nothing (every step ran)'}."]
    costs = [s["broker_cpu_ms_per_call"] for s in r["steps"] if s.get("broker_cpu_ms_per_call")]
    if costs:
        cheapest = min(costs)
        per_s = 1000 / cheapest
        lines += [
            "",
            f"At {_ms(cheapest)} ms of broker CPU per call, one core completes at most about "
            f"{per_s:,.0f} calls/s: about {per_s * opts['period_s']:,.0f} sessions calling once "
            f"every {opts['period_s']:g} s. A saturated step's calls queue behind each other "
            "(each session's reader gets its turn), so its latency is the backlog's.",
        ]
    lines += [
        "",
        "The emulator side is kept light so the broker is the bottleneck: its calls are "
        "sideband-only (`/_emulator/bench/v1`, an offer with `s=emulator-bench-sideband-only` "
        "gets an `emulator.admin.SidebandOnlyCall`: no WebRTC peer, no audio, a recorder of "
        "200 events), the scripted model streams without pauses (`token_interval=0`, speech "
        "off), and the driver starts each call in-process (a user message naming the tool and "
        "`response.create`, submitted as if from the data channel). The broker's path is the "
        "real one: session, offer, `POST /realtime/calls`, sideband attach, function call, "
        "policy, tool, output injected, `response.create`.",
    ]
    return [*lines, ""]


def _long_ms(value: Any) -> str:
    """Milliseconds, with thousands separated (a saturated broker's latency is seconds)."""
    return _num(value) if value is not None and value >= 1000 else _ms(value)


def _talking_row(label: str, step: dict[str, Any], ratio: float | None) -> list[str]:
    d = step["dispatch_ms"]
    return [
        label,
        f"{step['calls']:,}",
        _num(step["events_per_s"]),
        _num(step.get("cpu_us_per_event")),
        f"{step['cpu_utilization'] * 100:.0f}%",
        f"{ratio:.1f}×" if ratio is not None else "–",
        f"{_long_ms(d['p50'])} / {_long_ms(d['p99'])}",
        _num(step.get("rss_kib_per_call")),
        f"{_num(step['probes'])} ({_num(step.get('probes_per_call'), 2)})",
        f"{step['standin_cpu_utilization'] * 100:.0f}%",
        "yes" if step.get("saturated") else "no",
    ]


def _talking_section(talking: dict[str, Any], plot: Path | None = None) -> list[str]:
    r = talking["results"]
    opts = talking["options"]
    talk = r["talk"]
    rows: list[list[str]] = []
    for db, broker in r["brokers"].items():
        label = f"broker, {DB_LABELS.get(db, db)}"
        if "skipped" in broker:
            rows.append([label, f"skipped: {broker['skipped']}", *[""] * 9])
            continue
        rows += [_talking_row(label, s, _cpu_ratio(r, s)) for s in broker["steps"]]
    rows += [_talking_row("minimal watcher", s, None) for s in r["watcher"]["steps"]]
    pinning = r["pinning"]
    pinned = (
        "the broker pinned to core 0 and the stand-in to core 1 (`taskset`); the minimal "
        "watcher, in its own phase, on core 0"
        if pinning["broker"] and pinning["standin"]
        else "not pinned (no `taskset`, or one core)"
    )
    lines = [
        "## 5. Talking calls",
        "",
        f"Calls that talk (`bench/talking.py`): a stand-in provider (`bench/standin.py`, its own "
        f"process) streams, per call, a user turn every {talk['period_s']:g} s (speech started "
        "and stopped, the committed audio item, its transcription) and a spoken answer of "
        f"{talk['transcript_deltas']} transcript deltas {talk['delta_interval_s'] * 1000:.0f} ms "
        "apart (item, content-part and output-buffer events, `response.done` with usage, "
        f"`rate_limits.updated`); once every {talk['function_every']} turns the model first "
        "calls the no-op tool, and speaks once the watcher has sent the output and asked for a "
        "response. Watched by the broker (sessions created and offered through its API, its "
        "sideband attached to each call) on each database, and by the minimal watcher "
        "(`bench/watcher.py`: one process, aiohttp WebSockets, `json.loads` of every event, "
        "function calls answered at `response.done`) over the same number of calls in the same "
        f"run. Steps grow (the calls of one step stay for the next); each is measured over "
        f"{opts['window_s']:g} s once its calls talk. *CPU µs/event* is the watching process's "
        "CPU time (user + system, every thread) over the events the stand-in sent it; *× "
        "watcher* the ratio to the minimal watcher's at the same number of calls; *dispatch* "
        "runs from the stand-in sending the function call's `response.done` to it receiving "
        "the `function_call_output`; *probes* the config probes (`session.update` carrying only "
        f"its type) the stand-in answered in the window (per call). Machine: {pinned}.",
        "",
    ]
    lines += _table(
        [
            "watcher",
            "calls",
            "events/s",
            "CPU µs/event",
            "CPU",
            "× watcher",
            "dispatch p50 / p99 ms",
            "RSS KiB/call",
            "probes (per call)",
            "stand-in CPU",
            "saturated",
        ],
        rows,
    )
    bound = opts["knee_p99_ms"]
    knees = [
        f"broker on {DB_LABELS.get(db, db)}: "
        + (
            "skipped"
            if "skipped" in broker
            else (f"{broker['knee']:,} calls" if broker.get("knee") else "below the first step")
        )
        for db, broker in r["brokers"].items()
    ]
    watcher_knee = r["watcher"].get("knee")
    knees.append(
        "minimal watcher: "
        + (f"{watcher_knee:,} calls" if watcher_knee else "below the first step")
    )
    lines += ["", f"**The knee** (the most calls with dispatch p99 ≤ {bound:g} ms): "]
    lines[-1] += "; ".join(knees) + "."
    for db, broker in r["brokers"].items():
        if "skipped" in broker or not broker.get("steps"):
            continue
        books = broker["books"]
        last = broker["steps"][-1]
        metrics = ", ".join(
            f"`{name}` {value:g}"
            for name, value in last.get("broker_metrics", {}).items()
            if not name.startswith(("broker_dispatch", "broker_responses", "broker_tool_calls"))
        )
        lines += [
            "",
            f"- Broker on {DB_LABELS.get(db, db)}: stopped by "
            f"{broker.get('stopped_by') or 'nothing (every step ran)'}. Function calls: "
            f"{books['function_calls']:,} issued, {books['outputs']:,} answered "
            f"({books['outputs_repeated']} twice, {books['outstanding']} left unanswered): "
            f"{'each exactly once' if books.get('exact') else '**not** each exactly once'}. "
            f"At {last['calls']:,} calls, over the window: {metrics or 'no metrics read'}.",
        ]
    watcher_books = r["watcher"]["books"]
    if plot is not None:
        lines = [
            *lines[:2],
            f"![CPU per event and dispatch p99 against talking calls]({_rel(str(plot))})",
            "",
            *lines[2:],
        ]
    lines += [
        f"- Minimal watcher: {watcher_books['function_calls']:,} function calls, "
        f"{watcher_books['outputs']:,} answered "
        f"({'each exactly once' if watcher_books.get('exact') else '**not** each exactly once'})."
    ]
    lines += _overload_lines(r["brokers"], opts)
    return [*lines, ""]


def _overload_row(label: str, o: dict[str, Any]) -> list[str]:
    if "skipped" in o:
        return [label, f"skipped: {o['skipped']}", *[""] * 9]
    ceiling = f"{o['ceiling']:,} ({o['ceiling_from']})"
    press, recovery = o.get("press"), o.get("recovery")
    if press is None or recovery is None:
        why = o.get("failed") or f"not reached ({o.get('grow', {}).get('opened')} opened)"
        return [label, ceiling, why, *[""] * 8]
    replies = o["replies"]["press"]
    proper = "503 overloaded live_calls"
    others = {
        f"{kind} {status}": n
        for kind in ("create", "offer")
        for status, n in replies.get(kind, {}).items()
        if status != proper
    }
    readyz = replies.get("readyz", {})
    dispatch = press["talk"]["dispatch_ms"]
    exact = (
        o["books"]["exact"]
        and o["books_at_ceiling"]["exact"]
        and o["usage"]["exact"]
        and o["tool_calls_recorded"]["exact"]
    )
    return [
        label,
        ceiling,
        f"{press['sessions_tried']:,} / {press['offers_tried']:,}",
        f"{press['refused_properly'] - readyz.get(proper, 0):,} "
        f"(Retry-After {', '.join(o['retry_after_seen']) or '–'} s)",
        ", ".join(f"{k}: {n}" for k, n in others.items()) or "none",
        str(o["status_500"]),
        f"{readyz.get(proper, 0)} of {sum(readyz.values())} 503",
        f"{_long_ms(dispatch['p50'])} / {_long_ms(dispatch['p99'])}",
        _seconds(recovery["ready_after_s"]),
        f"{recovery['reopened']} of {recovery['expected']} "
        f"({recovery['attached']} attached; {_seconds(recovery['attached_after_s'])})",
        f"{o['books']['function_calls']:,} tool calls, {o['usage']['responses_sent']:,} "
        f"responses: {'exact' if exact else '**not exact**'}",
    ]


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


def _overload_lines(brokers: dict[str, Any], opts: dict[str, Any]) -> list[str]:
    phases = {db: b["overload"] for db, b in brokers.items() if "overload" in b}
    if not phases:
        return []
    lines = [
        "",
        "**Overload at the ceiling** (`bench/talking_overload.py`): after its stepping, a "
        "fresh broker per database with `BROKER_MAX_LIVE_CALLS` at the knee (else the largest "
        "unsaturated step, else the first), the brake's other readings at their defaults (the "
        "per-session offer rate off), is grown to the ceiling with talking calls; for "
        f"{opts.get('overload_window_s', 0):g} s while they talk, new sessions, offers of "
        "sessions created before and `/readyz` are tried; then the calls go quiet, "
        f"{opts.get('overload_hangup_share', 0) * 100:.0f} % (at least 2) are hung up and as "
        "many opened again. *Books*: every function call the stand-in issued answered once "
        "and recorded as succeeded, every `response.done` it sent counted "
        "(`broker_responses_total`) and stored (the sessions' usage).",
        "",
    ]
    lines += _table(
        [
            "database",
            "ceiling",
            "sessions / offers tried",
            "refused 503 overloaded",
            "other answers",
            "500s",
            "/readyz",
            "dispatch p50 / p99 ms",
            "ready again after",
            "opened again",
            "books",
        ],
        [_overload_row(DB_LABELS.get(db, db), o) for db, o in phases.items()],
    )
    for db, o in phases.items():
        problems = o.get("problems") or []
        if "skipped" in o:
            continue
        metrics = o.get("metrics", {})
        lines += [
            "",
            f"- {DB_LABELS.get(db, db)}: "
            + (
                "every check held"
                if not problems
                else "**" + f"{len(problems)} checks failed**: " + "; ".join(problems)
            )
            + (
                f" (sideband failures {metrics['sideband_failures']:g}, degraded sessions "
                f"{metrics['sessions_degraded']:g}, broker log errors "
                f"{o.get('log_problems', {}).get('errors')})."
                if metrics
                else "."
            ),
        ]
    return lines


def _audit_section(audit: dict[str, Any]) -> list[str]:
    rows = []
    for kind, r in audit["results"].items():
        if "skipped" in r:
            rows.append([kind, f"skipped: {r['skipped']}", "", "", ""])
            continue
        batched = r["event_log_batched"]
        single = r["event_log_single"]
        calls = r["tool_call_records"]
        rows.append(
            [
                kind,
                f"{_num(batched['events_per_s'])} ({_num(batched['events'])} events, "
                f"{batched['sessions']} sessions)",
                f"{_ms(single['latency_ms']['p50'])} / {_ms(single['latency_ms']['p99'])} ms "
                f"({_num(single['appends_per_s'])}/s)",
                f"{_ms(calls['sequential']['latency_ms']['p50'])} / "
                f"{_ms(calls['sequential']['latency_ms']['p99'])} ms "
                f"({_num(calls['sequential']['calls_per_s'])}/s)",
                f"{_num(calls['concurrent']['calls_per_s'])}/s "
                f"({calls['concurrent']['callers']} callers)",
            ]
        )
    lines = [
        "## 4. Audit append throughput",
        "",
        "The broker's own code on a fresh database of each kind, in-process "
        "(`bench/audit_append.py`): the event log written by `EventRecorder` in batches as the "
        "sideband does; `append_event`, one transaction per event; and the tool-call records "
        "of one sideband call (`ToolDispatcher.run` with the no-op tool, then "
        "`mark_injected`; each transaction also writes its audit records to the outbox); and "
        "the signed audit trail (`bench/audit_chain.py`, below).",
        "",
    ]
    lines += _table(
        [
            "database",
            "event log, batched (events/s)",
            "single append p50 / p99",
            "tool-call records, one caller p50 / p99",
            "tool-call records, concurrent",
        ],
        rows,
    )
    chained = {k: r["audit_chain"] for k, r in audit["results"].items() if "audit_chain" in r}
    if chained:
        lines += [
            "",
            *_audit_chain_lines(
                chained,
                audit["results"],
                f"{audit['command']}` (preset {audit['preset']}, load average at its start "
                f"{audit['machine']['load_average_at_start']}; the event log above is of the "
                "same run: read ratios",
            ),
        ]
    return [*lines, ""]


def _times(rate: float | None, other: float | None) -> str:
    return f"{rate / other:.2f}" if rate and other else "–"


def _split(counts: Sequence[int]) -> str:
    return " / ".join(_num(n) for n in counts)


def _audit_chain_lines(chained: dict[str, Any], results: dict[str, Any], command: str) -> list[str]:
    """The signed audit trail's rates, each beside the event log's and the signing floor."""
    rows = []
    for kind, c in chained.items():
        e2e, alone, sign = c["end_to_end"], c["chainer_alone"], c["sign"]
        batched = results[kind]["event_log_batched"]["events_per_s"]
        single = results[kind]["event_log_single"]["appends_per_s"]
        two = c.get("end_to_end_two_chainers")
        ratios = c["ratio_to_sign"]
        rows.append(
            [
                kind,
                f"{_num(e2e['chained_per_s'])} ({_num(e2e['chained'])} records, "
                f"{e2e['writers']} writers; they appended {_num(e2e['appends_per_s'])}/s)",
                f"{_times(e2e['chained_per_s'], batched)} / {_times(e2e['chained_per_s'], single)}",
                f"{_num(two['chained_per_s'])} (split {_split(two['chained_by_each'])})"
                if two
                else "– (one process per SQLite file)",
                f"{_num(alone['records_per_s'])} ({_num(alone['records'])} records)",
                f"{_num(c['in_memory']['records_per_s'])}",
                f"{_num(sign['signatures_per_s'])}",
                f"{ratios.get('end_to_end', 0):.2f} / {ratios.get('chainer_alone', 0):.2f} / "
                f"{ratios.get('in_memory', 0):.2f}",
            ]
        )
    notes = []
    for kind, c in chained.items():
        e2e, alone = c["end_to_end"], c["chainer_alone"]["records_per_s"]
        bound = (
            "end to end is the writers' rate (one commit per record), not the chain's"
            if alone and e2e["appends_per_s"] and alone > e2e["appends_per_s"]
            else "the chain is the bottleneck"
        )
        notes.append(
            f"- {DB_LABELS.get(kind, kind)}: the chainer was done "
            f"{_num(e2e['catch_up_s'], 2)} s after the last append; alone it chains "
            f"{_times(alone, e2e['appends_per_s'])}× what the writers appended per second: "
            f"{bound}."
        )
    return [
        "**Signed audit trail** (`bench/audit_chain.py`): records appended through "
        "`broker.audit.trail.append`, one transaction each as an action's own write, while the "
        "instance's chainer links and signs them (its default poll and batches of up to "
        "1000); *end to end* counts from the first append until the last record is chained "
        "and signed, so it includes the wait for the chainer. *Two chainers* (PostgreSQL): "
        "two engines and two keys, as two instances on one database taking turns on the "
        "head's lock. *Chainer alone*: one `chain_pending()` on a pre-filled outbox "
        "(linking, hashing, signing, inserting). *In memory*: `chain()` on rows in memory "
        "(canonical JSON, SHA-256, Ed25519; no database). *Sign*: raw Ed25519 signatures of "
        "32 bytes in the same run, the floor; the ratios are to it. *÷ event log*: end to "
        "end over the event log's batched rate and its single appends' (one writer) above. "
        f"Measured by `{command}).",
        "",
        *_table(
            [
                "database",
                "end to end (chained/s)",
                "÷ event log: batched / single",
                "end to end, two chainers",
                "chainer alone (records/s)",
                "in memory (records/s)",
                "Ed25519 sign/s",
                "÷ sign: end to end / alone / in memory",
            ],
            rows,
        ),
        "",
        *notes,
    ]


def render(
    results: dict[str, dict[str, Any]],
    plot: Path | None,
    note: str = "",
    talking_plot: Path | None = None,
) -> str:
    """RESULTS.md for ``results`` (each plot is linked if it was written)."""
    any_run = next(iter(results.values()))
    machine = any_run["machine"]
    dates = sorted(r["started_at"] for r in results.values())
    total = sum(r["duration_s"] for r in results.values())
    presets = sorted({r["preset"] for r in results.values()})
    lines = [
        "# Benchmark results",
        "",
        "Generated by `bench/report.py` from `bench/results/*.json`; rerun with `make bench`.",
        "",
        f"- **Command**: `{any_run['command']}` (preset {', '.join(presets)}; broker database: "
        f"{any_run['database']})",
        f"- **Date**: {dates[0]} to {dates[-1]} (UTC); they took {total / 60:.1f} min",
        f"- **Machine**: {machine['cores']} cores ({machine['cpu_model']}), "
        f"{machine['memory_gib']} GiB memory, {machine['os']}, Python {machine['python']}; "
        f"load average at the start {machine['load_average_at_start']}",
        "- Everything on loopback: the broker as its own `python -m broker serve` process, the "
        "emulator and the driver in the benchmark's process, aiortc peers with no ICE servers.",
    ]
    if note:
        lines += ["", note]
    targets = _targets(results)
    if targets:
        lines += ["", "## Targets", ""]
        lines += _table(
            ["target", "measured", "met"],
            [
                [t.name, t.measured, "–" if t.met is None else ("yes" if t.met else "**no**")]
                for t in targets
            ],
        )
        limits = [t for t in targets if t.limit]
        if limits:
            lines += ["", "### What limits the targets not met", ""]
            for t in limits:
                lines += [f"- **{t.name}**: {t.limit.strip()}"]
    if ANALYSIS.exists():
        # Written by hand (what the numbers mean, what was done about them), kept across runs.
        lines += ["", ANALYSIS.read_text().rstrip()]
    lines.append("")
    if plot is not None:
        lines += [
            f"![Dispatch p50 and p99 against live sessions]({_rel(str(plot))})",
            "",
        ]
    sections = {
        "offer_overhead": _offer_section,
        "dispatch_latency": _dispatch_section,
        "capacity": _capacity_section,
        "audit_append": _audit_section,
        "talking": _talking_section,
        "instances": instances_section,
        "trusted": trusted_section,
    }
    for name, section in sections.items():
        if name == "talking" and name in results:
            lines += _talking_section(results[name], talking_plot)
        elif name in results:
            lines += section(results[name])
    profiles = [
        r["results"]["profile"]["file"]
        for r in results.values()
        if isinstance(r["results"].get("profile"), dict) and r["results"]["profile"].get("file")
    ]
    if profiles:
        lines += [
            "## Profiles",
            "",
            "Each profile is an extra window after the timed ones (which are never profiled): "
            + ", ".join(f"[{_rel(p)}]({_rel(p)})" for p in profiles)
            + ". pyinstrument samples the broker's event loop (wall clock; time idle in "
            "`select` is left out of the shares); SQLAlchemy's statements run in greenlets, "
            "so their time shows under SQLAlchemy rather than under the broker function that "
            "asked, and the SQL counts per call say which statements those are.",
            "",
        ]
    lines += [
        "## Running them",
        "",
        "- `make bench`: all seven at full size with the broker profiled (about twenty minutes "
        "on two cores; run it on a quiet machine), then this file, `dispatch.png`, "
        "`talking.png`, `results/*.json` and `profiles/*.txt`.",
        "- `.venv/bin/python -m bench --preset medium|smoke [--only capacity,...] "
        "[--profile [py-spy]] [--db postgres]`; one benchmark: "
        "`python -m bench.capacity --preset medium --steps 100,500`; one section rerun and "
        "this file rewritten with the others' last results: `python -m bench --only "
        "instances`.",
        "- `make bench-report` rebuilds this file and the plot from `results/*.json`.",
        "- `make test` runs every benchmark at tiny sizes (`tests/bench/`), without timing "
        "anything, so they keep working.",
        "",
    ]
    return "\n".join(lines).rstrip() + "\n"


def plot_dispatch(results: dict[str, dict[str, Any]], path: Path) -> bool:
    """Dispatch p50/p99 against live sessions as a PNG; ``False`` without matplotlib."""
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        return False
    matplotlib.use("Agg")  # no display: render to a file
    plt = importlib.import_module("matplotlib.pyplot")
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    series: list[tuple[str, list[dict[str, Any]], str]] = []
    if "dispatch_latency" in results:
        series.append(
            ("one call at a time", results["dispatch_latency"]["results"]["steps"], "tab:blue")
        )
    if "capacity" in results:
        period = results["capacity"]["options"]["period_s"]
        series.append(
            (
                f"every session once per {period:g} s",
                results["capacity"]["results"]["steps"],
                "tab:red",
            )
        )
    drawn = False
    for label, steps, color in series:
        points = [s for s in steps if s["dispatch_ms"]["p50"] is not None]
        if not points:
            continue
        xs = [s["live_sessions"] for s in points]
        ax.plot(xs, [s["dispatch_ms"]["p50"] for s in points], "o-", color=color)
        ax.plot(xs, [s["dispatch_ms"]["p99"] for s in points], "s--", color=color)
        ax.plot([], [], "o-", color=color, label=f"p50, {label}")
        ax.plot([], [], "s--", color=color, label=f"p99, {label}")
        for s in points:
            if s.get("saturated"):
                ax.annotate(
                    "saturated",
                    (s["live_sessions"], s["dispatch_ms"]["p99"]),
                    textcoords="offset points",
                    xytext=(-20, 8),
                    fontsize=7,
                    color=color,
                )
        for s in steps:
            if s["dispatch_ms"]["p50"] is None:
                ax.axvline(s["live_sessions"], color=color, linestyle=":", linewidth=1)
                ax.annotate(
                    f"{s['live_sessions']:,}: no call completed",
                    (s["live_sessions"], 1),
                    xycoords=("data", "axes fraction"),
                    textcoords="offset points",
                    xytext=(-4, -12),
                    rotation=90,
                    ha="right",
                    va="top",
                    fontsize=7,
                    color=color,
                )
        drawn = True
    if not drawn:
        plt.close(fig)
        return False
    ax.axhline(TARGET_DISPATCH_P50_MS, color="gray", linestyle=":", linewidth=1)
    ax.axhline(TARGET_DISPATCH_P99_MS, color="gray", linestyle="-.", linewidth=1)
    ax.text(1, TARGET_DISPATCH_P50_MS, " target p50", va="bottom", color="gray", fontsize=8)
    ax.text(1, TARGET_DISPATCH_P99_MS, " target p99", va="bottom", color="gray", fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    # Plain numbers on both log axes (1, 10, 100, 1000 sessions; 1, 5, 20 ms), not powers.
    ticker = importlib.import_module("matplotlib.ticker")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(ticker.FuncFormatter(lambda v, _pos: f"{v:g}"))
        axis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("live sessions (one broker process)")
    ax.set_ylabel("dispatch latency, ms (emulator side)")
    ax.set_title("Tool dispatch latency, sideband path, no-op tool")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


def plot_talking(results: dict[str, dict[str, Any]], path: Path) -> bool:
    """CPU per event and dispatch p99 against talking calls; ``False``: nothing to draw.

    Also ``False`` without matplotlib.
    """
    talking = results.get("talking")
    if talking is None:
        return False
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        return False
    matplotlib.use("Agg")  # no display: render to a file
    plt = importlib.import_module("matplotlib.pyplot")
    ticker = importlib.import_module("matplotlib.ticker")
    r = talking["results"]
    series: list[tuple[str, list[dict[str, Any]], str]] = [
        (f"broker, {DB_LABELS.get(db, db)}", b["steps"], color)
        for (db, b), color in zip(r["brokers"].items(), ("tab:red", "tab:purple"), strict=False)
        if b.get("steps")
    ]
    series.append(("minimal watcher", r["watcher"]["steps"], "tab:green"))
    if not any(steps for _, steps, _ in series):
        return False
    fig, (cpu_ax, p99_ax) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110)
    for label, steps, color in series:
        cpu = [s for s in steps if s.get("cpu_us_per_event")]
        cpu_ax.plot(
            [s["calls"] for s in cpu], [s["cpu_us_per_event"] for s in cpu], "o-", color=color
        )
        p99 = [s for s in steps if s["dispatch_ms"]["p99"] is not None]
        p99_ax.plot(
            [s["calls"] for s in p99],
            [s["dispatch_ms"]["p99"] for s in p99],
            "s-",
            color=color,
            label=label,
        )
        for s in steps:
            if s.get("saturated") and s["dispatch_ms"]["p99"] is not None:
                p99_ax.annotate(
                    "saturated",
                    (s["calls"], s["dispatch_ms"]["p99"]),
                    textcoords="offset points",
                    xytext=(-20, 8),
                    fontsize=7,
                    color=color,
                )
    p99_ax.axhline(TARGET_TALKING_P99_MS, color="gray", linestyle="-.", linewidth=1)
    p99_ax.text(
        0.01,
        TARGET_TALKING_P99_MS,
        " target p99",
        va="bottom",
        color="gray",
        fontsize=8,
        transform=p99_ax.get_yaxis_transform(),  # x in axes fraction, y in data
    )
    cpu_ax.set_ylabel("CPU µs per sideband event")
    p99_ax.set_ylabel("dispatch p99, ms (stand-in side)")
    p99_ax.set_yscale("log")
    for ax in (cpu_ax, p99_ax):
        ax.set_xscale("log")
        ax.set_xlabel("talking calls (one watching process)")
        ax.grid(True, which="both", alpha=0.3)
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(ticker.FuncFormatter(lambda v, _pos: f"{v:g}"))
            axis.set_minor_formatter(ticker.NullFormatter())
    cpu_ax.set_ylim(bottom=0)
    p99_ax.legend(fontsize=8)
    fig.suptitle("Talking calls: CPU per event and tool dispatch p99")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


def write_report(
    out_dir: Path, results_md: Path, plot: Path, note: str = ""
) -> tuple[Path, Path | None]:
    """Write RESULTS.md (and the plot, if matplotlib is installed); their paths.

    Raises:
        FileNotFoundError: ``out_dir`` has no results.
    """
    results = load_results(out_dir)
    if not results:
        raise FileNotFoundError(f"no benchmark results in {out_dir}")
    plotted = plot if plot_dispatch(results, plot) else None
    talking_plot = plot.with_name(TALKING_PLOT_NAME)
    talking_plotted = talking_plot if plot_talking(results, talking_plot) else None
    if plotted is None and talking_plotted is None:
        note = (note + "\n\n" if note else "") + (
            "(No plot: matplotlib is not installed; `pip install -e '.[bench]'`.)"
        )
    results_md.parent.mkdir(parents=True, exist_ok=True)
    results_md.write_text(render(results, plotted, note, talking_plotted))
    return results_md, plotted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results directory")
    parser.add_argument("--results-md", type=Path, default=DEFAULT_RESULTS_MD)
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT)
    args = parser.parse_args(argv)
    md, plot = write_report(args.out, args.results_md, args.plot)
    print(f"wrote {md.relative_to(ROOT) if md.is_relative_to(ROOT) else md}")  # noqa: T201
    if plot is not None:
        print(f"wrote {plot}")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
