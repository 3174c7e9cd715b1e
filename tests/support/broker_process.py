"""Run the broker as a real ``broker serve`` subprocess, so a test can SIGKILL or SIGTERM it.

The reliability suite needs what an in-process broker cannot give: a process that dies at
once (SIGKILL: nothing in it runs again) or stops the way a deploy stops it (SIGTERM:
aiohttp's graceful exit). Each process serves on its own free loopback port and logs to a file
the failure messages quote; a :class:`BrokerLauncher` starts them on one database and kills
and reaps whatever is still running when it closes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import aiohttp

from tests.support.broker_server import ADMIN_KEY, PROVIDER_KEY, Reply, assert_no_provider_key
from tests.support.browser import FakeBrowser

ROOT: Final = Path(__file__).resolve().parents[2]
SIGNING_KEY: Final = "test-signing-key-" + "x" * 32
START_TIMEOUT_S: Final = 30.0
"""Import, migrations and the first /healthz on a loaded two-core machine."""
REAP_TIMEOUT_S: Final = 10.0
STACK_DUMP_WAIT_S: Final = 1.0
"""How long a stuck broker gets to write its stack dump before the test reads its log."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class BrokerProcess:
    """One ``broker serve`` process and an HTTP client for it (admin key by default)."""

    name: str
    base_url: str
    process: asyncio.subprocess.Process
    log: Path
    http: aiohttp.ClientSession = field(repr=False)

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def log_text(self) -> str:
        """Everything the process wrote (stdout and stderr) so far."""
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        """The end of the log, for failure messages."""
        tail = "\n".join(self.log_text().splitlines()[-lines:])
        return f"--- {self.name} log ({self.log}) ---\n{tail}"

    async def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = ADMIN_KEY,
        json_body: Any = None,
        data: str | bytes | None = None,
        content_type: str | None = None,
    ) -> Reply:
        """One request (bounded); every reply is checked for the provider key."""
        headers: dict[str, str] = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if json_body is not None:
            data = json.dumps(json_body)
            content_type = content_type or "application/json"
        if content_type is not None:
            headers["Content-Type"] = content_type
        async with asyncio.timeout(15):
            async with self.http.request(
                method, self.base_url + path, data=data, headers=headers
            ) as resp:
                reply = Reply(resp.status, dict(resp.headers), await resp.text())
        assert_no_provider_key(reply)
        return reply

    async def create_session(self, **body: Any) -> dict[str, Any]:
        reply = await self.request("POST", "/api/v1/sessions", json_body=body)
        assert reply.status == 201, reply.text
        session: dict[str, Any] = reply.json()
        return session

    async def offer(self, session: dict[str, Any], sdp: str) -> Reply:
        return await self.request(
            "POST",
            f"/api/v1/sessions/{session['id']}/realtime-offer",
            token=session["client_secret"]["value"],
            data=sdp,
            content_type="application/sdp",
        )

    async def get_session(self, session_id: str) -> dict[str, Any]:
        reply = await self.request("GET", f"/api/v1/sessions/{session_id}")
        assert reply.status == 200, reply.text
        detail: dict[str, Any] = reply.json()
        return detail

    async def connect(self, browser: FakeBrowser, session: dict[str, Any]) -> None:
        """The browser's offer through this broker; returns once its sideband is connected."""
        reply = await self.offer(session, await browser.create_offer())
        assert reply.status == 201, reply.text
        await browser.accept_answer(reply.text)
        await browser.wait_open()
        await self.wait_session(session["id"], lambda d: d["sideband"]["state"] == "connected")

    async def wait_session(
        self,
        session_id: str,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float = 10,  # noqa: ASYNC109 - same convention as FakeBrowser.wait_for
    ) -> dict[str, Any]:
        """Poll the session's detail (the public API) until ``predicate`` holds; return it."""
        detail: dict[str, Any] = {}
        try:
            async with asyncio.timeout(timeout):
                while not predicate(detail := await self.get_session(session_id)):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(
                f"session never matched within {timeout}s; last: {detail}\n{self.log_tail()}"
            ) from None
        return detail

    async def wait_tool_call(
        self,
        session_id: str,
        call_id: str,
        predicate: Callable[[dict[str, Any]], bool] = lambda row: True,
        timeout: float = 10,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        """Poll until the session has a tool-call row for ``call_id`` matching ``predicate``."""

        def matching(detail: dict[str, Any]) -> bool:
            rows = [r for r in detail["tool_calls"] if r["call_id"] == call_id]
            return bool(rows) and predicate(rows[0])

        detail = await self.wait_session(session_id, matching, timeout)
        [row] = [r for r in detail["tool_calls"] if r["call_id"] == call_id]
        return row

    async def kill(self) -> int:
        """SIGKILL: the process dies mid-whatever, nothing of it runs again; returns its code."""
        if self.process.returncode is None:
            self.process.kill()
        async with asyncio.timeout(REAP_TIMEOUT_S):
            return await self.process.wait()

    async def terminate(self, timeout: float) -> tuple[int, float]:  # noqa: ASYNC109
        """SIGTERM, then wait up to ``timeout`` s; returns the exit code and how long it took.

        Raises:
            AssertionError: still running after ``timeout`` (the log tail says where).
        """
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout):
                code = await self.process.wait()
        except TimeoutError:
            # Where it is stuck (broker/stack_dump.py), for the failure message.
            self.process.send_signal(signal.SIGUSR1)
            await asyncio.sleep(STACK_DUMP_WAIT_S)
            raise AssertionError(
                f"{self.name} still running {timeout}s after SIGTERM\n{self.log_tail(400)}"
            ) from None
        return code, time.monotonic() - started


