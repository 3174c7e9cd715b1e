"""Benchmark 1: the SDP offer → answer round trip through the broker vs. straight to the emulator.

Each pair is one offer posted straight to the emulator's ``/realtime/calls`` (multipart, the
session config the broker would send, the provider key) and one posted to the broker's
``/api/v1/sessions/{id}/realtime-offer`` (session created beforehand, untimed), in alternating
order, in the same run. Two kinds of offer are interleaved the same way:

* ``webrtc``: a real aiortc offer; the emulator answers with its own aiortc peer (the path a
  browser takes);
* ``sideband_only``: an offer the emulator answers at once without a peer, so what remains
  of the broker's round trip is the broker's own work.

The broker's added time is reported as ``broker - direct`` of each percentile, the median of
the per-pair differences, and as a ratio. The broker holds each SDP answer until the call's
sideband attached (``BROKER_SIDEBAND_ANSWER_WAIT_S``, so the page can do nothing unwatched); a
second broker with that wait off (its own scratch database) is timed in the same rotation,
and ``answer_wait_added_ms`` is what the wait costs (``broker - broker_nowait``, per triple).
Every call is hung up after it was timed (untimed),
after the broker's sideband attached, so calls never accumulate and no attach overlaps the
next measurement.

Run alone: ``python -m bench.offer_overhead [--preset smoke|medium|full] [--pairs N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import aiohttp

from .browser import make_offer
from .context import BenchContext, add_common_args, context_from_args, finish, override, start_clock
from .databases import scratch_database
from .probe import SIDEBAND_ONLY_OFFER, find_call, new_marker, wait_attached
from .profiling import BrokerProfiler
from .stack import (
    PROVIDER_KEY,
    BrokerApi,
    BrokerProcess,
    Emulator,
    provider_session_config,
    running_stack,
    start_broker,
)
from .stats import summarize_ms

NAME: Final = "offer_overhead"
PROFILES: Final = ("offer-broker",)


@dataclass(frozen=True)
class Options:
    """Sizes.

    ``pairs`` measured pairs per offer kind after ``warmup`` unmeasured ones, a ``pause_s``
    between requests, everything within ``max_seconds``; with ``--profile``,
    ``profile_offers`` more sideband-only offers through the broker under the profiler.
    """

    pairs: int = 200
    warmup: int = 10
    pause_s: float = 0.02
    profile_offers: int = 100
    max_seconds: float = 150.0


PRESETS: Final = {
    "full": Options(),
    "medium": Options(pairs=60, warmup=5),
    "smoke": Options(pairs=3, warmup=1, pause_s=0.0, profile_offers=3, max_seconds=40.0),
}


class _Timer:
    """Times offers along the two paths; hangs each call up afterwards (untimed)."""

    def __init__(
        self,
        emulator: Emulator,
        api: BrokerApi,
        http: aiohttp.ClientSession,
        nowait_api: BrokerApi | None = None,
    ) -> None:
        self._emulator = emulator
        self._api = api
        self._nowait_api = nowait_api
        self._http = http
        self.errors: list[str] = []

    async def _hangup(self, call_id: str) -> None:
        url = f"{self._emulator.bench_base_url}/realtime/calls/{call_id}/hangup"
        async with self._http.post(url, headers={"Authorization": f"Bearer {PROVIDER_KEY}"}):
            pass

    async def direct(self, sdp: str) -> float | None:
        form = aiohttp.FormData()
        form.add_field("sdp", sdp, content_type="application/sdp")
        form.add_field(
            "session",
            json.dumps(provider_session_config(new_marker()), separators=(",", ":")),
            content_type="application/json",
        )
        headers = {"Authorization": f"Bearer {PROVIDER_KEY}", "Accept": "application/sdp"}
        started = time.perf_counter()
        async with self._http.post(
            f"{self._emulator.bench_base_url}/realtime/calls", data=form, headers=headers
        ) as resp:
            await resp.text()
            elapsed = time.perf_counter() - started
            location = resp.headers.get("Location", "")
            if resp.status != 201:
                self.errors.append(f"direct: HTTP {resp.status}")
                return None
        await self._hangup(location.rsplit("/", 1)[-1])
        return elapsed

    async def broker(self, sdp: str) -> float | None:
        return await self._via(self._api, sdp)

    async def broker_nowait(self, sdp: str) -> float | None:
        """The same offer through the broker that answers without waiting for the attach."""
        assert self._nowait_api is not None
        return await self._via(self._nowait_api, sdp)

    async def _via(self, api: BrokerApi, sdp: str) -> float | None:
        marker = new_marker()
        created = await api.create_session(instructions=marker)
        started = time.perf_counter()
        await api.offer(created, sdp)
        elapsed = time.perf_counter() - started
        call = find_call(self._emulator.registry, marker)
        if call is None:
            self.errors.append("broker: no emulator call")
            return elapsed
        try:
            await wait_attached(call, timeout=15)
        except TimeoutError:
            self.errors.append("broker: sideband did not attach within 15 s")
        await self._hangup(call.call_id)
        return elapsed


def _compare(direct: list[float], broker: list[float], diffs: list[float]) -> dict[str, Any]:
    d, b = summarize_ms(direct), summarize_ms(broker)
    added: dict[str, float | None] = {}
    ratio: dict[str, float | None] = {}
    for q in ("p50", "p99"):
        dq, bq = d[q], b[q]
        added[q] = round(bq - dq, 3) if dq is not None and bq is not None else None
        ratio[q] = round(bq / dq, 3) if dq and bq is not None else None
    return {
        "direct_ms": d,
        "broker_ms": b,
        "added_ms": added,
        "ratio": ratio,
        "paired_added_ms": summarize_ms(diffs),
    }


async def run(options: Options, ctx: BenchContext) -> dict[str, Any]:
    """Run the benchmark; write and return its JSON."""
    started = start_clock()
    work = ctx.work_dir / NAME
    async with running_stack(ctx.db, work, pyinstrument=ctx.profile == "pyinstrument") as (
        api,
        broker,
        emulator,
    ):
        nowait_work = work / "nowait"
        nowait_work.mkdir(parents=True, exist_ok=True)
        async with scratch_database(ctx.db, nowait_work) as nowait_db:
            nowait = await start_broker(
                nowait_work,
                provider_base_url=emulator.bench_base_url,
                database_url=nowait_db,
                name="broker-nowait",
                extra_env={"BROKER_SIDEBAND_ANSWER_WAIT_S": "0"},
            )
            nowait_api = BrokerApi(nowait.base_url)
            try:
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
                    timer = _Timer(emulator, api, http, nowait_api)
                    results = await _measure(options, timer)
                    if ctx.profile is not None:
                        results["profile"] = await _profile(options, ctx, broker, timer)
            finally:
                await nowait_api.close()
                await nowait.stop()
    return finish(NAME, ctx, options, started, results)


async def _measure(options: Options, timer: _Timer) -> dict[str, Any]:
    kinds = {"webrtc": await make_offer(), "sideband_only": SIDEBAND_ONLY_OFFER}
    samples: dict[str, dict[str, list[float]]] = {
        kind: {"direct": [], "broker": [], "diff": [], "nowait": [], "wait_diff": []}
        for kind in kinds
    }
    paths: dict[str, Callable[[str], Awaitable[float | None]]] = {
        "direct": timer.direct,
        "broker": timer.broker,
        "broker_nowait": timer.broker_nowait,
    }
    deadline = time.monotonic() + options.max_seconds
    done = 0
    for i in range(options.warmup + options.pairs):
        if time.monotonic() > deadline:
            break
        for kind, sdp in kinds.items():
            # Rotate which path goes first, so none always follows another's work.
            paths_in_order = ("direct", "broker", "broker_nowait")
            order = paths_in_order[i % 3 :] + paths_in_order[: i % 3]
            timed: dict[str, float | None] = {}
            for path in order:
                try:
                    timed[path] = await paths[path](sdp)
                except (aiohttp.ClientError, RuntimeError, TimeoutError) as exc:
                    timer.errors.append(f"{path}: {type(exc).__name__}: {str(exc)[:200]}")
                    timed[path] = None
                await asyncio.sleep(options.pause_s)
            direct, broker = timed.get("direct"), timed.get("broker")
            nowait = timed.get("broker_nowait")
            if i < options.warmup or direct is None or broker is None:
                continue
            samples[kind]["direct"].append(direct)
            samples[kind]["broker"].append(broker)
            samples[kind]["diff"].append(broker - direct)
            if nowait is not None:
                samples[kind]["nowait"].append(nowait)
                samples[kind]["wait_diff"].append(broker - nowait)
        if i >= options.warmup:
            done += 1
    results: dict[str, Any] = {
        kind: {
            **_compare(s["direct"], s["broker"], s["diff"]),
            "broker_nowait_ms": summarize_ms(s["nowait"]),
            "answer_wait_added_ms": summarize_ms(s["wait_diff"]),
        }
        for kind, s in samples.items()
    }
    results["pairs_measured"] = done
    results["errors"] = timer.errors[:50]
    results["error_count"] = len(timer.errors)
    return results


async def _profile(
    options: Options, ctx: BenchContext, broker: BrokerProcess, timer: _Timer
) -> dict[str, Any] | None:
    profiler = BrokerProfiler(
        ctx.profile,
        broker.pid,
        ctx.profiles_dir,
        ctx.work_dir / NAME,
        control=(broker.profile_start, broker.profile_stop),
    )
    await profiler.start(PROFILES[0], max_seconds=options.max_seconds)
    timed = []
    for _ in range(options.profile_offers):
        elapsed = await timer.broker(SIDEBAND_ONLY_OFFER)
        if elapsed is not None:
            timed.append(elapsed)
        await asyncio.sleep(options.pause_s)
    title = (
        f"offer: {len(timed)} sideband-only offers through the broker, one at a time, each "
        "followed by its sideband attach and hangup (profiled, not timed)"
    )
    summary = await profiler.stop(PROFILES[0], title, calls=len(timed))
    if summary is not None:
        summary["offer_ms_while_profiled"] = summarize_ms(timed)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.offer_overhead", description=__doc__)
    add_common_args(parser, PRESETS)
    parser.add_argument("--pairs", type=int)
    args = parser.parse_args(argv)
    options = override(PRESETS[args.preset], args, ["pairs"])
    payload = asyncio.run(run(options, context_from_args(args)))
    print(json.dumps(payload["results"], indent=2))  # noqa: T201 - a command-line tool
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
