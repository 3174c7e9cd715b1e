"""The stack under test: the emulator in this process, the broker as its own process.

The broker runs as ``python -m broker serve`` (or under :mod:`bench.profiled_broker`) so
that its RSS and CPU time, read from ``/proc``, are its own. The emulator runs in the
benchmark's process: the driver reaches its calls directly (:mod:`bench.probe` takes the
dispatch timestamps there) and points the broker at ``/_emulator/bench/v1``, where an offer
can ask for a call without a WebRTC peer (``emulator.admin.SidebandOnlyCall``).

Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
from aiohttp import web

from broker.settings.model import DEFAULT_MODEL, DEFAULT_VOICE
from emulator import CALL_REGISTRY, CallRegistry, EmulatorSettings, create_app
from emulator.admin import BENCH_BASE_PATH

from .databases import DatabaseKind, scratch_database

ROOT: Final = Path(__file__).resolve().parents[1]
PROVIDER_KEY: Final = "sk-bench-provider-key-7c1d2e9a4b6f8035"
ADMIN_KEY: Final = "bench-admin-key-0123456789abcdef"
SIGNING_KEY: Final = "bench-signing-key-" + "b" * 32
START_TIMEOUT_S: Final = 60.0
"""Import, migration and the first /healthz of a broker on a busy two-core machine."""
STOP_TIMEOUT_S: Final = 30.0
REQUEST_TIMEOUT_S: Final = 60.0
NOOP_TOOL: Final = "noop"

TOOLS_TOML: Final = f"""# Written by bench/: the one tool the benchmarks call.
[tools.{NOOP_TOOL}]
description = "Does nothing and answers at once (benchmarks)."
timeout = 5.0
python = "bench.noop_tool:noop"

