"""Benchmark 6: two broker instances against one on one PostgreSQL database (issue 17).

The talking-calls load of :mod:`bench.talking` (the stand-in provider, its own process pinned
to core 1, every call talking: a turn every 6 s, a function call to the no-op tool every third
turn) is watched, on a fresh PostgreSQL database per phase, by

* **one** ``broker serve`` process, then
* **two** ``broker serve`` processes sharing the database (the same ``BROKER_SIGNING_KEY`` and
  ``BROKER_ADMIN_KEY``, ``BROKER_INSTANCE_ID`` ``bench-2a`` and ``bench-2b``): sessions are
  created and offered round-robin, each on one instance, and a call is owned (its
  ``call_leases`` row) by the instance that took its offer.

Both phases step through the same numbers of calls (100 → 200 → 400 by default; the calls of
a step stay for the next) and measure each step as the talking benchmark does, over one
window once its calls talk: the events the stand-in sent, the dispatch latency on the
stand-in's clock (the function call's ``response.done`` sent → its ``function_call_output``
received), the brokers' CPU time (all of them, summed) per event and their share of a core,
their RSS per call, the CPU of the database's own backends (``pg_stat_activity`` for this
database), and, per instance, the calls it owns, its CPU and its own dispatch timer. The ratio
two/one is reported per step. The minimal watcher (:mod:`bench.watcher`) gives the floor at
the same numbers of calls, in a shorter window.

**Pinning.** The brokers share core 0 (the stand-in keeps core 1 to itself, as in the talking
benchmark), so two processes cannot be faster than one here: the ratio measures what a
second instance *costs* (two event loops, two connection pools, two event-log writers each
committing half the calls, every ``NOTIFY`` delivered to both, the lease renewals), not the
speed-up a second machine would bring. PostgreSQL is not pinned (not ours to pin).

**Books** per phase: the stand-in stops starting turns and every function call it issued must
have had exactly one output; the database must hold each as one ``succeeded`` tool call with
its output injected; every call's lease must name the instance that took its offer, with its
first token (never moved); no broker log line at error level, and none naming a lost lease.
Then the stand-in ends the calls, the brokers see them go, and all brokers are stopped
together (stopping one first would hand its calls to the other).

Run alone: ``python -m bench.instances [--preset smoke|medium|full] [--steps 100,200]
[--broker-cpus 0,1] [--takers 1] [--no-watcher]`` (``--takers 1``: every call on the first
instance, the second only present).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from . import standin_wire, talking
from .context import BenchContext, add_common_args, context_from_args, finish, override, start_clock
from .databases import DatabaseUnavailableError, scratch_database
from .probe import SIDEBAND_ONLY_OFFER
from .stack import (
    BrokerApi,
    BrokerProcess,
    broker_dispatch_totals,
    mean_ms_between,
    read_metrics,
    start_broker,
    taskset_prefix,
)
from .stats import CpuMeter, cpu_seconds, rss_kb, summarize_ms
from .talking import Helper, metric_changes, settle_books
from .talking_overload import log_problems, metric_total

NAME: Final = "instances"
PROFILES: Final[tuple[str, ...]] = ()
LEASE_LOST: Final = "lease lost"
"""In a broker's log: another instance took one of its calls (never expected here)."""


@dataclass(frozen=True)
class Options:
    """Sizes, the talking profile and limits (see the module docstring).

    ``max_seconds`` bounds the whole run; ``setup_max_s`` one step's set-up.
    """

    steps: tuple[int, ...] = (100, 200, 400)
    instances: tuple[int, ...] = (1, 2)
    broker_cpus: tuple[int, ...] = (0,)
    """The cores the brokers are pinned to, in turn (one entry: all on that core)."""
    takers: int | None = None
    """Offers go round-robin to the first this many instances of a phase (``None``: all).
    ``1`` measures what a second instance costs by its presence alone."""
    period_s: float = 6.0
    delta_interval_s: float = 0.06
    speech_s: float = 1.2
    function_every: int = 3
    window_s: float = 15.0
    warmup_s: float = 6.0
    watcher: bool = True
    watcher_window_s: float = 5.0
    setup_concurrency: int = 32
    setup_max_s: float = 60.0
    max_setup_error_share: float = 0.05
    drain_max_s: float = 20.0
    saturated_p99_ms: float = 1000.0
    saturated_cpu: float = 0.95
    knee_p99_ms: float = 10.0
    standin_cpu: int = 1
    watcher_cpu: int = 0
    lease_ttl_s: float = 10.0
    max_seconds: float = 300.0
    seed: int = 17


