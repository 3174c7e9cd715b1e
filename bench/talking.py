"""Benchmark 5: talking calls (issue 16): broker CPU per sideband event, and tool dispatch.

A stand-in provider (:mod:`bench.standin`, its own process pinned to core 1) streams the
talking-call profile: every 6 s per call a user turn and a spoken answer of 30 transcript
deltas, every third turn a function call to the no-op tool first (about 9 events/s per
call). Watched by:

* the **minimal watcher** (:mod:`bench.watcher`, its own process): aiohttp WebSockets,
  ``json.loads`` of every event, function calls answered at ``response.done``; the floor;
* **the broker** (``broker serve``, pinned to core 0), on SQLite and on PostgreSQL: sessions
  created and offered through its API, so it attaches its sideband to each call and does its
  normal work (event log, tool-call records, config probes, tamper checks).

Each steps the calls up (100 → 300 → 1,000 → 2,000 by default); the calls of a step stay for
the next (the phase grows, it does not restart). After each step's calls are up and have
started talking (``warmup_s``), one window of ``window_s`` measures: the events the stand-in
sent, the watching process's CPU time (user + system, every thread, ``/proc``) per event and
its share of a core, its RSS per call, the dispatch latency of the function calls (the
stand-in's clock: its ``response.done`` of the call sent → the ``function_call_output``
received), the config probes the stand-in answered. Stepping stops at saturation (dispatch
p99 over ``saturated_p99_ms``, or the watcher at ``saturated_cpu`` of a core) or when calls
cannot be set up. At the end of a phase the stand-in stops starting turns, the watcher
answers what is outstanding, and the books are checked: every function call issued got
exactly one output. Then the broker is stopped and the stand-in's calls ended.

*The knee*: the largest step whose dispatch p99 is ≤ ``knee_p99_ms`` (10 ms), per database.

*Overload* (:mod:`bench.talking_overload`): after each database's stepping, a fresh broker
with ``BROKER_MAX_LIVE_CALLS`` at the knee (else the largest unsaturated step, else the
first) is grown to it and pressed past it while its calls talk: every refusal must be 503
``overloaded`` with ``Retry-After``, no answer a 500, no function call or usage lost; then a
tenth of the calls is hung up and the broker must be ready and take calls again.

The minimal watcher runs on core 0 in its phase (the core the broker has in its own), so
both are measured with a core of their own and the stand-in alone on the other.

Run alone: ``python -m bench.talking [--preset smoke|medium|full] [--steps 100,300]
[--databases sqlite]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp

from . import standin as standin_module
from . import standin_wire, talking_overload
from . import watcher as watcher_module
from .context import BenchContext, add_common_args, context_from_args, finish, override, start_clock
from .databases import DatabaseKind, DatabaseUnavailableError, scratch_database
from .probe import SIDEBAND_ONLY_OFFER
from .profiling import BrokerProfiler
from .stack import (
    PROVIDER_KEY,
    ROOT,
    BrokerApi,
    BrokerProcess,
    broker_dispatch_totals,
    mean_ms_between,
    provider_session_config,
    read_metrics,
    start_broker,
    taskset_prefix,
)
from .stats import CpuMeter, rss_kb, summarize_ms

NAME: Final = "talking"
PROFILES: Final = ("talking-loaded",)
HELPER_START_TIMEOUT_S: Final = 30.0
HELPER_REQUEST_TIMEOUT_S: Final = 120.0
METRIC_PREFIXES: Final = (
    "broker_dispatch_seconds_count",
    "broker_session_probes_total",
    "broker_responses_total",
    "broker_tamper_events_total",
    "broker_events_dropped_total",
    "broker_event_log",
    "broker_overload",
    "broker_sideband_failures_total",
    "broker_sessions_degraded_total",
    "broker_tool_calls_total",
)
"""``/metrics`` families whose change over a window is reported (missing ones are skipped)."""


@dataclass(frozen=True)
class Options:
    """Sizes, the talking profile and limits (see the module docstring).

    ``max_seconds`` bounds the whole run; ``setup_max_s`` one step's set-up.
    """

    steps: tuple[int, ...] = (100, 300, 1000, 2000)
    databases: tuple[DatabaseKind, ...] = ("sqlite", "postgres")
    period_s: float = 6.0
    delta_interval_s: float = 0.06
    speech_s: float = 1.2
    function_every: int = 3
    window_s: float = 20.0
    warmup_s: float = 7.0
    setup_concurrency: int = 32
    setup_max_s: float = 120.0
    max_setup_error_share: float = 0.05
    drain_max_s: float = 20.0
    saturated_p99_ms: float = 1000.0
    saturated_cpu: float = 0.95
    knee_p99_ms: float = 10.0
    broker_cpu: int = 0
    standin_cpu: int = 1
    watcher_cpu: int = 0
    profile_window_s: float = 12.0
    max_seconds: float = 720.0
    seed: int = 16
    overload: bool = True
    """Run :mod:`bench.talking_overload` after each database's stepping."""
    overload_window_s: float = 20.0
    overload_extra_share: float = 0.25
    """New sessions tried at the ceiling, as a share of it (within the two bounds below)."""
    overload_min_attempts: int = 4
    overload_max_attempts: int = 250
    overload_hangup_share: float = 0.1
    """The calls hung up to drop the load (at least 2)."""
    overload_ceiling_max: int | None = None
    recovery_max_s: float = 30.0
    overload_max_s: float = 300.0
    """One overload phase's set-up and retries (its other steps have their own bounds)."""


