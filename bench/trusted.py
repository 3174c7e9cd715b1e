"""Benchmark 7: trusted server sessions (issue 22): broker CPU per relayed audio event.

A trusted session is the one place media crosses the broker: its backend streams the user's
audio as ``input_audio_buffer.append`` events over ``GET /api/v1/sessions/{id}/connect`` and
receives the model's as ``response.output_audio.delta``, and the broker relays both ways to
the provider's WebSocket session (``/v1/realtime?model=…``). Each session here talks in a
cycle: ``speech_s`` of speech-like audio then ``silence_s`` of silence, appended in
``chunk_ms`` chunks at the pace of real time (PCM16 24 kHz, base64); the provider's server
VAD ends each turn and answers it with speech (``I heard you.``, about 1 s of audio in
100 ms deltas, beside its transcript).

Two phases over the same steps of concurrent sessions (the sessions of a step stay for the
next):

* **direct** (the floor): the backends talk straight to the emulator's WebSocket session
  mode (``emulator.sessions``) — the least any client pays to move these events;
* **relayed**: the same backends talk through the broker (``broker serve``): a
  ``sessions:trusted`` key creates each session (``"connection_type": "trusted_server"``),
  and its backend connects with the connect token.

The emulator runs as its own process (``python -m emulator``, pinned to ``emulator_cpu``),
the broker as its own (pinned to ``broker_cpu``), the backends in this process. After each
step's sessions are up and talking (``warmup_s``), one window of ``window_s`` measures: audio
events (appends sent and audio deltas received), all events received, each process's CPU
time (user + system, ``/proc``) per audio event and its share of a core, the broker's RSS per
session, and the *answer latency*: the backend receiving ``speech_stopped`` → receiving the
answer's first audio delta. *Relay over floor*: the broker's CPU per relayed audio event
over the backends' own CPU per audio event in the direct phase at the same sessions (a
backend parses every event it gets and encodes every append it sends: the least any
endpoint pays); *system over direct*: all processes' CPU per audio event, relayed over
direct. Stepping stops when a process saturates (``saturated_cpu`` of a core) or sessions
cannot be set up.

Run alone: ``python -m bench.trusted [--preset smoke|medium|full] [--steps 25,50]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import numpy as np
from numpy.typing import NDArray

from .context import BenchContext, add_common_args, context_from_args, finish, override, start_clock
from .databases import scratch_database
from .stack import (
    ADMIN_KEY,
    PROVIDER_KEY,
    ROOT,
    BrokerApi,
    BrokerProcess,
    free_port,
    read_metrics,
    start_broker,
    taskset_prefix,
)
from .stats import CpuMeter, rss_kb, summarize_ms

NAME: Final = "trusted"
PROFILES: Final[tuple[str, ...]] = ()
MODEL: Final = "gpt-realtime"
EMULATOR_START_TIMEOUT_S: Final = 30.0
CONNECT_TIMEOUT_S: Final = 30.0
RATE: Final = 24_000
"""The sessions' input format: PCM16 24 kHz mono (the default)."""
SPEECH_DBFS: Final = -16.0
SERVICE_ID: Final = "bench-backend"


@dataclass(frozen=True)
class Options:
    """Sizes, the talking cycle and limits (see the module docstring).

    ``max_seconds`` bounds the whole run; ``setup_max_s`` one step's set-up.
    """

    steps: tuple[int, ...] = (10, 25, 50, 100, 200)
    modes: tuple[str, ...] = ("direct", "relayed")
    chunk_ms: int = 100
    speech_s: float = 1.0
    silence_s: float = 1.0
    warmup_s: float = 5.0
    window_s: float = 15.0
    setup_concurrency: int = 16
    setup_max_s: float = 60.0
    max_setup_error_share: float = 0.05
    saturated_cpu: float = 0.95
    broker_cpu: int = 0
    emulator_cpu: int = 1
    max_seconds: float = 600.0
    seed: int = 22