PRESETS: Final = {
    "full": Options(),
    "medium": Options(steps=(50, 100, 200), window_s=8.0, watcher_window_s=4.0, max_seconds=200.0),
    "smoke": Options(
        steps=(3, 6),
        period_s=1.0,
        delta_interval_s=0.01,
        speech_s=0.1,
        window_s=2.0,
        warmup_s=1.0,
        watcher_window_s=1.0,
        setup_max_s=30.0,
        drain_max_s=10.0,
        max_seconds=120.0,
    ),
}


def talking_options(o: Options) -> talking.Options:
    """The talking benchmark's options for the parts shared with it (stand-in, watcher, books)."""
    return talking.Options(
        steps=o.steps,
        databases=("postgres",),
        period_s=o.period_s,
        delta_interval_s=o.delta_interval_s,
        speech_s=o.speech_s,
        function_every=o.function_every,
        window_s=o.watcher_window_s,
        warmup_s=o.warmup_s,
        drain_max_s=o.drain_max_s,
        saturated_p99_ms=o.saturated_p99_ms,
        saturated_cpu=o.saturated_cpu,
        knee_p99_ms=o.knee_p99_ms,
        standin_cpu=o.standin_cpu,
        watcher_cpu=o.watcher_cpu,
        max_seconds=o.max_seconds,
        seed=o.seed,
        overload=False,
    )


# ---- the database, seen from outside the brokers -----------------------------------------


class Database:
    """The phase's database: its books, its leases and its backends' CPU (asyncpg, direct)."""

    def __init__(self, url: str, connection: Any) -> None:
        self.name = url.rsplit("/", 1)[1]
        self.connection = connection

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, url: str) -> AsyncIterator[Database]:
        import asyncpg  # type: ignore[import-untyped]  # present: scratch_database needs it

        connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            yield cls(url, connection)
        finally:
            await connection.close()

    async def backends(self) -> list[int]:
        """The server processes connected to this database (ours excluded)."""
        rows = await self.connection.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            self.name,
        )
        return [int(r["pid"]) for r in rows]

    async def owners(self) -> dict[str, int]:
        rows = await self.connection.fetch(
            "SELECT owner_id, count(*) AS n FROM call_leases GROUP BY owner_id ORDER BY owner_id"
        )
        return {str(r["owner_id"]): int(r["n"]) for r in rows}

    async def leases(self) -> dict[str, tuple[str, int]]:
        rows = await self.connection.fetch("SELECT session_id, owner_id, token FROM call_leases")
        return {str(r["session_id"]): (str(r["owner_id"]), int(r["token"])) for r in rows}

    async def tool_calls(self) -> dict[str, int]:
        """Tool calls by status, and ``not_injected``: succeeded, output not yet at the provider."""
        rows = await self.connection.fetch(
            "SELECT status, count(*) AS n, count(*) FILTER (WHERE injected_at IS NULL) AS open"
            " FROM tool_calls GROUP BY status"
        )
        counts = {str(r["status"]): int(r["n"]) for r in rows}
        counts["not_injected"] = sum(int(r["open"]) for r in rows if r["status"] == "succeeded")
        return counts