PRESETS: Final = {
    "full": Options(),
    "medium": Options(
        steps=(50, 150, 500),
        window_s=12.0,
        warmup_s=7.0,
        max_seconds=420.0,
        overload_window_s=10.0,
    ),
    "smoke": Options(
        steps=(3, 6),
        databases=("sqlite",),
        period_s=1.0,
        delta_interval_s=0.01,
        speech_s=0.1,
        window_s=2.0,
        warmup_s=1.0,
        setup_max_s=30.0,
        drain_max_s=10.0,
        profile_window_s=1.0,
        max_seconds=90.0,
        overload_window_s=2.0,
        overload_ceiling_max=4,
        recovery_max_s=15.0,
        overload_max_s=60.0,
    ),
}


# ---- the helper processes ----------------------------------------------------------------


class Helper:
    """A helper process (:mod:`bench.standin` or :mod:`bench.watcher`) and its admin routes."""

    def __init__(self, process: asyncio.subprocess.Process, port: int, pinned: bool) -> None:
        self.process = process
        self.base_url = f"http://127.0.0.1:{port}"
        self.pinned = pinned
        self.http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=HELPER_REQUEST_TIMEOUT_S),
            headers={"Authorization": f"Bearer {PROVIDER_KEY}"},
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    async def start(
        cls, module: str, args: Sequence[str], ready_prefix: str, cpu: int | None, log: Path
    ) -> Helper:
        """Start ``python -m module args`` (pinned to ``cpu`` if possible); wait for its port.

        Raises:
            RuntimeError: it exited or did not print its port in time.
        """
        prefix = taskset_prefix(cpu)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as err:
            process = await asyncio.create_subprocess_exec(
                *prefix,
                sys.executable,
                "-m",
                module,
                *args,
                cwd=ROOT,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
            )
        assert process.stdout is not None
        try:
            async with asyncio.timeout(HELPER_START_TIMEOUT_S):
                line = (await process.stdout.readline()).decode()
        except TimeoutError:
            line = ""
        if not line.startswith(ready_prefix):
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            text = await asyncio.to_thread(log.read_text, errors="replace")
            raise RuntimeError(f"{module} did not start: {text[-2000:]}")
        return cls(process, int(line.strip().removeprefix(ready_prefix)), bool(prefix))

    async def get(self, path: str) -> Any:
        async with self.http.get(self.base_url + path) as resp:
            resp.raise_for_status()
            return await resp.json()

    async def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        async with self.http.post(self.base_url + path, json=body or {}) as resp:
            resp.raise_for_status()
            return await resp.json()

    async def stop(self) -> None:
        await self.http.close()
        if self.process.returncode is None:
            self.process.terminate()
            try:
                async with asyncio.timeout(10):
                    await self.process.wait()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


