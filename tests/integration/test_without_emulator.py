"""A broker with a provider key runs where the emulator and its media stack are not installed.

Each test runs Python in a subprocess whose import system plays that install: importing
``emulator``, ``aiortc``, ``av``, ``numpy`` (or aiortc's own ``aioice``, ``pyee``) fails, and
every attempt is written to a file. The broker must serve with none of them loaded and none
even tried; the last test shows the same harness failing a broker that does need the
emulator, so a check that passes here could have failed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest

from tests.support.broker_process import ROOT, SIGNING_KEY
from tests.support.broker_server import ADMIN_KEY, PROVIDER_KEY

ABSENT: Final = ("emulator", "aiortc", "av", "numpy", "aioice", "pyee")
START_TIMEOUT_S: Final = 30.0


def _absent_modules(attempts: Path) -> str:
    """Source that makes :data:`ABSENT` uninstalled for the rest of the process."""
    return textwrap.dedent(
        f"""
        import importlib.abc
        import sys

        class _Absent(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] not in {ABSENT!r}:
                    return None
                with open({str(attempts)!r}, "a") as tried:
                    tried.write(name + "\\n")
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

        sys.meta_path.insert(0, _Absent())
        """
    )


def _tried(attempts: Path) -> list[str]:
    return attempts.read_text().split() if attempts.exists() else []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def unreachable_provider() -> Iterator[str]:
    """A loopback URL nothing listens on: the broker must not need its provider to start.

    The port stays bound (never listening) for the test, so nothing else can take it.
    """
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{held.getsockname()[1]}/v1"


def _serve_env(db_url: str, port: int, provider: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "OPENAI_"))}
    env |= {
        "BROKER_HOST": "127.0.0.1",
        "BROKER_PORT": str(port),
        "BROKER_DATABASE_URL": db_url,
        "BROKER_ADMIN_KEY": ADMIN_KEY,
        "BROKER_SIGNING_KEY": SIGNING_KEY,
        "BROKER_PROVIDER_TIMEOUT": "2",
    }
    if provider is not None:
        env |= {"BROKER_PROVIDER_BASE_URL": provider, "BROKER_PROVIDER_API_KEY": PROVIDER_KEY}
    return env


async def _run_python(source: str, *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        source,
        *args,
        cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(START_TIMEOUT_S * 2):
        out, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace")


OFFER: Final = "\r\n".join(
    [
        "v=0",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "a=setup:actpass",
        "a=fingerprint:sha-256 00:11",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "",
    ]
)
"""What the broker checks an offer for (it is never sent anywhere reachable)."""

APP_CHECK: Final = """
import asyncio, json, sys
from broker import Secret, Settings
from tests.support.broker_server import ADMIN_KEY, PROVIDER_KEY, start_broker

async def main() -> None:
    settings = Settings(
        signing_key=Secret("test-signing-key-" + "x" * 32),
        database_url=sys.argv[1],
        admin_key=Secret(ADMIN_KEY),
        provider_base_url=sys.argv[2],
        provider_api_key=Secret(PROVIDER_KEY),
        provider_timeout=2.0,
    )
    broker = await start_broker(settings)
    try:
        health = await broker.request("GET", "/healthz", token=None)
        session = await broker.create_session()
        offer = await broker.offer(session, OFFER)
    finally:
        await broker.http.close()
        await broker.close()
    print(json.dumps({
        "health": [health.status, health.json()],
        "offer": [offer.status, offer.code],
        "loaded": sorted(m for m in sys.modules if m.partition(".")[0] in ABSENT),
    }))

asyncio.run(main())
"""


async def test_the_app_with_a_provider_key_never_imports_the_emulator(
    db_url: str, tmp_path: Path, unreachable_provider: str
) -> None:
    """Built by the tests' own helper, it serves health, sessions and offers (the provider
    is unreachable, so the offer fails as that), with no emulator module loaded or tried."""
    attempts = tmp_path / "attempts"
    source = _absent_modules(attempts) + f"ABSENT = {ABSENT!r}\nOFFER = {OFFER!r}\n" + APP_CHECK
    code, out = await _run_python(source, db_url, unreachable_provider)
    assert code == 0, out
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    assert result["health"] == [200, {"status": "ok", "provider": "openai"}], result
    assert result["offer"][0] == 502 and result["offer"][1] == "provider_unreachable", result
    assert result["loaded"] == [], result
    assert _tried(attempts) == []


async def _serve(env: dict[str, str], attempts: Path, log: Path) -> asyncio.subprocess.Process:
    source = _absent_modules(attempts) + (
        "from broker.cli import main\nraise SystemExit(main(['--log-level', 'INFO', 'serve']))\n"
    )
    with log.open("wb") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            source,
            cwd=ROOT,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )


async def _health(base_url: str, process: asyncio.subprocess.Process) -> dict[str, Any] | None:
    """Poll /healthz until it answers 200 (its body) or the process exits (``None``)."""
    async with aiohttp.ClientSession() as http, asyncio.timeout(START_TIMEOUT_S):
        while process.returncode is None:
            try:
                async with http.get(base_url + "/healthz") as resp:
                    if resp.status == 200:
                        body: dict[str, Any] = await resp.json()
                        return body
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
    return None


async def _serve_and_stop(env: dict[str, str], port: int, tmp_path: Path, provider: str) -> str:
    """``broker serve`` under the harness: its /healthz answers for ``provider``, SIGTERM
    stops it with status 0, and it never tried to import an absent module. Returns its log."""
    attempts, log = tmp_path / "attempts", tmp_path / "serve.log"
    process = await _serve(env, attempts, log)
    try:
        health = await _health(f"http://127.0.0.1:{port}", process)
        assert health == {"status": "ok", "provider": provider}, log.read_text()
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            code = await process.wait()
    assert code == 0, log.read_text()
    assert _tried(attempts) == [], log.read_text()
    return log.read_text()


async def test_broker_serve_with_a_provider_key_runs_without_the_emulator(
    db_url: str, tmp_path: Path, unreachable_provider: str
) -> None:
    port = _free_port()
    await _serve_and_stop(_serve_env(db_url, port, unreachable_provider), port, tmp_path, "openai")


async def test_broker_serve_on_azure_with_a_key_runs_without_the_emulator(
    db_url: str, tmp_path: Path, unreachable_provider: str
) -> None:
    """``BROKER_PROVIDER=azure`` with a resource key loads the Azure provider only."""
    port = _free_port()
    env = _serve_env(db_url, port, unreachable_provider.removesuffix("/v1"))
    env["BROKER_PROVIDER"] = "azure"
    log = await _serve_and_stop(env, port, tmp_path, "azure")
    assert PROVIDER_KEY not in log


async def test_the_harness_catches_a_broker_that_needs_the_emulator(
    db_url: str, tmp_path: Path
) -> None:
    """Without a provider key the broker starts the built-in emulator: under the same
    harness it cannot start, and the attempt is on file."""
    attempts, log = tmp_path / "attempts", tmp_path / "serve.log"
    port = _free_port()
    process = await _serve(_serve_env(db_url, port, None), attempts, log)
    try:
        health = await _health(f"http://127.0.0.1:{port}", process)
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
    assert health is None, "served although the emulator could not be imported"
    assert process.returncode != 0
    assert "emulator" in _tried(attempts), log.read_text()
    assert "No module named 'emulator'" in log.read_text()