class BrokerLauncher:
    """Starts ``broker serve`` processes sharing one database and tools file.

    Use as an async context manager: on exit every process still running is killed and
    reaped, and the HTTP client is closed.

    Args:
        database_url: the URL every process uses, so a restarted broker sees what the
            previous one recorded. ``broker serve`` migrates a SQLite file itself; a
            PostgreSQL database must come migrated (the test fixtures' do).
        provider_base_url: the emulator's ``…/v1``; the test provider key goes with it.
        tools_config: the tools TOML (``BROKER_CONFIG``).
        log_dir: where each process's log file goes.
    """

    def __init__(
        self, database_url: str, provider_base_url: str, tools_config: Path, log_dir: Path
    ) -> None:
        self._database_url = database_url
        self._provider_base_url = provider_base_url
        self._tools_config = tools_config
        self._log_dir = log_dir
        self.started: list[BrokerProcess] = []
        # A fresh connection per request: a killed broker must not leave a pooled socket.
        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))

    async def __aenter__(self) -> BrokerLauncher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def env(self, port: int, overrides: Mapping[str, str]) -> dict[str, str]:
        # Nothing from the developer's environment configures the broker under test.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "OPENAI_"))}
        env |= {
            "BROKER_HOST": "127.0.0.1",
            "BROKER_PORT": str(port),
            "BROKER_DATABASE_URL": self._database_url,
            "BROKER_PROVIDER_BASE_URL": self._provider_base_url,
            "BROKER_PROVIDER_API_KEY": PROVIDER_KEY,
            "BROKER_CONFIG": str(self._tools_config),
            "BROKER_ADMIN_KEY": ADMIN_KEY,
            "BROKER_SIGNING_KEY": SIGNING_KEY,
            "BROKER_PROVIDER_TIMEOUT": "5",
            "BROKER_SIDEBAND_ATTACH_TIMEOUT": "5",
            "BROKER_SIDEBAND_RECONNECT_TIMEOUT": "5",
            "BROKER_BRIDGE_WAIT_TIMEOUT": "3",
            # A loaded CI machine stalls every process now and then; the overload brake has
            # tests of its own (tests/integration/test_overload.py).
            "BROKER_OVERLOAD_LOOP_LAG_S": "60",
        }
        env |= dict(overrides)
        # An empty override unsets the variable (say, a broker with no BROKER_SIGNING_KEY).
        return {k: v for k, v in env.items() if not (k in overrides and v == "")}

    async def start(self, *, code: Path = ROOT, **overrides: str) -> BrokerProcess:
        """Start one more broker (``overrides``: ``BROKER_*`` variables); wait for /healthz.

        ``code``: the checkout whose ``broker`` package runs (another release's, for a
        rolling deploy); this one by default.

        Raises:
            AssertionError: it exited or did not serve within :data:`START_TIMEOUT_S`.
        """
        for _ in range(3):
            running = await self._spawn(overrides, code)
            if await self._ready(running):
                return running
            if "address already in use" not in running.log_text().lower():
                raise AssertionError(f"{running.name} did not start\n{running.log_tail()}")
            # The free port was taken between our probe and its bind: try another one.
        raise AssertionError("no free port for the broker after 3 attempts")

    async def _spawn(self, overrides: Mapping[str, str], code: Path = ROOT) -> BrokerProcess:
        port = _free_port()
        name = f"broker-{len(self.started) + 1}"
        log = self._log_dir / f"{name}.log"
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "broker",
                "--log-level",
                "INFO",
                "serve",
                cwd=code,
                # ``-m broker`` finds the package in the working directory first; the test
                # tools (tests.support) come from this checkout whichever release runs.
                env=self.env(port, overrides) | {"PYTHONPATH": f"{code}{os.pathsep}{ROOT}"},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )
        running = BrokerProcess(name, f"http://127.0.0.1:{port}", process, log, self._http)
        self.started.append(running)
        return running

    async def _ready(self, running: BrokerProcess) -> bool:
        """Poll /healthz until 200 (``True``) or the process exits (``False``)."""
        wait = asyncio.ensure_future(running.process.wait())
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                while not wait.done():
                    try:
                        async with self._http.get(running.base_url + "/healthz") as resp:
                            if resp.status == 200:
                                return True
                    except aiohttp.ClientConnectionError:
                        pass
                    await asyncio.wait({wait}, timeout=0.1)
        except TimeoutError:
            raise AssertionError(
                f"{running.name} not serving after {START_TIMEOUT_S}s\n{running.log_tail()}"
            ) from None
        finally:
            if not wait.done():
                wait.cancel()
                await asyncio.gather(wait, return_exceptions=True)
        return False

    async def close(self) -> None:
        """Kill and reap every process still running; close the client. Idempotent."""
        for running in self.started:
            if running.returncode is None:
                await running.kill()
        await self._http.close()