async def start_standin(options: Options, work: Path) -> Helper:
    args = [
        "--key",
        PROVIDER_KEY,
        "--period",
        str(options.period_s),
        "--delta-interval",
        str(options.delta_interval_s),
        "--speech",
        str(options.speech_s),
        "--function-every",
        str(options.function_every),
        "--seed",
        str(options.seed),
        "--max-seconds",
        str(run_bound_s(options)),
    ]
    return await Helper.start(
        "bench.standin",
        args,
        standin_module.READY_PREFIX,
        options.standin_cpu,
        work / "standin.log",
    )


async def start_watcher(options: Options, work: Path, provider: str) -> Helper:
    args = ["--provider", provider, "--key", PROVIDER_KEY]
    args += ["--max-seconds", str(run_bound_s(options))]
    return await Helper.start(
        "bench.watcher",
        args,
        watcher_module.READY_PREFIX,
        options.watcher_cpu,
        work / "watcher.log",
    )


# ---- measuring ---------------------------------------------------------------------------


def metric_sums(text: str | None) -> tuple[dict[str, float], set[str]]:
    """Each :data:`METRIC_PREFIXES` family summed over its labels (no buckets); the gauges."""
    sums: dict[str, float] = {}
    gauges: set[str] = set()
    if text is None:
        return sums, gauges
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = (line.split() + ["", "", "", ""])[:4]
            if kind == "gauge":
                gauges.add(name)
            continue
        if not line.startswith(METRIC_PREFIXES) or "_bucket" in line:
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        if name.endswith("_created"):
            continue  # a counter's creation time (prometheus_client), not a count
        try:
            sums[name] = sums.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return sums, gauges


def metric_changes(before: str | None, after: str | None) -> dict[str, float]:
    """Over a window: each reported counter's increase, each gauge's value at its end."""
    (a, _), (b, gauges) = metric_sums(before), metric_sums(after)
    return {
        name: round(b[name] if name in gauges else b[name] - a.get(name, 0.0), 3)
        for name in sorted(b)
    }


async def measure_window(
    options: Options,
    standin: Helper,
    watcher_pid: int,
    calls: int,
    *,
    window_s: float,
    api: BrokerApi | None = None,
) -> dict[str, Any]:
    """One window over the live calls: events, CPU, dispatch, probes (and broker metrics)."""
    metrics_before = await read_metrics(api) if api is not None else None
    await standin.get("/_standin/stats?reset=1")
    watcher_cpu, standin_cpu = CpuMeter(watcher_pid), CpuMeter(standin.pid)
    watcher_cpu.start()
    standin_cpu.start()
    await asyncio.sleep(window_s)
    stats = await standin.get("/_standin/stats")
    watcher_cpu.stop()
    standin_cpu.stop()
    metrics_after = await read_metrics(api) if api is not None else None
    events = int(stats["events_sent"])
    samples = [float(s) for s in stats["dispatch_s"]]
    dispatch = summarize_ms(samples)
    window: dict[str, Any] = {
        "calls": calls,
        "window_s": round(watcher_cpu.wall_s, 2),
        "events_sent": events,
        "events_per_s": round(events / stats["window_s"], 1) if stats["window_s"] else 0.0,
        "events_per_call_per_s": (
            round(events / stats["window_s"] / calls, 2) if stats["window_s"] and calls else None
        ),
        "cpu_utilization": round(watcher_cpu.utilization, 3),
        "cpu_us_per_event": round(watcher_cpu.cpu_s / events * 1e6, 1) if events else None,
        "standin_cpu_utilization": round(standin_cpu.utilization, 3),
        "dispatch_ms": dispatch,
        "function_calls": stats["function_calls"],
        "outputs": stats["outputs"],
        "outputs_repeated": stats["outputs_repeated"],
        "outstanding_at_end": stats["outstanding"],
        "outstanding_oldest_s": stats["outstanding_oldest_s"],
        "turns": stats["turns"],
        "turns_skipped": stats["turns_skipped"],
        "responses": stats["responses"],
        "probes": stats["probes"],
        "probes_per_call": round(stats["probes"] / calls, 2) if calls else None,
        "probes_per_call_max": stats["probes_per_call_max"],
        "errors_sent": stats["errors_sent"],
        "rss_kib": rss_kb(watcher_pid),
    }
    if api is not None:
        before = broker_dispatch_totals(metrics_before) if metrics_before else None
        after = broker_dispatch_totals(metrics_after) if metrics_after else None
        window["broker_dispatch_mean_ms"] = mean_ms_between(before, after)
        window["broker_metrics"] = metric_changes(metrics_before, metrics_after)
    p99 = dispatch["p99"]
    reasons = []
    if p99 is not None and p99 > options.saturated_p99_ms:
        reasons.append(f"dispatch p99 {p99:.0f} ms > {options.saturated_p99_ms:g} ms")
    if watcher_cpu.utilization >= options.saturated_cpu:
        reasons.append(f"CPU {watcher_cpu.utilization:.0%} of a core")
    if stats["function_calls"] and not samples:
        reasons.append("no function call answered in the window")
    window["saturated"] = bool(reasons)
    window["saturated_by"] = "; ".join(reasons) or None
    return window