class BackendCpu:
    """CPU time of the database's backends over a window (those alive at its end)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._start: dict[int, float] = {}
        self._wall0 = 0.0
        self.cpu_s = 0.0
        self.wall_s = 0.0
        self.backends = 0

    async def start(self) -> None:
        self._start = {pid: cpu_seconds(pid) for pid in await self.db.backends()}
        self._wall0 = time.monotonic()

    async def stop(self) -> None:
        pids = await self.db.backends()
        self.wall_s = time.monotonic() - self._wall0
        self.cpu_s = sum(cpu_seconds(pid) - self._start.get(pid, 0.0) for pid in pids)
        self.backends = len(pids)


# ---- the brokers -------------------------------------------------------------------------


@dataclass
class Instance:
    """One broker process of a phase, its API client and what it was given to own."""

    instance_id: str
    broker: BrokerProcess
    api: BrokerApi
    cpu: int | None
    baseline_kib: int
    sessions: list[str] = field(default_factory=list)


async def start_instances(
    options: Options, work: Path, db_url: str, provider: str, count: int
) -> list[Instance]:
    """Start ``count`` brokers on the database together; each serving before this returns."""
    ids = ["bench-1"] if count == 1 else [f"bench-{count}{chr(97 + i)}" for i in range(count)]
    cpus = [options.broker_cpus[i % len(options.broker_cpus)] for i in range(count)]
    started = await asyncio.gather(
        *(
            start_broker(
                work,
                provider_base_url=provider,
                database_url=db_url,
                name=f"broker-{instance_id}",
                cpu=cpu,
                extra_env={
                    "BROKER_INSTANCE_ID": instance_id,
                    "BROKER_LEASE_TTL_S": str(options.lease_ttl_s),
                },
            )
            for instance_id, cpu in zip(ids, cpus, strict=True)
        ),
        return_exceptions=True,
    )
    brokers = [b for b in started if isinstance(b, BrokerProcess)]
    failed = [b for b in started if isinstance(b, BaseException)]
    if failed:
        await asyncio.gather(*(b.stop() for b in brokers), return_exceptions=True)
        raise failed[0]
    return [
        Instance(
            instance_id,
            broker,
            BrokerApi(broker.base_url, connections=options.setup_concurrency + 8),
            cpu,
            rss_kb(broker.pid),
        )
        for instance_id, broker, cpu in zip(ids, brokers, cpus, strict=True)
    ]


async def open_calls(
    instances: Sequence[Instance], first: int, count: int, *, concurrency: int, deadline: float
) -> tuple[int, list[str]]:
    """Create and offer ``count`` sessions, the ``n``-th (from ``first``) on instance ``n % k``.

    How many opened, and the errors.
    """
    opened = 0
    errors: list[str] = []
    remaining = iter(range(first, first + count))

    async def worker() -> None:
        nonlocal opened
        for n in remaining:
            if time.monotonic() > deadline or len(errors) > max(10, count // 20):
                return
            instance = instances[n % len(instances)]
            try:
                created = await instance.api.create_session(
                    instructions=f"bench instances call {uuid.uuid4().hex[:12]}"
                )
                await instance.api.offer(created, SIDEBAND_ONLY_OFFER)
                instance.sessions.append(created.session_id)
                opened += 1
            except Exception as exc:  # counted and reported, never fatal
                errors.append(f"{instance.instance_id}: {type(exc).__name__}: {str(exc)[:200]}")

    async with asyncio.TaskGroup() as tasks:
        for i in range(max(1, min(concurrency, count))):
            tasks.create_task(worker(), name=f"bench-instances-open-{i}")
    return opened, errors


# ---- measuring ---------------------------------------------------------------------------


def _per_event_us(cpu_s: float, events: int) -> float | None:
    return round(cpu_s / events * 1e6, 1) if events else None


async def measure_window(
    options: Options,
    standin: Helper,
    instances: Sequence[Instance],
    db: Database,
    calls: int,
) -> dict[str, Any]:
    """One window over the live calls: events, dispatch, the brokers' and database's CPU."""
    before = [await read_metrics(i.api) for i in instances]
    await standin.get("/_standin/stats?reset=1")
    meters = [CpuMeter(i.broker.pid) for i in instances]
    standin_cpu = CpuMeter(standin.pid)
    backends = BackendCpu(db)
    await backends.start()
    for meter in (*meters, standin_cpu):
        meter.start()
    await asyncio.sleep(options.window_s)
    stats = await standin.get("/_standin/stats")
    for meter in (*meters, standin_cpu):
        meter.stop()
    await backends.stop()
    after = [await read_metrics(i.api) for i in instances]
    owners = await db.owners()
    events = int(stats["events_sent"])
    seconds = float(stats["window_s"]) or options.window_s
    samples = [float(s) for s in stats["dispatch_s"]]
    dispatch = summarize_ms(samples)
    cpu_s = sum(m.cpu_s for m in meters)
    wall_s = max(m.wall_s for m in meters)
    per_instance: list[dict[str, Any]] = []
    for instance, meter, b, a in zip(instances, meters, before, after, strict=True):
        per_instance.append(
            {
                "instance": instance.instance_id,
                "cpu": instance.cpu,
                "calls_offered": len(instance.sessions),
                "calls_owned": owners.get(instance.instance_id, 0),
                "cpu_utilization": round(meter.utilization, 3),
                "cpu_us_per_event": _per_event_us(meter.cpu_s, events),
                "rss_kib": rss_kb(instance.broker.pid),
                "broker_dispatch_mean_ms": mean_ms_between(
                    broker_dispatch_totals(b) if b else None,
                    broker_dispatch_totals(a) if a else None,
                ),
                "live_sessions": metric_total(a, "broker_live_sessions"),
                "broker_metrics": metric_changes(b, a),
            }
        )
    rss_added = sum(
        p["rss_kib"] - i.baseline_kib for p, i in zip(per_instance, instances, strict=True)
    )
    window: dict[str, Any] = {
        "calls": calls,
        "window_s": round(wall_s, 2),
        "events_sent": events,
        "events_per_s": round(events / seconds, 1),
        "events_per_call_per_s": round(events / seconds / calls, 2) if calls else None,
        "outputs_per_s": round(stats["outputs"] / seconds, 2),
        "cpu_utilization": round(cpu_s / wall_s, 3) if wall_s else 0.0,
        "cpu_us_per_event": _per_event_us(cpu_s, events),
        "db_cpu_utilization": round(backends.cpu_s / backends.wall_s, 3)
        if backends.wall_s
        else 0.0,
        "db_cpu_us_per_event": _per_event_us(backends.cpu_s, events),
        "db_backends": backends.backends,
        "standin_cpu_utilization": round(standin_cpu.utilization, 3),
        "dispatch_ms": dispatch,
        "function_calls": stats["function_calls"],
        "outputs": stats["outputs"],
        "outputs_repeated": stats["outputs_repeated"],
        "outstanding_at_end": stats["outstanding"],
        "turns": stats["turns"],
        "turns_skipped": stats["turns_skipped"],
        "probes": stats["probes"],
        "probes_per_call": round(stats["probes"] / calls, 2) if calls else None,
        "errors_sent": stats["errors_sent"],
        # Other work on the machine shows here (ours is about 0.5-1 of it).
        "load_average": round(os.getloadavg()[0], 2),
        "rss_kib_per_call": round(rss_added / calls, 1) if calls else None,
        "per_instance": per_instance,
    }
    # Saturated: the dispatch tail, or a core the brokers share (or one broker) near full.
    by_core: dict[Any, float] = {}
    for p in per_instance:
        key = p["cpu"] if taskset_prefix(p["cpu"]) else p["instance"]
        by_core[key] = by_core.get(key, 0.0) + p["cpu_utilization"]
    reasons = []
    p99 = dispatch["p99"]
    if p99 is not None and p99 > options.saturated_p99_ms:
        reasons.append(f"dispatch p99 {p99:.0f} ms > {options.saturated_p99_ms:g} ms")
    busiest = max(by_core.values(), default=0.0)
    if busiest >= options.saturated_cpu:
        reasons.append(f"brokers at {busiest:.0%} of a core")
    if stats["function_calls"] and not samples:
        reasons.append("no function call answered in the window")
    window["saturated"] = bool(reasons)
    window["saturated_by"] = "; ".join(reasons) or None
    return window


# ---- a phase -----------------------------------------------------------------------------


async def phase(
    options: Options, ctx: BenchContext, count: int, standin: Helper, deadline: float
) -> dict[str, Any]:
    """``count`` brokers on a fresh database, stepped through the calls; their books."""
    work = ctx.work_dir / NAME
    async with scratch_database("postgres", work) as db_url, Database.open(db_url) as db:
        try:
            instances = await start_instances(
                options, work, db_url, standin.base_url + "/v1", count
            )
        except RuntimeError as exc:
            # A broker that exits or does not serve: its log's tail is the message. Reported,
            # and the other phases still run.
            return {"instances": count, "failed": str(exc), "steps": [], "problems": [str(exc)]}
        try:
            result = await _steps(options, instances, standin, db, deadline)
            result["db_books"] = await _db_books(options, db, result["books"])
            result["ownership"] = await _ownership(instances, db)
        finally:
            ended = await _end_calls(options, standin, instances)
            await asyncio.gather(*(i.api.close() for i in instances), return_exceptions=True)
            codes = await asyncio.gather(
                *(i.broker.stop() for i in instances), return_exceptions=True
            )
    result["ended"] = ended
    result["exit_codes"] = [c if isinstance(c, int) else repr(c) for c in codes]
    result["logs"] = {
        i.instance_id: {
            "path": str(i.broker.log),
            **log_problems(i.broker.log),
            "lease_lost": _count_lines(i.broker.log, LEASE_LOST),
        }
        for i in instances
    }
    result["instances"] = count
    result["instance_ids"] = [i.instance_id for i in instances]
    result["rss_baseline_mib"] = [round(i.baseline_kib / 1024, 1) for i in instances]
    result["problems"] = phase_problems(result)
    return result


async def _steps(
    options: Options,
    instances: Sequence[Instance],
    standin: Helper,
    db: Database,
    deadline: float,
) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    live = 0
    stopped_by: str | None = None
    await standin.get("/_standin/books?reset=1")
    await standin.post("/_standin/resume")
    for target in options.steps:
        if time.monotonic() > deadline:
            stopped_by = "the benchmark's time bound"
            break
        started = time.monotonic()
        opened, errors = await open_calls(
            instances[: options.takers or len(instances)],
            live,
            target - live,
            concurrency=options.setup_concurrency,
            deadline=min(deadline, started + options.setup_max_s),
        )
        setup_s = time.monotonic() - started
        live += opened
        await asyncio.sleep(options.warmup_s)
        window = await measure_window(options, standin, instances, db, live)
        window |= {
            "target_calls": target,
            "setup_s": round(setup_s, 1),
            "setup_errors": len(errors),
            "setup_error_samples": errors[:5],
        }
        steps.append(window)
        if live < target and len(errors) > options.max_setup_error_share * target:
            stopped_by = f"set-up: {len(errors)} of {target - (live - opened)} sessions failed"
            break
        if live < target:
            stopped_by = f"set-up: only {live} of {target} sessions within the set-up bound"
            break
        if window["saturated"]:
            stopped_by = f"saturation at {live:,} calls ({window['saturated_by']})"
            break
    books = await settle_books(talking_options(options), standin)
    return {
        "steps": steps,
        "stopped_by": stopped_by,
        "books": books,
        "knee": talking.knee(steps, options.knee_p99_ms),
    }


async def _db_books(options: Options, db: Database, books: Mapping[str, Any]) -> dict[str, Any]:
    """The tool calls the database holds against those the stand-in issued.

    An output is marked injected just after it is sent: read until that settles, within
    ``drain_max_s``.
    """
    issued = int(books["function_calls"])
    bound = time.monotonic() + options.drain_max_s
    counts = await db.tool_calls()
    while time.monotonic() < bound and (
        counts.get("succeeded", 0) != issued or counts["not_injected"]
    ):
        await asyncio.sleep(0.25)
        counts = await db.tool_calls()
    recorded = sum(n for status, n in counts.items() if status != "not_injected")
    return {
        "issued": issued,
        "by_status": counts,
        "recorded": recorded,
        "exact": recorded == counts.get("succeeded", 0) == issued and not counts["not_injected"],
    }


async def _ownership(instances: Sequence[Instance], db: Database) -> dict[str, Any]:
    """Whether every call's lease names the instance that took its offer, never moved."""
    leases = await db.leases()
    expected = {s: i.instance_id for i in instances for s in i.sessions}
    elsewhere = [s for s, owner in expected.items() if s in leases and leases[s][0] != owner]
    missing = [s for s in expected if s not in leases]
    moved = [s for s, (_, token) in leases.items() if token != 1]
    return {
        "calls": len(expected),
        "by_instance": {i.instance_id: len(i.sessions) for i in instances},
        "owned_by_taker": len(expected) - len(elsewhere) - len(missing),
        "owned_elsewhere": len(elsewhere),
        "without_lease": len(missing),
        "moved": len(moved),
        "exact": not elsewhere and not missing and not moved,
    }