PRESETS: Final = {
    "full": Options(),
    "medium": Options(steps=(10, 50), warmup_s=4.0, window_s=8.0, max_seconds=240.0),
    "smoke": Options(steps=(2,), warmup_s=2.5, window_s=2.5, setup_max_s=30.0, max_seconds=120.0),
}


# ---- the audio the backends send ---------------------------------------------------------


def talking_cycle(options: Options) -> list[str]:
    """One cycle of appends (base64 PCM16 24 kHz): speech-like chunks, then silent ones."""
    per_chunk = RATE * options.chunk_ms // 1000
    speech_chunks = max(1, round(options.speech_s * 1000 / options.chunk_ms))
    silent_chunks = max(1, round(options.silence_s * 1000 / options.chunk_ms))
    t = np.arange(per_chunk * speech_chunks) / RATE
    # A voiced 180 Hz buzz with syllable-rate (4 Hz) modulation at about -16 dBFS RMS.
    amplitude = 32768 * 10 ** (SPEECH_DBFS / 20) * math.sqrt(2)
    voiced = np.sin(2 * np.pi * 180 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    speech: NDArray[np.int16] = np.clip(voiced * amplitude * 1.2, -32768, 32767).astype(np.int16)
    chunks = [
        base64.b64encode(speech[i * per_chunk : (i + 1) * per_chunk].astype("<i2").tobytes())
        for i in range(speech_chunks)
    ]
    silence = base64.b64encode(np.zeros(per_chunk, dtype="<i2").tobytes())
    return [c.decode() for c in chunks] + [silence.decode()] * silent_chunks


# ---- the backends ------------------------------------------------------------------------


@dataclass
class Tally:
    """What every backend saw, together (cumulative; a window takes differences)."""

    appends: int = 0
    audio_deltas: int = 0
    events: int = 0
    turns: int = 0
    responses: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    latencies: list[tuple[float, float]] = field(default_factory=list)
    """(when, seconds): speech_stopped received → the answer's first audio delta received."""
    closed_early: int = 0

    def snapshot(self) -> dict[str, int]:
        return {
            "appends": self.appends,
            "audio_deltas": self.audio_deltas,
            "events": self.events,
            "turns": self.turns,
            "responses": self.responses,
            "errors": self.errors,
            "closed_early": self.closed_early,
        }


class Backend:
    """One session's backend: appends audio at real-time pace, reads every event."""

    def __init__(
        self, ws: aiohttp.ClientWebSocketResponse, cycle: Sequence[str], offset: int, tally: Tally
    ) -> None:
        self.ws = ws
        self._cycle = cycle
        self._offset = offset
        self._tally = tally
        self._stopped_at: float | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()

    def start(self, chunk_s: float) -> None:
        self._tasks = [
            asyncio.create_task(self._send(chunk_s)),
            asyncio.create_task(self._read()),
        ]

    async def _send(self, chunk_s: float) -> None:
        began = time.monotonic()
        index = 0
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            while not self._stop.is_set() and not self.ws.closed:
                chunk = self._cycle[(self._offset + index) % len(self._cycle)]
                await self.ws.send_str(
                    json.dumps({"type": "input_audio_buffer.append", "audio": chunk})
                )
                self._tally.appends += 1
                index += 1
                # Real-time pace on the cycle's own clock: a late tick does not drift.
                delay = began + index * chunk_s - time.monotonic()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, delay)):
                        await self._stop.wait()

    async def _read(self) -> None:
        tally = self._tally
        async for msg in self.ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            event = json.loads(msg.data)
            tally.events += 1
            kind = event.get("type")
            if kind == "response.output_audio.delta":
                tally.audio_deltas += 1
                if self._stopped_at is not None:
                    now = time.monotonic()
                    tally.latencies.append((now, now - self._stopped_at))
                    self._stopped_at = None
            elif kind == "input_audio_buffer.speech_stopped":
                tally.turns += 1
                self._stopped_at = time.monotonic()
            elif kind == "response.done":
                tally.responses += 1
            elif kind == "error":
                tally.errors += 1
                if len(tally.error_samples) < 5:
                    tally.error_samples.append(str(event.get("error", {}).get("code")))
        if not self._stop.is_set():
            tally.closed_early += 1

    async def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await self.ws.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