async def settle_books(options: Options, standin: Helper) -> dict[str, Any]:
    """Stop new turns, wait for the outstanding function calls' outputs; the lifetime books.

    ``exact``: every function call the stand-in issued got exactly one output.
    """
    await standin.post("/_standin/pause")
    deadline = time.monotonic() + options.drain_max_s
    books: dict[str, Any] = await standin.get("/_standin/books")
    while time.monotonic() < deadline and (books["outstanding"] or books["responses_active"]):
        await asyncio.sleep(0.2)
        books = await standin.get("/_standin/books")
    books["exact"] = (
        books["outstanding"] == 0
        and books["outputs_repeated"] == 0
        and books["outputs_unknown"] == 0
        and books["outputs"] == books["function_calls"]
    )
    return books


def knee(steps: Sequence[dict[str, Any]], bound_ms: float) -> int | None:
    """The most calls at which dispatch p99 stayed within ``bound_ms`` (``None``: never)."""
    good = [
        s["calls"]
        for s in steps
        if s["dispatch_ms"]["p99"] is not None and s["dispatch_ms"]["p99"] <= bound_ms
    ]
    return max(good) if good else None


# ---- the watcher phase -------------------------------------------------------------------


async def watcher_phase(
    options: Options, work: Path, standin: Helper, steps: Sequence[int], deadline: float
) -> dict[str, Any]:
    watcher = await start_watcher(options, work, standin.base_url + "/v1")
    # The config the broker posts for its sessions: the same calls, whoever watches.
    session = provider_session_config("bench talking call (minimal watcher)")
    measured: list[dict[str, Any]] = []
    stopped_by = None
    baseline_kib = rss_kb(watcher.pid)
    try:
        await standin.get("/_standin/books?reset=1")
        await standin.post("/_standin/resume")
        live = 0
        for target in steps:
            if time.monotonic() > deadline:
                stopped_by = "the benchmark's time bound"
                break
            created = await standin.post(
                "/_standin/calls", {"n": target - live, "session": session}
            )
            attached = await watcher.post("/_watcher/attach", {"call_ids": created["call_ids"]})
            live += int(attached["attached"])
            await asyncio.sleep(options.warmup_s)
            window = await measure_window(
                options, standin, watcher.pid, live, window_s=options.window_s
            )
            window["target_calls"] = target
            window["rss_kib_per_call"] = (
                round((window["rss_kib"] - baseline_kib) / live, 1) if live else None
            )
            measured.append(window)
            if live < target:
                stopped_by = f"set-up: only {live} of {target} calls attached"
                break
        books = await settle_books(options, standin)
        counts = await watcher.get("/_watcher/stats")
    finally:
        with contextlib.suppress(Exception):
            await watcher.post("/_watcher/detach")
        await watcher.stop()
        with contextlib.suppress(Exception):
            await standin.post("/_standin/calls/end", {"all": True})
    return {
        "pinned": watcher.pinned,
        "cpu": options.watcher_cpu,
        "steps": measured,
        "stopped_by": stopped_by,
        "books": books,
        "watcher_counts": counts,
        "knee": knee(measured, options.knee_p99_ms),
    }


# ---- the broker phase --------------------------------------------------------------------