async def _end_calls(
    options: Options, standin: Helper, instances: Sequence[Instance]
) -> dict[str, Any]:
    """End every call at the stand-in; wait until no broker supervises one (bounded)."""
    began = time.monotonic()
    ended = 0
    with contextlib.suppress(Exception):
        ended = int((await standin.post("/_standin/calls/end", {"all": True}))["ended"])
    bound = began + options.drain_max_s
    live = -1.0
    while time.monotonic() < bound:
        texts = [await read_metrics(i.api) for i in instances]
        live = sum(metric_total(t, "broker_live_sessions") for t in texts)
        if live == 0 and all(t is not None for t in texts):
            break
        await asyncio.sleep(0.25)
    return {
        "ended": ended,
        "live_left": int(live),
        "after_s": round(time.monotonic() - began, 2),
    }


def _count_lines(path: Path, needle: str) -> int:
    try:
        with path.open(errors="replace") as handle:
            return sum(needle in line for line in handle)
    except OSError:
        return 0


def phase_problems(r: Mapping[str, Any]) -> list[str]:
    """Every way a phase's books fell short ([]: none)."""
    problems = []
    if not r["books"].get("exact"):
        problems.append("function calls not each answered exactly once")
    if not r["db_books"]["exact"]:
        problems.append(f"tool calls in the database {r['db_books']['by_status']}")
    if not r["ownership"]["exact"]:
        o = r["ownership"]
        problems.append(
            f"leases: {o['owned_elsewhere']} owned elsewhere, {o['without_lease']} without, "
            f"{o['moved']} moved"
        )
    if any(s["setup_errors"] for s in r["steps"]):
        problems.append("set-up errors")
    for instance_id, log in r["logs"].items():
        if log["errors"] or log["flagged"] or log["lease_lost"]:
            problems.append(
                f"{instance_id}'s log: {log['errors']} errors, {log['flagged']} flagged, "
                f"{log['lease_lost']} leases lost"
            )
    return problems