Connector = Callable[[aiohttp.ClientSession], Awaitable[aiohttp.ClientWebSocketResponse]]
"""Opens one session's socket (directly at the emulator, or through the broker)."""


def direct_connector(emulator_url: str) -> Connector:
    async def connect(http: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
        return await http.ws_connect(
            emulator_url.replace("http://", "ws://", 1) + "/v1/realtime",
            params={"model": MODEL},
            headers={"Authorization": f"Bearer {PROVIDER_KEY}"},
            max_msg_size=16 * 1024 * 1024,
        )

    return connect


async def create_trusted_key(http: aiohttp.ClientSession, broker_url: str) -> str:
    """A ``sessions:trusted`` key, made with the admin key."""
    async with http.post(
        broker_url + "/api/v1/keys",
        json={"name": "bench-trusted-backend", "scopes": ["sessions:trusted"]},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    ) as resp:
        body = await resp.text()
        if resp.status != 201:
            raise RuntimeError(f"creating the trusted key: HTTP {resp.status}: {body[:300]}")
    key: str = json.loads(body)["key"]
    return key


def relayed_connector(broker_url: str, key: str) -> Connector:
    async def connect(http: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
        async with http.post(
            broker_url + "/api/v1/sessions",
            json={"connection_type": "trusted_server", "service_id": SERVICE_ID},
            headers={"Authorization": f"Bearer {key}"},
        ) as resp:
            body = await resp.text()
            if resp.status != 201:
                raise RuntimeError(f"create trusted session: HTTP {resp.status}: {body[:300]}")
        created = json.loads(body)
        return await http.ws_connect(
            created["connect_url"],
            headers={"Authorization": f"Bearer {created['connect_token']}"},
            max_msg_size=16 * 1024 * 1024,
        )

    return connect


# ---- the emulator as its own process -----------------------------------------------------


@dataclass
class EmulatorProcess:
    process: asyncio.subprocess.Process
    base_url: str
    pinned: bool

    @property
    def pid(self) -> int:
        return self.process.pid

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            try:
                async with asyncio.timeout(15):
                    await self.process.wait()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


async def start_emulator_process(work: Path, cpu: int | None) -> EmulatorProcess:
    """``python -m emulator`` (speech as tones, no pause between deltas), ready to serve.

    Raises:
        RuntimeError: it exited or did not serve in time.
    """
    await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
    prefix = taskset_prefix(cpu)
    for _attempt in range(3):
        port = free_port()
        log = work / "emulator.log"
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                *prefix,
                sys.executable,
                "-m",
                "emulator",
                "--port",
                str(port),
                "--speech",
                "tone",
                "--token-interval",
                "0",
                "--log-level",
                "WARNING",
                cwd=ROOT,
                env={**os.environ, "EMULATOR_API_KEY": PROVIDER_KEY},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )
        emulator = EmulatorProcess(process, f"http://127.0.0.1:{port}", bool(prefix))
        if await _serving(emulator):
            return emulator
        await emulator.stop()
        text = log.read_text(errors="replace")
        if "address already in use" not in text.lower():
            raise RuntimeError(f"the emulator did not start:\n{text[-2000:]}")
    raise RuntimeError("the emulator: no free port after 3 attempts")


async def _serving(emulator: EmulatorProcess) -> bool:
    deadline = time.monotonic() + EMULATOR_START_TIMEOUT_S
    headers = {"Authorization": f"Bearer {PROVIDER_KEY}"}
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline and emulator.process.returncode is None:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with asyncio.timeout(5):
                    url = emulator.base_url + "/_emulator/faults"
                    async with http.get(url, headers=headers) as resp:
                        if resp.status == 200:
                            return True
            await asyncio.sleep(0.1)
    return False


# ---- one phase ---------------------------------------------------------------------------


@dataclass
class Meters:
    """The processes measured in a phase, by role."""

    pids: dict[str, int]

    def start(self) -> dict[str, CpuMeter]:
        meters = {role: CpuMeter(pid) for role, pid in self.pids.items()}
        for meter in meters.values():
            meter.start()
        return meters


RELAY_METRICS: Final = (
    "broker_trusted_relay_frames_total",
    "broker_trusted_relay_bytes_total",
    "broker_trusted_relay_audio_bytes_total",
)


def relay_meters(metrics_text: str | None) -> dict[str, float]:
    """The broker's own relay meters (``name{direction="…"}`` → value) in a ``/metrics`` text."""
    found: dict[str, float] = {}
    for line in (metrics_text or "").splitlines():
        if line.startswith(RELAY_METRICS):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


def _per_event_us(cpu_s: float, events: int) -> float | None:
    return round(cpu_s / events * 1e6, 1) if events else None


async def _open_backends(
    http: aiohttp.ClientSession,
    connect: Connector,
    count: int,
    options: Options,
    cycle: Sequence[str],
    tally: Tally,
    rng: random.Random,
) -> tuple[list[Backend], list[str]]:
    """Open ``count`` sessions (bounded concurrency and time); the backends and the failures."""
    gate = asyncio.Semaphore(options.setup_concurrency)
    failures: list[str] = []

    async def one() -> Backend | None:
        async with gate:
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    ws = await connect(http)
            except (aiohttp.ClientError, RuntimeError, TimeoutError, KeyError) as exc:
                failures.append(f"{type(exc).__name__}: {exc}"[:300])
                return None
        backend = Backend(ws, cycle, rng.randrange(len(cycle)), tally)
        backend.start(options.chunk_ms / 1000)
        return backend

    try:
        async with asyncio.timeout(options.setup_max_s):
            opened = await asyncio.gather(*(one() for _ in range(count)))
    except TimeoutError:
        failures.append(f"set-up took over {options.setup_max_s:g} s")
        opened = []
    return [b for b in opened if b is not None], failures


async def run_phase(
    mode: str,
    options: Options,
    connect: Connector,
    meters: Meters,
    deadline: float,
    broker_pid: int | None = None,
    broker_api: BrokerApi | None = None,
) -> dict[str, Any]:
    """Step the sessions up under ``connect``; measure a window at each step.

    ``broker_api`` (relayed): the broker's own relay meters are read around each window.
    """
    cycle = talking_cycle(options)
    tally = Tally()
    rng = random.Random(options.seed)
    backends: list[Backend] = []
    steps: list[dict[str, Any]] = []
    stopped_by = "nothing (every step ran)"
    # No pool limit: every session's socket holds a connection for the whole phase (the
    # semaphore in _open_backends bounds the set-up instead).
    connector = aiohttp.TCPConnector(limit=0)
    # The broker's RSS before any session: what a session adds is measured from it.
    rss_base = rss_kb(broker_pid) if broker_pid is not None else None
    async with aiohttp.ClientSession(connector=connector) as http:
        try:
            for count in options.steps:
                step_time = options.warmup_s + options.window_s + options.setup_max_s / 4
                if time.monotonic() + step_time > deadline:
                    stopped_by = f"the time bound before {count} sessions"
                    break
                added, failures = await _open_backends(
                    http, connect, count - len(backends), options, cycle, tally, rng
                )
                backends += added
                if len(failures) > options.max_setup_error_share * count:
                    stopped_by = f"set-up failures at {count} sessions: {failures[:2]}"
                    steps.append({"sessions": count, "setup_errors": len(failures)})
                    break
                await asyncio.sleep(options.warmup_s)
                before = relay_meters(await read_metrics(broker_api)) if broker_api else {}
                step = await _window(options, tally, meters, len(backends), broker_pid, rss_base)
                if broker_api is not None:
                    after = relay_meters(await read_metrics(broker_api))
                    step["relay_meters"] = {
                        name: after[name] - before.get(name, 0.0) for name in sorted(after)
                    }
                step["setup_errors"] = len(failures)
                step["setup_error_samples"] = failures[:3]
                steps.append(step)
                busiest = max(step["cpu_share"].values())
                lost = step["closed_early"] + step["errors"]
                if lost > options.max_setup_error_share * count:
                    stopped_by = (
                        f"sessions failing at {count} sessions ({step['closed_early']} sockets "
                        f"closed by the far end, {step['errors']} error events)"
                    )
                    break
                if busiest >= options.saturated_cpu:
                    step["saturated"] = True
                    stopped_by = f"saturation at {count} sessions ({busiest:.0%} of a core)"
                    break
        finally:
            await asyncio.gather(*(b.close() for b in backends))
    return {
        "mode": mode,
        "steps": steps,
        "stopped_by": stopped_by,
        "totals": tally.snapshot(),
        "error_samples": tally.error_samples,
    }


async def _window(
    options: Options,
    tally: Tally,
    meters: Meters,
    sessions: int,
    broker_pid: int | None,
    rss_base: int | None,
) -> dict[str, Any]:
    before = tally.snapshot()
    began = time.monotonic()
    cpu = meters.start()
    await asyncio.sleep(options.window_s)
    for meter in cpu.values():
        meter.stop()
    after = tally.snapshot()
    wall = time.monotonic() - began
    seen = {k: after[k] - before[k] for k in after}
    audio_events = seen["appends"] + seen["audio_deltas"]
    latencies = [value for at, value in tally.latencies if began <= at]
    step: dict[str, Any] = {
        "sessions": sessions,
        "window_s": round(wall, 2),
        "appends_per_s": round(seen["appends"] / wall, 1),
        "audio_deltas_per_s": round(seen["audio_deltas"] / wall, 1),
        "audio_events_per_s": round(audio_events / wall, 1),
        "events_received_per_s": round(seen["events"] / wall, 1),
        "turns": seen["turns"],
        "responses": seen["responses"],
        "errors": seen["errors"],
        "closed_early": seen["closed_early"],
        "answer_latency_ms": summarize_ms(sorted(latencies)),
        "cpu_us_per_audio_event": {
            role: _per_event_us(m.cpu_s, audio_events) for role, m in cpu.items()
        },
        "cpu_us_per_event": {
            # Every event crossing a socket: appends sent and every server event received.
            role: _per_event_us(m.cpu_s, seen["appends"] + seen["events"])
            for role, m in cpu.items()
        },
        "cpu_share": {role: round(m.utilization, 3) for role, m in cpu.items()},
        "saturated": False,
    }
    if broker_pid is not None and rss_base is not None and sessions:
        rss = rss_kb(broker_pid)
        step["broker_rss_kib"] = rss
        step["broker_rss_kib_per_session"] = round((rss - rss_base) / sessions, 1)
    return step


# ---- the run -----------------------------------------------------------------------------


def ratios(direct: dict[str, Any], relayed: dict[str, Any]) -> list[dict[str, Any]]:
    """Relay over floor and system over direct, at each number of sessions both reached."""
    floors = {s["sessions"]: s for s in direct.get("steps", []) if "cpu_share" in s}
    rows = []
    for step in relayed.get("steps", []):
        floor = floors.get(step["sessions"])
        if floor is None or "cpu_share" not in step:
            continue
        relay_us = step["cpu_us_per_audio_event"].get("broker")
        backend_us = floor["cpu_us_per_audio_event"].get("backends")
        relayed_total = _sum(step["cpu_us_per_audio_event"].values())
        direct_total = _sum(floor["cpu_us_per_audio_event"].values())
        rows.append(
            {
                "sessions": step["sessions"],
                "broker_us_per_audio_event": relay_us,
                "floor_us_per_audio_event": backend_us,
                "relay_over_floor": _ratio(relay_us, backend_us),
                "system_over_direct": _ratio(relayed_total, direct_total),
                "added_latency_p50_ms": _minus(
                    step["answer_latency_ms"].get("p50"), floor["answer_latency_ms"].get("p50")
                ),
            }
        )
    return rows


def _sum(values: Any) -> float | None:
    found = [v for v in values if v is not None]
    return sum(found) if found else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def _minus(a: float | None, b: float | None) -> float | None:
    return round(a - b, 2) if a is not None and b is not None else None


async def relayed_phase(
    options: Options, ctx: BenchContext, emulator: EmulatorProcess, deadline: float
) -> dict[str, Any]:
    """The broker between the backends and the emulator (a fresh database)."""
    work = ctx.work_dir / NAME
    async with scratch_database(ctx.db, work) as db_url:
        broker = await start_broker(
            work,
            provider_base_url=emulator.base_url + "/v1",
            database_url=db_url,
            name="broker-trusted",
            log_level="WARNING",
            cpu=options.broker_cpu,
        )
        try:
            async with aiohttp.ClientSession() as http:
                key = await create_trusted_key(http, broker.base_url)
            meters = Meters(
                {"backends": os.getpid(), "emulator": emulator.pid, "broker": broker.pid}
            )
            api = BrokerApi(broker.base_url)
            try:
                phase = await run_phase(
                    "relayed",
                    options,
                    relayed_connector(broker.base_url, key),
                    meters,
                    deadline,
                    broker_pid=broker.pid,
                    broker_api=api,
                )
            finally:
                await api.close()
            counts = _log_counts(broker)
            phase["broker_log_errors"] = counts["errors"]
            phase["broker_leases_lost"] = counts["leases_lost"]
            return phase
        finally:
            phase_exit = await broker.stop()
            if phase_exit != 0:
                raise RuntimeError(f"the broker exited {phase_exit}:\n{broker.log_tail()}")


def _log_counts(broker: BrokerProcess) -> dict[str, int]:
    """Error lines in the broker's log (JSON or text), and the calls it let go."""
    try:
        text = broker.log.read_text(errors="replace")
    except OSError:
        return {"errors": 0, "leases_lost": 0}
    lines = text.splitlines()
    return {
        "errors": sum(
            1
            for line in lines
            if '"level": "error"' in line or " ERROR " in line or "Traceback" in line
        ),
        # The call's lease was not renewed in time: the broker stopped relaying it.
        "leases_lost": sum(1 for line in lines if "lease not renewed in time" in line),
    }


async def run(options: Options, ctx: BenchContext) -> dict[str, Any]:
    """Run the benchmark; write and return its JSON."""
    started = start_clock()
    end = time.monotonic() + options.max_seconds
    work = ctx.work_dir / NAME
    emulator = await start_emulator_process(work, options.emulator_cpu)
    phases: dict[str, Any] = {}
    try:
        for index, mode in enumerate(options.modes):
            # Each phase gets its share of what is left of the bound.
            share = (end - time.monotonic()) / (len(options.modes) - index)
            deadline = time.monotonic() + share
            if mode == "direct":
                meters = Meters({"backends": os.getpid(), "emulator": emulator.pid})
                phases[mode] = await run_phase(
                    mode, options, direct_connector(emulator.base_url), meters, deadline
                )
            elif mode == "relayed":
                try:
                    phases[mode] = await relayed_phase(options, ctx, emulator, deadline)
                except RuntimeError as exc:
                    phases[mode] = {"mode": mode, "steps": [], "failed": str(exc)[:2000]}
    finally:
        await emulator.stop()
    results: dict[str, Any] = {
        "cycle": {
            "chunk_ms": options.chunk_ms,
            "speech_s": options.speech_s,
            "silence_s": options.silence_s,
            "input_format": "audio/pcm 24 kHz",
        },
        "pinning": {
            "cores": os.cpu_count(),
            "broker": bool(taskset_prefix(options.broker_cpu)),
            "emulator": emulator.pinned,
        },
        "phases": phases,
        "ratios": ratios(phases.get("direct", {}), phases.get("relayed", {})),
    }
    return finish(NAME, ctx, options, started, results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.trusted", description=__doc__)
    add_common_args(parser, PRESETS)
    parser.add_argument("--steps", type=lambda s: tuple(int(x) for x in s.split(",") if x))
    parser.add_argument("--modes", type=lambda s: tuple(x for x in s.split(",") if x))
    args = parser.parse_args(argv)
    options = override(PRESETS[args.preset], args, ["steps", "modes"])
    payload = asyncio.run(run(options, context_from_args(args)))
    json.dump(payload["results"]["ratios"], sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