[tools.{NOOP_TOOL}.parameters]
type = "object"
properties = {{}}
additionalProperties = false
"""

NOOP_DEFINITION: Final = {
    "type": "function",
    "name": NOOP_TOOL,
    "description": "Does nothing and answers at once (benchmarks).",
    "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
}
"""The tool as the broker puts it in a session config (``ToolSpec.provider_definition``)."""


def provider_session_config(instructions: str) -> dict[str, Any]:
    """The session config the broker sends with an offer for a benchmark session."""
    return {
        "type": "realtime",
        "model": DEFAULT_MODEL,
        "instructions": instructions,
        "audio": {"output": {"voice": DEFAULT_VOICE}},
        "tools": [NOOP_DEFINITION],
        "tool_choice": "auto",
    }


BROKER_BENCH_ENV: Final = {
    # Thousands of sessions come from one key within seconds.
    "BROKER_SESSION_CREATE_RATE": "0",
    # The bridge benchmark runs hundreds of calls per session back to back: it measures
    # dispatch, not the per-session abuse brake.
    "BROKER_BRIDGE_RATE": "0",
    # Sessions live for the whole run and call the tool many times: the limits must not
    # end them (the ceilings of these settings).
    "BROKER_CALL_MAX_DURATION": "3600",
    "BROKER_CALL_IDLE_TIMEOUT": "3600",
    "BROKER_SESSION_MAX_TOOL_CALLS": "10000",
    "BROKER_CLIENT_SECRET_TTL": "3600",
    # A loaded machine must not turn a slow attach into a benchmark failure.
    "BROKER_PROVIDER_TIMEOUT": "30",
    "BROKER_SIDEBAND_ATTACH_TIMEOUT": "30",
    "BROKER_SIDEBAND_RECONNECT_TIMEOUT": "30",
    "BROKER_SHUTDOWN_GRACE_S": "5",
    # The benchmarks step past what one process should take, to find where it saturates:
    # the overload brake (tested on its own) must not refuse their sessions first.
    "BROKER_MAX_LIVE_CALLS": "0",
    "BROKER_OVERLOAD_LOOP_LAG_S": "60",
    "BROKER_EVENT_LOG_MAX_PENDING": "10000000",
    "BROKER_OVERLOAD_EVENT_LOG_LAG_S": "3600",
}


def taskset_prefix(cpu: int | None) -> list[str]:
    """``["taskset", "-c", cpu]`` to pin a command to one core; ``[]`` if that cannot be done.

    ``None``, a core this machine does not have, or no ``taskset``: nothing is pinned.
    """
    if cpu is None or shutil.which("taskset") is None or cpu >= (os.cpu_count() or 1):
        return []
    return ["taskset", "-c", str(cpu)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Emulator:
    """The emulator app on a loopback port, in this process."""

    runner: web.AppRunner
    port: int
    settings: EmulatorSettings

    @property
    def registry(self) -> CallRegistry:
        return self.runner.app[CALL_REGISTRY]

    @property
    def bench_base_url(self) -> str:
        """The provider base URL the broker is given (sideband-only offers work there)."""
        return f"http://127.0.0.1:{self.port}{BENCH_BASE_PATH}"

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_emulator() -> Emulator:
    """Start the emulator on a free loopback port.

    No pauses between deltas and no speech, so the model's own pacing never counts as broker
    latency.
    """
    settings = EmulatorSettings(api_key=PROVIDER_KEY, token_interval=0.0, speech="off")
    runner = web.AppRunner(create_app(settings), shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = int(runner.addresses[0][1])
    return Emulator(runner, port, settings)


def _make_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_tools_config(work_dir: Path) -> Path:
    path = _make_dir(work_dir) / "bench_tools.toml"
    path.write_text(TOOLS_TOML)
    return path


@dataclass
class BrokerProcess:
    """One broker process serving on a loopback port."""

    process: asyncio.subprocess.Process
    base_url: str
    log: Path
    profile_dir: Path | None = None
    _profiles_taken: int = field(default=0, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def stop(self) -> int:
        """SIGTERM (aiohttp drains), then SIGKILL after :data:`STOP_TIMEOUT_S`; the exit code."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await self.process.wait()
            except TimeoutError:
                self.process.kill()
        async with asyncio.timeout(STOP_TIMEOUT_S):
            return await self.process.wait()

    def profile_start(self) -> None:
        """Start the in-process profiler (only under :mod:`bench.profiled_broker`)."""
        assert self.profile_dir is not None, "broker not started with profiling"
        self.process.send_signal(signal.SIGUSR1)

    async def profile_stop(self, timeout: float = 60.0) -> Path:  # noqa: ASYNC109
        """Stop the profiler; return the saved pyinstrument session once written."""
        assert self.profile_dir is not None, "broker not started with profiling"
        self._profiles_taken += 1
        path = self.profile_dir / f"profile-{self._profiles_taken}.json"
        self.process.send_signal(signal.SIGUSR2)
        async with asyncio.timeout(timeout):
            while not path.exists():  # noqa: ASYNC110 - a file written by another process
                await asyncio.sleep(0.1)
        return path