# ---- the run -----------------------------------------------------------------------------


def ratios(phases: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per number of calls both phases measured: the last phase's figures over the first's."""
    if len(phases) < 2:
        return []
    base, other = phases[0], phases[-1]
    by_calls = {s["calls"]: s for s in base.get("steps", [])}

    def ratio(a: Any, b: Any) -> float | None:
        return round(float(a) / float(b), 2) if a is not None and b else None

    out = []
    for step in other.get("steps", []):
        one = by_calls.get(step["calls"])
        if one is None:
            continue
        out.append(
            {
                "calls": step["calls"],
                "events_per_s": ratio(step["events_per_s"], one["events_per_s"]),
                "cpu_us_per_event": ratio(step["cpu_us_per_event"], one["cpu_us_per_event"]),
                "cpu_utilization": ratio(step["cpu_utilization"], one["cpu_utilization"]),
                "dispatch_p50": ratio(step["dispatch_ms"]["p50"], one["dispatch_ms"]["p50"]),
                "dispatch_p99": ratio(step["dispatch_ms"]["p99"], one["dispatch_ms"]["p99"]),
                "db_cpu_us_per_event": ratio(
                    step["db_cpu_us_per_event"], one["db_cpu_us_per_event"]
                ),
                "rss_kib_per_call": ratio(step["rss_kib_per_call"], one["rss_kib_per_call"]),
            }
        )
    return out


def shares(phases: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each instance of the last phase against the first phase's broker with as many calls.

    Splitting ``n`` calls over ``k`` instances costs what ``k`` brokers of ``n / k`` calls
    cost if a second instance adds nothing of its own: a first-phase step at ``n / k``
    calls is the comparison (when the steps have one).
    """
    if len(phases) < 2:
        return []
    by_calls = {s["calls"]: s for s in phases[0].get("steps", [])}
    out = []
    for step in phases[-1].get("steps", []):
        owned = [q["calls_owned"] for q in step["per_instance"]]
        alone = by_calls.get(owned[0]) if owned and len(set(owned)) == 1 else None
        if alone is None or not alone["cpu_utilization"]:
            continue
        each = sum(q["cpu_utilization"] for q in step["per_instance"]) / len(owned)
        out.append(
            {
                "calls": step["calls"],
                "each_calls": owned[0],
                "each_cpu_utilization": round(each, 3),
                "alone_cpu_utilization": alone["cpu_utilization"],
                "ratio": round(each / alone["cpu_utilization"], 2),
            }
        )
    return out


async def run(options: Options, ctx: BenchContext) -> dict[str, Any]:
    """Run the benchmark; write and return its JSON (a skip without PostgreSQL)."""
    started = start_clock()
    shared = talking_options(options)
    watcher_s = (options.warmup_s + options.watcher_window_s + 5) * len(options.steps) + 10
    end = time.monotonic() + options.max_seconds
    broker_end = end - (min(watcher_s, options.max_seconds / 3) if options.watcher else 0)
    work = ctx.work_dir / NAME
    results: dict[str, Any] = {}
    standin = await talking.start_standin(shared, work)
    try:
        phases: list[dict[str, Any]] = []
        for index, count in enumerate(options.instances):
            # Each phase has its share of what is left, so a slow first phase cannot leave
            # the second without steps.
            now = time.monotonic()
            deadline = now + (broker_end - now) / (len(options.instances) - index)
            try:
                phases.append(await phase(options, ctx, count, standin, deadline))
            except DatabaseUnavailableError as exc:
                results["skipped"] = str(exc)
                break
        if "skipped" not in results:
            results["phases"] = phases
            results["ratios"] = ratios(phases)
            results["shares"] = shares(phases)
            if options.watcher:
                measured = sorted({s["calls"] for p in phases for s in p["steps"]})
                results["watcher"] = await talking.watcher_phase(
                    shared, work, standin, measured or list(options.steps[:1]), end
                )
    finally:
        await standin.stop()
    results["talk"] = {
        "period_s": options.period_s,
        "transcript_deltas": len(standin_wire.SPOKEN),
        "delta_interval_s": options.delta_interval_s,
        "function_every": options.function_every,
    }
    results["pinning"] = {
        "cores": os.cpu_count(),
        "brokers": [c for c in options.broker_cpus if taskset_prefix(c)],
        "standin": standin.pinned,
    }
    return finish(NAME, dataclasses.replace(ctx, db="postgres"), options, started, results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instances", description=__doc__)
    add_common_args(parser, PRESETS)
    parser.add_argument("--steps", type=lambda s: tuple(int(x) for x in s.split(",")))
    parser.add_argument(
        "--broker-cpus", dest="broker_cpus", type=lambda s: tuple(int(x) for x in s.split(","))
    )
    parser.add_argument("--window-s", dest="window_s", type=float)
    parser.add_argument("--takers", type=int, help="offers to the first N instances only")
    parser.add_argument("--no-watcher", dest="watcher", action="store_false", default=None)
    args = parser.parse_args(argv)
    options = override(
        PRESETS[args.preset], args, ["steps", "broker_cpus", "window_s", "watcher", "takers"]
    )
    payload = asyncio.run(run(options, context_from_args(args)))
    print(json.dumps(payload["results"], indent=2, default=str))  # noqa: T201 - a command-line tool
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
