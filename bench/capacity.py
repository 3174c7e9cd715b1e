"""Benchmark 3: live sessions one broker process holds with periodic tool calls.

Steps up the live sessions (100 → 1,000 → 5,000 by default). At each step, once the new
sessions are up, every session calls the no-op tool once per ``period_s`` (5 s), at a
random phase, for ``window_s``; then the broker's RSS (``VmRSS``), its CPU time over the
window (user + system, every thread) per completed call, and the dispatch latency of those
calls (as in :mod:`bench.dispatch_latency`) are recorded. A session waits for its call
before the next one, and stops calling for the window after a call that did not complete
within ``round_timeout_s``, so an overloaded broker is left at most one queued call per
session; the next step starts once the broker has worked that off (``drain_s``, at most
``drain_max_s``). The stepping stops early at a
machine limit: sessions that cannot be set up, or the broker's RSS above ``rss_limit_mib``.
A step where fewer than ``min_completed_share`` of the periodic calls complete, or where the
broker used 90% of a core, is marked ``saturated`` (its throughput is the limit there) but
does not stop the stepping.

The emulator side is light on purpose, so the broker is what saturates: calls are
sideband-only (no WebRTC peer, no audio; ``emulator.admin.SidebandOnlyCall``), the model
streams without pauses, and the driver starts each call in-process instead of over a data
channel. The emulator still runs a real sideband per call, the scripted model and its
fan-out, in this process; its CPU use is reported next to the broker's, so which one was
the bottleneck is visible.

Run alone: ``python -m bench.capacity [--preset smoke|medium|full] [--steps 100,1000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from .context import BenchContext, add_common_args, context_from_args, finish, override, start_clock
from .probe import DispatchProbe, LiveSession, grow_sessions
from .profiling import BrokerProfiler
from .stack import (
    BrokerApi,
    BrokerProcess,
    Emulator,
    broker_dispatch_totals,
    mean_ms_between,
    read_metrics,
    running_stack,
    session_probes_total,
)
from .stats import CpuMeter, peak_rss_kb, rss_kb, summarize_ms

NAME: Final = "capacity"
PROFILES: Final = ("capacity-loaded",)
SATURATED_UTILIZATION: Final = 0.9
"""A step whose window kept the broker's event loop this busy is saturated."""
QUIET_UTILIZATION: Final = 0.25
"""Below this CPU share (of one core) the broker counts as done with a window's backlog."""


@dataclass(frozen=True)
class Options:
    """Sizes and limits (see the module docstring).

    ``max_seconds`` bounds the whole run, ``setup_max_s`` the setup of one step.
    """

    steps: tuple[int, ...] = (100, 1000, 5000)
    period_s: float = 5.0
    window_s: float = 20.0
    round_timeout_s: float = 10.0
    setup_concurrency: int = 32
    setup_max_s: float = 240.0
    settle_s: float = 3.0
    drain_max_s: float = 45.0
    max_setup_error_share: float = 0.05
    min_completed_share: float = 0.9
    rss_limit_mib: int = 6144
    profile_window_s: float = 15.0
    max_seconds: float = 480.0
    seed: int = 8


PRESETS: Final = {
    "full": Options(),
    "medium": Options(steps=(100, 500, 1500), window_s=15.0, profile_window_s=10.0),
    "smoke": Options(
        steps=(3, 6),
        period_s=0.5,
        window_s=1.5,
        settle_s=0.2,
        drain_max_s=5.0,
        profile_window_s=1.0,
        max_seconds=60.0,
    ),
}


@dataclass
class _Window:
    samples: list[float]
    timeouts: int = 0
    started: int = 0


async def _periodic_load(
    probes: Sequence[DispatchProbe], options: Options, window_s: float, rng: random.Random
) -> _Window:
    """Every probe calls the tool once per period, at a random phase, for ``window_s``."""
    window = _Window(samples=[])
    begin = time.monotonic()
    end = begin + window_s
    max_rounds = math.ceil(window_s / options.period_s) + 1

    async def one_session(probe: DispatchProbe, phase: float) -> None:
        for k in range(max_rounds):
            at = begin + phase + k * options.period_s
            if at >= end:
                return
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            window.started += 1
            sample = await probe.round(options.round_timeout_s)
            if sample is None:
                # Saturated: this session's call is still queued in the broker. Asking for
                # more would only grow the backlog the next step has to wait out.
                window.timeouts += 1
                return
            window.samples.append(sample)

    async with asyncio.TaskGroup() as tasks:
        for i, probe in enumerate(probes):
            phase = rng.uniform(0, options.period_s)
            tasks.create_task(one_session(probe, phase), name=f"bench-load-{i}")
    return window