async def start_broker(
    work_dir: Path,
    *,
    provider_base_url: str,
    database_url: str,
    name: str = "broker",
    log_level: str = "INFO",
    pyinstrument: bool = False,
    extra_env: Mapping[str, str] | None = None,
    cpu: int | None = None,
) -> BrokerProcess:
    """Start ``broker serve`` and wait for ``/healthz``.

    Args:
        work_dir: where its tools file, log and (for pyinstrument) profiles go.
        provider_base_url: the emulator's base URL.
        database_url: SQLite is migrated by ``serve``; PostgreSQL must be migrated already.
        name: names the log file.
        log_level: the broker's ``--log-level``.
        pyinstrument: run under :mod:`bench.profiled_broker` (profiles on request).
        extra_env: more ``BROKER_*`` settings.
        cpu: pin the process to this core (:func:`taskset_prefix`; ``None``: not pinned).

    Raises:
        RuntimeError: it exited or did not serve in time (with its log's tail).
    """
    tools = write_tools_config(work_dir)
    profile_dir = _make_dir(work_dir / f"{name}-profiles") if pyinstrument else None
    if profile_dir is not None:
        # Profiles are numbered per process from 1: an earlier run's would be taken for ours.
        for stale in profile_dir.glob("profile-*"):
            stale.unlink()
    for _attempt in range(3):
        port = free_port()
        # Nothing from the developer's environment configures the broker under test.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "OPENAI_"))}
        env |= BROKER_BENCH_ENV | {
            "BROKER_HOST": "127.0.0.1",
            "BROKER_PORT": str(port),
            "BROKER_DATABASE_URL": database_url,
            "BROKER_PROVIDER_BASE_URL": provider_base_url,
            "BROKER_PROVIDER_API_KEY": PROVIDER_KEY,
            "BROKER_CONFIG": str(tools),
            "BROKER_ADMIN_KEY": ADMIN_KEY,
            "BROKER_SIGNING_KEY": SIGNING_KEY,
        }
        env |= dict(extra_env or {})
        if profile_dir is not None:
            env["BENCH_PROFILE_DIR"] = str(profile_dir)
        module = "bench.profiled_broker" if pyinstrument else "broker"
        log = work_dir / f"{name}.log"
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                # taskset execs the broker: the process id stays the broker's own.
                *taskset_prefix(cpu),
                sys.executable,
                "-m",
                module,
                "--log-level",
                log_level,
                "serve",
                cwd=ROOT,  # the tools file names bench.noop_tool: importable from here
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )
        broker = BrokerProcess(process, f"http://127.0.0.1:{port}", log, profile_dir)
        if await _wait_ready(broker):
            return broker
        if "address already in use" not in broker.log_tail().lower():
            raise RuntimeError(f"{name} did not start:\n{broker.log_tail()}")
        # The port was taken between the probe and the bind: try another.
    raise RuntimeError(f"{name}: no free port after 3 attempts")


async def _wait_ready(broker: BrokerProcess) -> bool:
    deadline = time.monotonic() + START_TIMEOUT_S
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if broker.process.returncode is not None:
                return False
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with asyncio.timeout(5):
                    async with http.get(broker.base_url + "/healthz") as resp:
                        if resp.status == 200:
                            return True
            await asyncio.sleep(0.1)
    await broker.stop()
    raise RuntimeError(f"broker not serving after {START_TIMEOUT_S}s:\n{broker.log_tail()}")


class BrokerApiError(RuntimeError):
    """The broker answered a benchmark request with an unexpected status."""

    def __init__(self, what: str, status: int, body: str) -> None:
        super().__init__(f"{what}: HTTP {status}: {body[:300]}")
        self.status = status


@dataclass(frozen=True)
class CreatedSession:
    session_id: str
    client_secret: str


class BrokerApi:
    """The broker's HTTP API as the benchmarks use it (admin key; client secrets for offers).

    Args:
        base_url: the broker's ``http://127.0.0.1:PORT``.
        connections: the client's pool size; setup runs this many requests at once.
    """

    def __init__(self, base_url: str, connections: int = 64) -> None:
        self.base_url = base_url
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections),
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
        )

    async def close(self) -> None:
        await self.http.close()

    def _admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_KEY}"}

    async def create_session(
        self, *, sideband: bool = True, instructions: str | None = None
    ) -> CreatedSession:
        body: dict[str, Any] = {"tools": [NOOP_TOOL], "sideband": sideband}
        if instructions is not None:
            body["instructions"] = instructions
        async with self.http.post(
            self.base_url + "/api/v1/sessions", json=body, headers=self._admin()
        ) as resp:
            text = await resp.text()
            if resp.status != 201:
                raise BrokerApiError("create session", resp.status, text)
        data = json.loads(text)
        return CreatedSession(data["id"], data["client_secret"]["value"])

    async def offer(self, session: CreatedSession, sdp: str) -> str:
        """Post the offer; the SDP answer."""
        async with self.http.post(
            f"{self.base_url}/api/v1/sessions/{session.session_id}/realtime-offer",
            data=sdp,
            headers={
                "Authorization": f"Bearer {session.client_secret}",
                "Content-Type": "application/sdp",
            },
        ) as resp:
            text = await resp.text()
            if resp.status != 201:
                raise BrokerApiError("offer", resp.status, text)
        return text

    async def detail(self, session_id: str) -> dict[str, Any]:
        async with self.http.get(
            f"{self.base_url}/api/v1/sessions/{session_id}", headers=self._admin()
        ) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise BrokerApiError("session detail", resp.status, text)
        detail: dict[str, Any] = json.loads(text)
        return detail

    async def bridge(
        self, session: CreatedSession, tool: str, call_id: str, arguments: str
    ) -> dict[str, Any]:
        async with self.http.post(
            f"{self.base_url}/api/v1/sessions/{session.session_id}/tools/{tool}",
            json={"call_id": call_id, "arguments": arguments},
            headers={"Authorization": f"Bearer {session.client_secret}"},
        ) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise BrokerApiError("bridge", resp.status, text)
        reply: dict[str, Any] = json.loads(text)
        return reply

    async def metrics(self) -> str:
        async with self.http.get(self.base_url + "/metrics", headers=self._admin()) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise BrokerApiError("metrics", resp.status, text)
        return text


