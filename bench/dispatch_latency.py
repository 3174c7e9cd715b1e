"""Benchmark 2: tool dispatch latency, sideband and bridge, at 1, 100 and 1,000 live sessions.

A sample is the time from the emulator sending ``response.function_call_arguments.done`` to
the emulator receiving the broker's ``function_call_output`` for that call (see
:mod:`bench.probe`), for the no-op tool. Sessions are sideband-only calls at the emulator
(no WebRTC peer: ``emulator.admin.SidebandOnlyCall``) made through the broker's real path:
session, offer, ``/realtime/calls``, sideband attach. At each step the broker holds that many
live sessions, idle but for the measured calls, which go one at a time, round robin over the
sessions, so each sample is the latency of one call and the step shows what the number of
live sessions costs it (the capacity benchmark measures under periodic load).

The bridge path: aiortc browsers on real WebRTC calls (sessions with ``"sideband": false``)
run the same call the way the demo page does in bridge mode; it is measured right after the
first step, and compared with it as a ratio sideband/bridge.

With ``--profile`` one more window at the last step runs under the profiler; its summary
goes to ``bench/profiles/dispatch-sideband.txt`` (the timed steps are never profiled).

Run alone: ``python -m bench.dispatch_latency [--preset smoke|medium|full]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from .browser import BenchBrowser
from .context import BenchContext, add_common_args, context_from_args, finish, override, start_clock
from .probe import DispatchProbe, LiveSession, find_call, grow_sessions, new_marker
from .profiling import BrokerProfiler
from .stack import (
    BrokerApi,
    BrokerProcess,
    Emulator,
    mean_ms_between,
    read_dispatch_totals,
    running_stack,
)
from .stats import CpuMeter, rss_kb, summarize_ms

NAME: Final = "dispatch_latency"
PROFILES: Final = ("dispatch-sideband",)


@dataclass(frozen=True)
class Options:
    """Sizes.

    ``live_sessions``: the steps; ``rounds`` measured calls per step after ``warmup``; the
    bridge gets ``bridge_browsers`` browsers and ``bridge_rounds`` calls; the profiled
    window (``--profile``) ``profile_rounds`` calls. Everything stops at ``max_seconds``;
    the setup of one step at ``setup_max_s``.
    """

    live_sessions: tuple[int, ...] = (1, 100, 1000)
    rounds: int = 300
    warmup: int = 20
    round_timeout_s: float = 10.0
    bridge_browsers: int = 4
    bridge_rounds: int = 200
    setup_concurrency: int = 24
    setup_max_s: float = 240.0
    settle_s: float = 2.0
    profile_rounds: int = 300
    max_seconds: float = 480.0


PRESETS: Final = {
    "full": Options(),
    "medium": Options(live_sessions=(1, 50, 300), rounds=150, bridge_browsers=2, bridge_rounds=60),
    "smoke": Options(
        live_sessions=(1, 3),
        rounds=5,
        warmup=1,
        bridge_browsers=1,
        bridge_rounds=3,
        settle_s=0.2,
        profile_rounds=5,
        max_seconds=60.0,
    ),
}


async def _rounds(
    probes: Sequence[DispatchProbe], count: int, round_timeout: float, deadline: float
) -> tuple[list[float], int]:
    """``count`` calls one after another, round robin; the samples and the timeouts."""
    samples: list[float] = []
    timeouts = 0
    for k in range(count):
        if time.monotonic() > deadline:
            break
        sample = await probes[k % len(probes)].round(round_timeout)
        if sample is None:
            timeouts += 1
        else:
            samples.append(sample)
    return samples, timeouts


async def _measure_step(
    options: Options,
    api: BrokerApi,
    broker: BrokerProcess,
    probes: Sequence[DispatchProbe],
    deadline: float,
) -> dict[str, Any]:
    # Warm-up calls start where the measured ones will not (round robin from the end).
    await _rounds(list(reversed(probes)), options.warmup, options.round_timeout_s, deadline)
    before = await read_dispatch_totals(api)
    cpu = CpuMeter(broker.pid)
    cpu.start()
    samples, timeouts = await _rounds(probes, options.rounds, options.round_timeout_s, deadline)
    cpu.stop()
    after = await read_dispatch_totals(api)
    calls = len(samples) + timeouts
    return {
        "rounds": calls,
        "timeouts": timeouts,
        "dispatch_ms": summarize_ms(samples),
        "broker_dispatch_mean_ms": mean_ms_between(before, after),
        "broker_cpu_ms_per_call": round(cpu.cpu_s / calls * 1000, 3) if calls else None,
        "broker_rss_mib": round(rss_kb(broker.pid) / 1024, 1),
    }


async def _bridge(
    options: Options, api: BrokerApi, emulator: Emulator, deadline: float
) -> dict[str, Any]:
    """The bridge path: aiortc browsers on real calls run the same calls via the broker."""
    browsers: list[BenchBrowser] = []
    probes: list[DispatchProbe] = []
    errors: list[str] = []
    samples: list[float] = []
    timeouts = 0
    try:
        for _ in range(options.bridge_browsers):
            marker = new_marker()
            created = await api.create_session(sideband=False, instructions=marker)
            browser = BenchBrowser(api, created)
            browsers.append(browser)
            await browser.connect(await api.offer(created, await browser.create_offer()))
            call = find_call(emulator.registry, marker)
            if call is None:
                raise LookupError("no emulator call for a bridge session")
            probes.append(DispatchProbe(call))
        await _rounds(probes, options.warmup, options.round_timeout_s, deadline)
        samples, timeouts = await _rounds(
            probes, options.bridge_rounds, options.round_timeout_s, deadline
        )
    except Exception as exc:  # the sideband steps are still worth reporting
        errors.append(f"setup: {type(exc).__name__}: {str(exc)[:200]}")
    finally:
        for browser in browsers:
            errors += browser.bridge_errors
            await browser.close()
        for probe in probes:
            await probe.call.end("hangup")
    return {
        "browsers": len(browsers),
        "rounds": len(samples) + timeouts,
        "timeouts": timeouts,
        "dispatch_ms": summarize_ms(samples),
        "errors": errors[:20],
    }


def _ratio(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for q in ("p50", "p99"):
        x, y = a.get(q), b.get(q)
        out[q] = round(x / y, 3) if x is not None and y else None
    return out


async def run(options: Options, ctx: BenchContext) -> dict[str, Any]:
    """Run the benchmark; write and return its JSON."""
    started = start_clock()
    deadline = time.monotonic() + options.max_seconds
    async with running_stack(
        ctx.db,
        ctx.work_dir / NAME,
        pyinstrument=ctx.profile == "pyinstrument",
        connections=options.setup_concurrency + 8,
    ) as (api, broker, emulator):
        results = await _steps(options, ctx, api, broker, emulator, deadline)
    return finish(NAME, ctx, options, started, results)


async def _steps(
    options: Options,
    ctx: BenchContext,
    api: BrokerApi,
    broker: BrokerProcess,
    emulator: Emulator,
    deadline: float,
) -> dict[str, Any]:
    sessions: list[LiveSession] = []
    steps: list[dict[str, Any]] = []
    bridge: dict[str, Any] | None = None
    for target in options.live_sessions:
        growth = await grow_sessions(
            api,
            emulator.registry,
            sessions,
            target,
            concurrency=options.setup_concurrency,
            setup_max_s=options.setup_max_s,
            deadline=deadline,
        )
        # The driver's own garbage must not pause the emulator in the middle of a sample.
        gc.collect()
        await asyncio.sleep(options.settle_s)
        step = await _measure_step(options, api, broker, [s.probe for s in sessions], deadline)
        steps.append(
            {
                "target_sessions": target,
                "live_sessions": len(sessions),
                **growth.as_json(),
                **step,
            }
        )
        if bridge is None and options.bridge_browsers > 0:
            bridge = await _bridge(options, api, emulator, deadline)
            bridge["live_sideband_sessions"] = len(sessions)
        if len(sessions) < target or time.monotonic() > deadline:
            break  # a machine limit (or the time bound): larger steps cannot do better
    results: dict[str, Any] = {"steps": steps, "bridge": bridge}
    if bridge is not None and steps:
        results["sideband_over_bridge"] = _ratio(steps[0]["dispatch_ms"], bridge["dispatch_ms"])
    if ctx.profile is not None and sessions:
        results["profile"] = await _profile(options, ctx, broker, sessions, deadline)
    return results


async def _profile(
    options: Options,
    ctx: BenchContext,
    broker: BrokerProcess,
    sessions: Sequence[LiveSession],
    deadline: float,
) -> dict[str, Any] | None:
    profiler = BrokerProfiler(
        ctx.profile,
        broker.pid,
        ctx.profiles_dir,
        ctx.work_dir / NAME,
        control=(broker.profile_start, broker.profile_stop),
    )
    probes = [s.probe for s in sessions]
    await profiler.start(PROFILES[0], max_seconds=options.max_seconds)
    samples, timeouts = await _rounds(
        probes, options.profile_rounds, options.round_timeout_s, deadline + 60
    )
    title = (
        f"dispatch: {len(samples)} sideband tool calls, one at a time, "
        f"at {len(sessions)} live sessions (profiled, not timed)"
    )
    summary = await profiler.stop(PROFILES[0], title, calls=len(samples) + timeouts)
    if summary is not None:
        summary["dispatch_ms_while_profiled"] = summarize_ms(samples)
        summary["timeouts"] = timeouts
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dispatch_latency", description=__doc__)
    add_common_args(parser, PRESETS)
    parser.add_argument("--rounds", type=int)
    parser.add_argument(
        "--live-sessions", dest="live_sessions", type=lambda s: tuple(int(x) for x in s.split(","))
    )
    args = parser.parse_args(argv)
    options = override(PRESETS[args.preset], args, ["rounds", "live_sessions"])
    payload = asyncio.run(run(options, context_from_args(args)))
    print(json.dumps(payload["results"], indent=2))  # noqa: T201 - a command-line tool
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