def _dispatch_and_probes(metrics: str | None) -> tuple[tuple[int, float] | None, int | None]:
    """The dispatch totals and the probe count of one ``/metrics`` read (``None``: no read)."""
    if metrics is None:
        return None, None
    return broker_dispatch_totals(metrics), session_probes_total(metrics)


async def _measure_window(
    options: Options,
    api: BrokerApi,
    broker: BrokerProcess,
    probes: Sequence[DispatchProbe],
    window_s: float,
    rng: random.Random,
    *,
    drain: bool = True,
) -> dict[str, Any]:
    # One /metrics read at each end of the window gives both the dispatch totals and the
    # probe count.
    metrics_before = await read_metrics(api)
    broker_cpu, own_cpu = CpuMeter(broker.pid), CpuMeter(os.getpid())
    broker_cpu.start()
    own_cpu.start()
    window = await _periodic_load(probes, options, window_s, rng)
    broker_cpu.stop()
    own_cpu.stop()
    drain_s = await _wait_quiet(broker.pid, options.drain_max_s) if drain else 0.0
    metrics_after = await read_metrics(api)
    before, probes_before = _dispatch_and_probes(metrics_before)
    after, probes_after = _dispatch_and_probes(metrics_after)
    completed = len(window.samples)
    offered = len(probes) * window_s / options.period_s
    return {
        "calls_offered": round(offered),
        "calls_started": window.started,
        "calls_completed": completed,
        "timeouts": window.timeouts,
        "completed_per_s": round(completed / broker_cpu.wall_s, 1) if broker_cpu.wall_s else 0,
        "dispatch_ms": summarize_ms(window.samples),
        "broker_dispatch_mean_ms": mean_ms_between(before, after),
        "broker_cpu_utilization": round(broker_cpu.utilization, 3),
        "broker_cpu_ms_per_call": (
            round(broker_cpu.cpu_s / completed * 1000, 3) if completed else None
        ),
        "driver_and_emulator_cpu_utilization": round(own_cpu.utilization, 3),
        "window_s": round(broker_cpu.wall_s, 1),
        "drain_s": round(drain_s, 1),
        # Config probes: one before each of the broker's response.create, plus the periodic
        # ones (every BROKER_SESSION_PROBE_INTERVAL_S per live call).
        "session_probes": (
            probes_after - probes_before
            if probes_before is not None and probes_after is not None
            else None
        ),
    }


async def _wait_quiet(pid: int, max_s: float) -> float:
    """Wait until the broker is nearly idle (its backlog done), at most ``max_s``; how long."""
    started = time.monotonic()
    while time.monotonic() - started < max_s:
        meter = CpuMeter(pid)
        meter.start()
        await asyncio.sleep(0.5)
        meter.stop()
        if meter.utilization < QUIET_UTILIZATION:
            break
    return time.monotonic() - started


async def run(options: Options, ctx: BenchContext) -> dict[str, Any]:
    """Run the benchmark; write and return its JSON."""
    started = start_clock()
    deadline = time.monotonic() + options.max_seconds
    try:
        async with running_stack(
            ctx.db,
            ctx.work_dir / NAME,
            pyinstrument=ctx.profile == "pyinstrument",
            connections=options.setup_concurrency + 8,
        ) as (api, broker, emulator):
            results = await _steps(options, ctx, api, broker, emulator, deadline)
    finally:
        gc.unfreeze()
    return finish(NAME, ctx, options, started, results)


