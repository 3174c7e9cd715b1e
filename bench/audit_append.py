"""Benchmark 4: audit append throughput on SQLite and PostgreSQL, with the broker's own code.

What the broker writes about what happens: its event log (``session_events``: every sideband
event in and out, and its decisions), its tool-call records (``tool_calls``) and the signed,
hash-chained audit trail (``audit_records``, :mod:`broker.audit.trail`). Four workloads,
each on a fresh migrated database of each kind, in this process (no HTTP):

* ``event_log_batched``: :class:`broker.record.event_log.EventRecorder`, as the sideband uses it:
  ``sessions`` recorders, each fed bursts of typical server events (a tool round's worth at a
  time) while its writer task flushes batches. Events per second until all are stored.
* ``event_log_single``: :func:`broker.record.event_log.append_event`, one transaction per event
  (how broker decisions outside a recorder are written). Latency per append and appends per
  second, one writer.
* ``tool_call_records``: :meth:`broker.tools.dispatch.ToolDispatcher.run` with the no-op tool
  (record, claim, policy, budget, settle) plus ``mark_injected``: the writes of one sideband
  tool call. Latency per call with one caller, and calls per second with ``concurrency``
  callers on different sessions.
* ``audit_chain`` (:mod:`bench.audit_chain`): audit records appended by ``chain_writers``
  writers (one transaction each) while the chainer links and signs them (two chainers too on
  PostgreSQL), chained records per second end to end; the chainer alone on a pre-filled
  outbox; and, as the floor, the same chain in memory and raw Ed25519 signatures per second.

Run alone: ``python -m bench.audit_append [--preset smoke|medium|full] [--db-kinds sqlite]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, cast

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.db.engine import create_engine, make_sessionmaker
from broker.db.models import SessionRow, SessionState, SidebandState, ToolPath
from broker.record.event_log import EventRecorder, append_event
from broker.settings.model import DEFAULT_MODEL, DEFAULT_VOICE
from broker.tools.dispatch import ToolDispatcher
from broker.tools.registry import load_registry

from .audit_chain import ChainOptions, audit_chain
from .context import BenchContext, add_common_args, context_from_args, finish, override, start_clock
from .databases import DatabaseKind, DatabaseUnavailableError, scratch_database
from .stack import NOOP_TOOL, write_tools_config
from .stats import summarize_ms

NAME: Final = "audit_append"
PROFILES: Final[tuple[str, ...]] = ()


@dataclass(frozen=True)
class Options:
    """Sizes, per database.

    ``batched_events`` over ``sessions`` recorders in bursts of ``burst``; ``single_events``
    one-transaction appends; ``tool_calls`` sequential calls and ``concurrent_tool_calls``
    more over ``concurrency`` callers; ``chain_entries`` audit records appended by
    ``chain_writers`` writers, then as many pre-filled for the chainer alone, and
    ``signatures`` raw signatures. Each workload stops at ``max_seconds_each``.
    """

    db_kinds: tuple[str, ...] = ("sqlite", "postgres")
    sessions: int = 50
    batched_events: int = 20_000
    burst: int = 25
    single_events: int = 1_000
    tool_calls: int = 500
    concurrent_tool_calls: int = 1_000
    concurrency: int = 16
    chain_writers: int = 16
    chain_entries: int = 20_000
    signatures: int = 20_000
    max_seconds_each: float = 30.0


PRESETS: Final = {
    "full": Options(),
    "medium": Options(
        batched_events=8_000,
        single_events=400,
        tool_calls=200,
        chain_entries=8_000,
        signatures=8_000,
    ),
    "smoke": Options(
        db_kinds=("sqlite",),
        sessions=4,
        batched_events=200,
        single_events=20,
        tool_calls=10,
        concurrent_tool_calls=16,
        concurrency=4,
        chain_writers=4,
        chain_entries=200,
        signatures=500,
        max_seconds_each=20.0,
    ),
}

# A tool round as the sideband sees it (shapes of docs/protocol.md §3.1; ids are made up).
_ROUND: Final[list[dict[str, Any]]] = [
    {"type": "response.created", "response": {"id": "resp_1", "status": "in_progress"}},
    {
        "type": "conversation.item.added",
        "item": {"id": "item_1", "type": "function_call", "name": NOOP_TOOL, "call_id": "c_1"},
    },
    {
        "type": "response.function_call_arguments.done",
        "response_id": "resp_1",
        "item_id": "item_1",
        "output_index": 0,
        "call_id": "call_1",
        "name": NOOP_TOOL,
        "arguments": "{}",
    },
    {
        "type": "response.done",
        "response": {
            "id": "resp_1",
            "status": "completed",
            "output": [{"type": "function_call", "name": NOOP_TOOL, "arguments": "{}"}],
            "usage": {
                "total_tokens": 120,
                "input_tokens": 100,
                "output_tokens": 20,
                "input_token_details": {"text_tokens": 100, "audio_tokens": 0, "cached_tokens": 0},
                "output_token_details": {"text_tokens": 20, "audio_tokens": 0},
            },
        },
    },
    {
        "type": "conversation.item.create",
        "item": {"type": "function_call_output", "call_id": "call_1", "output": "{}"},
    },
    {"type": "response.output_audio_transcript.delta", "item_id": "item_2", "delta": "noop "},
]


def _session_row(session_id: str) -> SessionRow:
    return SessionRow(
        id=session_id,
        owner_key_id="bench",
        state=SessionState.LIVE,
        provider="bench",
        model=DEFAULT_MODEL,
        instructions="bench",
        voice=DEFAULT_VOICE,
        tools=[NOOP_TOOL],
        sideband_enabled=True,
        sideband_state=SidebandState.CONNECTED,
        metadata_={},
        max_duration_s=3600,
        idle_timeout_s=3600,
        max_tool_calls=10_000,
        max_concurrent_tools=64,
        max_argument_bytes=32 * 1024,
        tamper_policy="revert",
    )


async def _add_sessions(sessionmaker: async_sessionmaker[AsyncSession], count: int) -> list[str]:
    ids = [f"sess_bench_{uuid.uuid4().hex[:16]}" for _ in range(count)]
    async with sessionmaker.begin() as s:
        s.add_all(_session_row(i) for i in ids)
    return ids


async def _event_log_batched(
    options: Options, sessionmaker: async_sessionmaker[AsyncSession]
) -> dict[str, Any]:
    session_ids = await _add_sessions(sessionmaker, options.sessions)
    recorders = [EventRecorder(sessionmaker, sid) for sid in session_ids]
    for recorder in recorders:
        await recorder.start()
    per_session = options.batched_events // len(recorders)
    deadline = time.monotonic() + options.max_seconds_each
    recorded = 0

    async def feed(recorder: EventRecorder) -> None:
        nonlocal recorded
        for n in range(0, per_session, options.burst):
            if time.monotonic() > deadline:
                break
            for k in range(min(options.burst, per_session - n)):
                recorder.record("in", _ROUND[k % len(_ROUND)])
                recorded += 1
            await asyncio.sleep(0)  # the sideband reader yields between socket reads

    started = time.perf_counter()
    async with asyncio.TaskGroup() as tasks:
        writers = [tasks.create_task(r.run(), name="bench-recorder") for r in recorders]
        async with asyncio.TaskGroup() as feeders:
            for recorder in recorders:
                feeders.create_task(feed(recorder), name="bench-feed")
        for recorder in recorders:
            recorder.stop()
        await asyncio.gather(*writers)
    elapsed = time.perf_counter() - started
    return {
        "events": recorded,
        "sessions": len(recorders),
        "seconds": round(elapsed, 3),
        "events_per_s": round(recorded / elapsed, 1),
    }


async def _timed_loop(
    count: int, deadline: float, one: Callable[[int], Awaitable[None]]
) -> tuple[list[float], float]:
    latencies: list[float] = []
    started = time.perf_counter()
    for i in range(count):
        if time.monotonic() > deadline:
            break
        t0 = time.perf_counter()
        await one(i)
        latencies.append(time.perf_counter() - t0)
    return latencies, time.perf_counter() - started


async def _event_log_single(
    options: Options, sessionmaker: async_sessionmaker[AsyncSession]
) -> dict[str, Any]:
    [session_id] = await _add_sessions(sessionmaker, 1)
    event = {"type": "broker.tool_call", "call_id": "call_1", "tool": NOOP_TOOL, "status": "ok"}

    async def one(_i: int) -> None:
        await append_event(sessionmaker, session_id, event)

    deadline = time.monotonic() + options.max_seconds_each
    latencies, elapsed = await _timed_loop(options.single_events, deadline, one)
    return {
        "appends": len(latencies),
        "latency_ms": summarize_ms(latencies),
        "appends_per_s": round(len(latencies) / elapsed, 1) if elapsed else None,
    }


async def _tool_calls(
    options: Options, sessionmaker: async_sessionmaker[AsyncSession], ctx: BenchContext
) -> dict[str, Any]:
    tools = write_tools_config(ctx.work_dir / NAME)
    async with httpx.AsyncClient(trust_env=False) as http:
        dispatcher = ToolDispatcher(sessionmaker, load_registry(tools, http))
        session_ids = await _add_sessions(sessionmaker, max(1, options.concurrency))

        async def call(session_id: str, call_id: str) -> None:
            outcome = await dispatcher.run(
                session_id,
                [NOOP_TOOL],
                call_id,
                NOOP_TOOL,
                "{}",
                ToolPath.SIDEBAND,
                "resp_bench",
                item_id=f"item_{call_id}",
            )
            if not outcome.executed_now or outcome.status != "succeeded":
                raise RuntimeError(f"tool call {call_id} ended {outcome.status}")
            await dispatcher.mark_injected(session_id, call_id)

        async def sequential(i: int) -> None:
            await call(session_ids[0], f"call_seq_{i}")

        deadline = time.monotonic() + options.max_seconds_each
        latencies, _elapsed = await _timed_loop(options.tool_calls, deadline, sequential)

        done = 0
        per_caller = options.concurrent_tool_calls // len(session_ids)
        deadline = time.monotonic() + options.max_seconds_each

        async def caller(session_id: str) -> None:
            nonlocal done
            for i in range(per_caller):
                if time.monotonic() > deadline:
                    return
                await call(session_id, f"call_par_{i}")
                done += 1

        started = time.perf_counter()
        async with asyncio.TaskGroup() as tasks:
            for session_id in session_ids:
                tasks.create_task(caller(session_id), name="bench-caller")
        concurrent_s = time.perf_counter() - started
        await dispatcher.drain()
    return {
        "sequential": {
            "calls": len(latencies),
            "latency_ms": summarize_ms(latencies),
            "calls_per_s": round(len(latencies) / sum(latencies), 1) if latencies else None,
        },
        "concurrent": {
            "callers": len(session_ids),
            "calls": done,
            "calls_per_s": round(done / concurrent_s, 1) if concurrent_s else None,
        },
    }


async def _one_database(kind: DatabaseKind, options: Options, ctx: BenchContext) -> dict[str, Any]:
    async with scratch_database(kind, ctx.work_dir / NAME) as url:
        engine = create_engine(url)
        sessionmaker = make_sessionmaker(engine)
        try:
            return {
                "event_log_batched": await _event_log_batched(options, sessionmaker),
                "event_log_single": await _event_log_single(options, sessionmaker),
                "tool_call_records": await _tool_calls(options, sessionmaker, ctx),
                "audit_chain": await audit_chain(
                    url,
                    kind,
                    ChainOptions(
                        writers=options.chain_writers,
                        entries=options.chain_entries,
                        signatures=options.signatures,
                        max_seconds=options.max_seconds_each,
                    ),
                ),
            }
        finally:
            await engine.dispose()


async def run(options: Options, ctx: BenchContext) -> dict[str, Any]:
    """Run the benchmark; write and return its JSON."""
    started = start_clock()
    results: dict[str, Any] = {}
    for kind in options.db_kinds:
        if kind not in ("sqlite", "postgres"):
            raise ValueError(f"unknown database kind {kind!r}")
        try:
            results[kind] = await _one_database(cast(DatabaseKind, kind), options, ctx)
        except DatabaseUnavailableError as exc:
            results[kind] = {"skipped": str(exc)}
    return finish(NAME, ctx, options, started, results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.audit_append", description=__doc__)
    add_common_args(parser, PRESETS)
    parser.add_argument(
        "--db-kinds", dest="db_kinds", type=lambda s: tuple(x for x in s.split(",") if x)
    )
    args = parser.parse_args(argv)
    options = override(PRESETS[args.preset], args, ["db_kinds"])
    payload = asyncio.run(run(options, context_from_args(args)))
    print(json.dumps(payload["results"], indent=2))  # noqa: T201 - a command-line tool
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