def broker_dispatch_totals(metrics_text: str, tool: str = NOOP_TOOL) -> tuple[int, float]:
    """``(count, total seconds)`` of the broker's own ``broker_dispatch_seconds`` for ``tool``.

    The broker times from the function call seen on its sideband to its output sent; the
    benchmarks time on the emulator's side, so the difference is the transport both ways
    and the emulator's own scheduling.
    """
    total = count = 0.0
    for line in metrics_text.splitlines():
        if not line.startswith("broker_dispatch_seconds_") or f'tool="{tool}"' not in line:
            continue
        name, _, value = line.rpartition(" ")
        if name.startswith("broker_dispatch_seconds_sum"):
            total = float(value)
        elif name.startswith("broker_dispatch_seconds_count"):
            count = float(value)
    return int(count), total


async def read_metrics(api: BrokerApi) -> str | None:
    """The broker's ``/metrics`` now; ``None`` if it did not answer in time.

    An overloaded broker must not fail the benchmark over its metrics.
    """
    try:
        return await api.metrics()
    except (aiohttp.ClientError, BrokerApiError, TimeoutError):
        return None


async def read_dispatch_totals(api: BrokerApi) -> tuple[int, float] | None:
    """Read :func:`broker_dispatch_totals` now; ``None`` if the broker did not answer."""
    text = await read_metrics(api)
    return broker_dispatch_totals(text) if text is not None else None


def session_probes_total(metrics_text: str) -> int | None:
    """``broker_session_probes_total``: the broker's probes of the provider's session config."""
    for line in metrics_text.splitlines():
        if line.startswith("broker_session_probes_total "):
            return int(float(line.rpartition(" ")[2]))
    return None


def mean_ms_between(
    before: tuple[int, float] | None, after: tuple[int, float] | None
) -> float | None:
    """The mean, in ms, of what a histogram observed between two readings."""
    if before is None or after is None:
        return None
    count = after[0] - before[0]
    return round((after[1] - before[1]) / count * 1000, 3) if count > 0 else None


@contextlib.asynccontextmanager
async def running_stack(
    db: DatabaseKind, work: Path, *, pyinstrument: bool, connections: int = 64
) -> AsyncIterator[tuple[BrokerApi, BrokerProcess, Emulator]]:
    """The emulator in this process, a scratch database and a broker process against it.

    Everything is stopped and cleaned up on the way out, in reverse order.
    """
    emulator = await start_emulator()
    try:
        async with scratch_database(db, work) as db_url:
            broker = await start_broker(
                work,
                provider_base_url=emulator.bench_base_url,
                database_url=db_url,
                pyinstrument=pyinstrument,
            )
            api = BrokerApi(broker.base_url, connections=connections)
            try:
                yield api, broker, emulator
            finally:
                await api.close()
                await broker.stop()
    finally:
        await emulator.close()