async def open_broker_calls(
    api: BrokerApi, count: int, *, concurrency: int, deadline: float
) -> tuple[int, list[str]]:
    """Create and offer ``count`` sessions through the broker; how many opened, the errors."""
    opened = 0
    errors: list[str] = []
    remaining = iter(range(count))

    async def worker() -> None:
        nonlocal opened
        for _ in remaining:
            if time.monotonic() > deadline or len(errors) > max(10, count // 20):
                return
            try:
                created = await api.create_session(
                    instructions=f"bench talking call {uuid.uuid4().hex[:12]}"
                )
                await api.offer(created, SIDEBAND_ONLY_OFFER)
                opened += 1
            except Exception as exc:  # counted and reported, never fatal
                errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")

    async with asyncio.TaskGroup() as tasks:
        for i in range(max(1, min(concurrency, count))):
            tasks.create_task(worker(), name=f"bench-talking-open-{i}")
    return opened, errors


async def broker_phase(
    options: Options,
    ctx: BenchContext,
    db: DatabaseKind,
    standin: Helper,
    deadline: float,
    *,
    profile: bool,
) -> dict[str, Any]:
    work = ctx.work_dir / NAME
    async with scratch_database(db, work) as db_url:
        broker = await start_broker(
            work,
            provider_base_url=standin.base_url + "/v1",
            database_url=db_url,
            name=f"broker-{db}",
            pyinstrument=profile and ctx.profile == "pyinstrument",
            cpu=options.broker_cpu,
        )
        api = BrokerApi(broker.base_url, connections=options.setup_concurrency + 8)
        try:
            return await _broker_steps(options, ctx, api, broker, standin, deadline, profile)
        finally:
            await api.close()
            await broker.stop()
            with contextlib.suppress(Exception):
                await standin.post("/_standin/calls/end", {"all": True})


async def _broker_steps(
    options: Options,
    ctx: BenchContext,
    api: BrokerApi,
    broker: BrokerProcess,
    standin: Helper,
    deadline: float,
    profile: bool,
) -> dict[str, Any]:
    baseline_kib = rss_kb(broker.pid)
    steps: list[dict[str, Any]] = []
    live = 0
    stopped_by: str | None = None
    profiled: dict[str, Any] | None = None
    await standin.get("/_standin/books?reset=1")
    await standin.post("/_standin/resume")
    for target in options.steps:
        if time.monotonic() > deadline:
            stopped_by = "the benchmark's time bound"
            break
        started = time.monotonic()
        opened, errors = await open_broker_calls(
            api,
            target - live,
            concurrency=options.setup_concurrency,
            deadline=min(deadline, started + options.setup_max_s),
        )
        setup_s = time.monotonic() - started
        live += opened
        await asyncio.sleep(options.warmup_s)
        window = await measure_window(
            options, standin, broker.pid, live, window_s=options.window_s, api=api
        )
        rss = window["rss_kib"]
        window |= {
            "target_calls": target,
            "setup_s": round(setup_s, 1),
            "setup_errors": len(errors),
            "setup_error_samples": errors[:5],
            "rss_kib_per_call": round((rss - baseline_kib) / live, 1) if live else None,
        }
        steps.append(window)
        if profile and ctx.profile is not None and not window["saturated"]:
            # The largest unsaturated step's profile is the one kept (each replaces the last).
            profiled = await _profile(options, ctx, broker, standin, live) or profiled
        if live < target and len(errors) > options.max_setup_error_share * target:
            stopped_by = f"set-up: {len(errors)} of {target - (live - opened)} sessions failed"
            break
        if live < target:
            stopped_by = f"set-up: only {live} of {target} sessions within the set-up bound"
            break
        if window["saturated"]:
            stopped_by = f"saturation at {live:,} calls ({window['saturated_by']})"
            break
    books = await settle_books(options, standin)
    result: dict[str, Any] = {
        "rss_baseline_mib": round(baseline_kib / 1024, 1),
        "steps": steps,
        "stopped_by": stopped_by,
        "books": books,
        "knee": knee(steps, options.knee_p99_ms),
        "log": str(broker.log),
    }
    if profiled is not None:
        result["profile"] = profiled
    return result


async def _profile(
    options: Options, ctx: BenchContext, broker: BrokerProcess, standin: Helper, live: int
) -> dict[str, Any] | None:
    assert ctx.profile is not None
    profiler = BrokerProfiler(
        ctx.profile,
        broker.pid,
        ctx.profiles_dir,
        ctx.work_dir / NAME,
        control=(
            (broker.profile_start, broker.profile_stop) if broker.profile_dir is not None else None
        ),
    )
    await profiler.start(PROFILES[0], max_seconds=options.profile_window_s + 30)
    await standin.get("/_standin/stats?reset=1")
    await asyncio.sleep(options.profile_window_s)
    stats = await standin.get("/_standin/stats")
    title = (
        f"talking: {live:,} talking calls for {options.profile_window_s:g} s "
        f"({stats['events_sent']:,} events, {stats['function_calls']} function calls; "
        "profiled, not timed)"
    )
    summary = await profiler.stop(PROFILES[0], title, calls=int(stats["function_calls"]) or None)
    if summary is not None:
        summary["calls"] = live
        summary["events"] = stats["events_sent"]
    return summary


# ---- the run -----------------------------------------------------------------------------


def run_bound_s(options: Options) -> float:
    """How long the helper processes may live: the run's bound, and each overload phase's."""
    overload = talking_overload.phase_bound_s(options) if options.overload else 0.0
    return options.max_seconds + 120 + overload * len(options.databases)


async def run(options: Options, ctx: BenchContext) -> dict[str, Any]:
    """Run the benchmark; write and return its JSON."""
    started = start_clock()
    # The minimal watcher's phase comes last and is cheap to set up: its share of the time
    # bound is kept for it, so a slow broker phase cannot leave its row empty.
    watcher_s = (options.warmup_s + options.window_s + 10) * (len(options.steps) + 1)
    end = time.monotonic() + options.max_seconds
    deadline = end - min(watcher_s, options.max_seconds / 2)
    work = ctx.work_dir / NAME
    standin = await start_standin(options, work)
    brokers: dict[str, Any] = {}
    try:
        for index, db in enumerate(options.databases):
            try:
                brokers[db] = await broker_phase(
                    options, ctx, db, standin, deadline, profile=index == 0
                )
            except DatabaseUnavailableError as exc:
                brokers[db] = {"skipped": str(exc)}
                continue
            if options.overload:
                # Bounded on its own (talking_overload.phase_bound_s): the time it took is
                # added to the stepping's and the watcher's bounds, not taken from them.
                began = time.monotonic()
                brokers[db]["overload"] = await talking_overload.overload_phase(
                    options,
                    ctx,
                    db,
                    standin,
                    brokers[db],
                    lambda: settle_books(options, standin),
                )
                spent = time.monotonic() - began
                deadline += spent
                end += spent
        measured = sorted(
            {s["calls"] for b in brokers.values() for s in b.get("steps", [])} | {options.steps[0]}
        )
        # The watcher is cheap: it is measured over every count a broker reached, and one more
        # step, so its row is never the shorter one (bounded by the run's own deadline).
        larger = [n for n in options.steps if n > measured[-1]][:1]
        watcher = await watcher_phase(options, work, standin, measured + larger, end)
    finally:
        await standin.stop()
    profile = next((b.pop("profile") for b in brokers.values() if "profile" in b), None)
    results: dict[str, Any] = {
        "talk": {
            "period_s": options.period_s,
            "transcript_deltas": len(standin_wire.SPOKEN),
            "delta_interval_s": options.delta_interval_s,
            "function_every": options.function_every,
        },
        "pinning": {
            "cores": os.cpu_count(),
            "broker": bool(taskset_prefix(options.broker_cpu)),
            "standin": standin.pinned,
            "watcher": watcher["pinned"],
        },
        "brokers": brokers,
        "watcher": watcher,
    }
    if profile is not None:
        results["profile"] = profile
    return finish(NAME, ctx, options, started, results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.talking", description=__doc__)
    add_common_args(parser, PRESETS)
    parser.add_argument("--steps", type=lambda s: tuple(int(x) for x in s.split(",")))
    parser.add_argument("--databases", type=lambda s: tuple(x for x in s.split(",") if x))
    parser.add_argument("--window-s", dest="window_s", type=float)
    args = parser.parse_args(argv)
    options = override(PRESETS[args.preset], args, ["steps", "databases", "window_s"])
    payload = asyncio.run(run(options, context_from_args(args)))
    print(json.dumps(payload["results"], indent=2, default=str))  # noqa: T201 - a command-line tool
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