async def _steps(
    options: Options,
    ctx: BenchContext,
    api: BrokerApi,
    broker: BrokerProcess,
    emulator: Emulator,
    deadline: float,
) -> dict[str, Any]:
    rng = random.Random(options.seed)
    baseline_kib = rss_kb(broker.pid)
    sessions: list[LiveSession] = []
    steps: list[dict[str, Any]] = []
    limit: str | None = None
    for target in options.steps:
        growth = await grow_sessions(
            api,
            emulator.registry,
            sessions,
            target,
            concurrency=options.setup_concurrency,
            setup_max_s=options.setup_max_s,
            deadline=deadline,
        )
        # Everything set up so far lives to the end: no collector pass should walk it again
        # in the middle of a sample (the driver's process also runs the emulator).
        gc.collect()
        gc.freeze()
        await asyncio.sleep(options.settle_s)
        idle_kib = rss_kb(broker.pid)
        window = await _measure_window(
            options, api, broker, [s.probe for s in sessions], options.window_s, rng
        )
        loaded_kib = rss_kb(broker.pid)
        live = len(sessions)
        steps.append(
            {
                "target_sessions": target,
                "live_sessions": live,
                **growth.as_json(),
                "broker_rss_idle_mib": round(idle_kib / 1024, 1),
                "broker_rss_mib": round(loaded_kib / 1024, 1),
                "broker_rss_per_session_kib": (
                    round((loaded_kib - baseline_kib) / live, 1) if live else None
                ),
                **window,
            }
        )
        # One event loop: near a full core, calls queue and latency is the backlog's.
        steps[-1]["saturated"] = (
            window["calls_completed"] < options.min_completed_share * window["calls_offered"]
            or window["broker_cpu_utilization"] >= SATURATED_UTILIZATION
        )
        limit = _limit(options, target, live, len(growth.errors), loaded_kib)
        if limit is None and time.monotonic() > deadline:
            limit = "the benchmark's time bound"
        if limit is not None:
            break
    results: dict[str, Any] = {
        "broker_rss_baseline_mib": round(baseline_kib / 1024, 1),
        "broker_rss_peak_mib": round(peak_rss_kb(broker.pid) / 1024, 1),
        "steps": steps,
        "stopped_by": limit,
    }
    if ctx.profile is not None and sessions:
        results["profile"] = await _profile(options, ctx, api, broker, sessions, rng)
    return results


def _limit(
    options: Options,
    target: int,
    live: int,
    setup_errors: int,
    rss_kib: int,
) -> str | None:
    """Why stepping must stop here (a machine limit), or ``None``.

    A broker that cannot keep up with the calls (see ``saturated``) still steps on: how many
    sessions it holds, and in how much memory, is worth knowing either way.
    """
    if live < target and setup_errors > options.max_setup_error_share * target:
        return f"session setup: {setup_errors} of {target} sessions failed"
    if live < target:
        return f"session setup: only {live} of {target} sessions within the setup bound"
    if rss_kib > options.rss_limit_mib * 1024:
        return f"memory: broker RSS above {options.rss_limit_mib} MiB"
    return None


async def _profile(
    options: Options,
    ctx: BenchContext,
    api: BrokerApi,
    broker: BrokerProcess,
    sessions: Sequence[LiveSession],
    rng: random.Random,
) -> dict[str, Any] | None:
    profiler = BrokerProfiler(
        ctx.profile,
        broker.pid,
        ctx.profiles_dir,
        ctx.work_dir / NAME,
        control=(broker.profile_start, broker.profile_stop),
    )
    await profiler.start(PROFILES[0], max_seconds=options.profile_window_s + 30)
    # No drain after it: the broker stops next, and the profile has what it needs.
    window = await _measure_window(
        options,
        api,
        broker,
        [s.probe for s in sessions],
        options.profile_window_s,
        rng,
        drain=False,
    )
    title = (
        f"capacity: {len(sessions)} live sessions, one tool call each per "
        f"{options.period_s:g} s for {options.profile_window_s:g} s ({window['calls_started']} "
        f"calls started, {window['calls_completed']} completed; profiled, not timed)"
    )
    summary = await profiler.stop(PROFILES[0], title, calls=window["calls_started"])
    if summary is not None:
        summary["window_while_profiled"] = window
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__)
    add_common_args(parser, PRESETS)
    parser.add_argument("--steps", type=lambda s: tuple(int(x) for x in s.split(",")))
    parser.add_argument("--window-s", dest="window_s", type=float)
    args = parser.parse_args(argv)
    options = override(PRESETS[args.preset], args, ["steps", "window_s"])
    payload = asyncio.run(run(options, context_from_args(args)))
    print(json.dumps(payload["results"], indent=2))  # noqa: T201 - a command-line tool
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
