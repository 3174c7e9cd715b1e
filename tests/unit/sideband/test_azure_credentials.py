"""Azure's credentials: the Entra token command, the resource key, and one credential per dial.

The token command runs real processes (small Python scripts); the dial tests attach to a real
aiohttp WebSocket server on loopback that records each handshake's headers.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from sideband import (
    ApiKeyCredential,
    CredentialError,
    ProviderUnreachableError,
    SidebandConnection,
    SidebandTarget,
    TokenCommand,
)

TOKEN = "eyJ0eXAiOiJKV1QifQ.entra-token-body.signature"


def script(tmp_path: Path, body: str, name: str = "token.py") -> list[str]:
    """A token command: ``python <file>`` running ``body``."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return [sys.executable, str(path)]


def counting_script(tmp_path: Path) -> list[str]:
    """Prints ``token-<n>``, n counting its runs (kept in ``runs``)."""
    runs = tmp_path / "runs"
    return script(
        tmp_path,
        f"""
        from pathlib import Path
        runs = Path({str(runs)!r})
        n = len(runs.read_text().split()) + 1 if runs.exists() else 1
        runs.write_text(runs.read_text() + "x\\n" if runs.exists() else "x\\n")
        print(f"token-{{n}}")
        """,
    )


async def test_the_command_runs_once_per_token_and_its_output_is_the_bearer(
    tmp_path: Path,
) -> None:
    """Entra tokens expire mid-call: every request or dial runs the command anew."""
    command = TokenCommand(counting_script(tmp_path), timeout=10)
    assert await command() == {"Authorization": "Bearer token-1"}
    assert await command() == {"Authorization": "Bearer token-2"}
    assert (tmp_path / "runs").read_text().split() == ["x", "x"]


async def test_az_json_output_gives_its_access_token(tmp_path: Path) -> None:
    printed = {"accessToken": TOKEN, "expiresOn": "2030-01-01 00:00:00", "tokenType": "Bearer"}
    command = TokenCommand(script(tmp_path, f"print({json.dumps(json.dumps(printed))})"), 10)
    assert await command.token() == TOKEN


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("import sys; print('SECRET-OUTPUT'); sys.exit(3)", "exited with status 3"),
        ("print('SECRET-OUTPUT with spaces')", "printed no usable token"),
        ("print('')", "printed no usable token"),
        ("print('{\"SECRET-OUTPUT\": 1}')", "printed no usable token"),
        ("import sys; sys.stdout.buffer.write(b'SECRET-OUTPUT\\xff')", "printed no usable token"),
        ("print('SECRET-OUTPUT\\r\\nX-Injected: 1')", "printed no usable token"),
    ],
)
async def test_a_failing_command_is_a_credential_error_that_shows_none_of_its_output(
    tmp_path: Path, body: str, reason: str
) -> None:
    """The error says what failed; the command's output (maybe a token) is never in it."""
    command = TokenCommand(script(tmp_path, body), timeout=10)
    with pytest.raises(CredentialError) as caught:
        await command()
    assert reason in str(caught.value)
    assert "SECRET-OUTPUT" not in str(caught.value)
    assert isinstance(caught.value, ProviderUnreachableError)  # callers treat it as unreachable


async def test_a_missing_program_is_a_credential_error(tmp_path: Path) -> None:
    command = TokenCommand([str(tmp_path / "no-such-program")], timeout=10)
    with pytest.raises(CredentialError, match=r"could not start \(FileNotFoundError\)"):
        await command()


async def test_a_command_past_its_timeout_is_killed_with_what_it_started(tmp_path: Path) -> None:
    """A hung ``az`` must not pile up: the command's whole process group is killed."""
    pids = tmp_path / "pids"
    argv = script(
        tmp_path,
        f"""
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(pids)!r}, "w").write(f"{{os.getpid()}} {{child.pid}}")
        time.sleep(60)
        """,
    )
    command = TokenCommand(argv, timeout=1.0)
    with pytest.raises(CredentialError, match="timed out after 1s"):
        await command()
    for pid in map(int, pids.read_text().split()):
        await _wait_gone(pid)


async def test_a_cancelled_run_kills_the_command(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    argv = script(
        tmp_path,
        f"""
        import os, time
        open({str(pids)!r}, "w").write(str(os.getpid()))
        time.sleep(60)
        """,
    )
    task = asyncio.create_task(TokenCommand(argv, timeout=60).token())
    async with asyncio.timeout(10):
        while not pids.exists() or not pids.read_text():  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _wait_gone(int(pids.read_text()))


async def test_the_command_does_not_inherit_the_brokers_own_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BROKER_SIGNING_KEY", "the-brokers-signing-key-0123456789")
    monkeypatch.setenv("AZURE_TENANT_ID", "tenant")
    argv = script(
        tmp_path,
        """
        import os
        leaked = any(name.startswith("BROKER_") for name in os.environ)
        print("leaked" if leaked else "clean-" + os.environ.get("AZURE_TENANT_ID", "none"))
        """,
    )
    assert await TokenCommand(argv, timeout=10).token() == "clean-tenant"


def test_reprs_show_no_credential(tmp_path: Path) -> None:
    command = TokenCommand(["/usr/bin/get-token", "--client-secret", "s3cr3t-arg"], timeout=5)
    assert repr(command) == "TokenCommand(program='get-token')"
    assert "k3y" not in repr(ApiKeyCredential("resource-k3y"))


async def test_the_resource_key_goes_as_api_key() -> None:
    assert await ApiKeyCredential("resource-key")() == {"api-key": "resource-key"}


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A killed process stays a zombie until its parent reaps it: a zombie counts as gone.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.split(") ", 1)[1].startswith("Z")


async def _wait_gone(pid: int) -> None:
    async with asyncio.timeout(10):
        while not _gone(pid):  # noqa: ASYNC110
            await asyncio.sleep(0.05)


# ---- one credential per dial ------------------------------------------------------------


@pytest.fixture
async def handshakes() -> AsyncIterator[tuple[URL, list[Mapping[str, str]]]]:
    """A WebSocket server on loopback recording each handshake's headers (then closing)."""
    seen: list[Mapping[str, str]] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        seen.append(dict(request.headers))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/openai/v1/realtime", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield URL(f"ws://127.0.0.1:{port}/openai/v1/realtime?call_id=rtc_1"), seen
    await runner.cleanup()


async def test_each_dial_asks_the_credential_anew(
    handshakes: tuple[URL, list[Mapping[str, str]]],
) -> None:
    """A re-attach an hour into a call must not present the token the first attach got."""
    url, seen = handshakes
    issued = iter(f"token-{n}" for n in range(1, 10))

    async def credential() -> Mapping[str, str]:
        return {"Authorization": f"Bearer {next(issued)}"}

    target = SidebandTarget(url=url, headers={"X-Fixed": "1"}, credential=credential)
    async with aiohttp.ClientSession() as http:
        for _ in range(2):
            connection = await SidebandConnection.attach(http, target, "rtc_1", attach_timeout=5)
            await connection.close()
    assert [(h["Authorization"], h["X-Fixed"]) for h in seen] == [
        ("Bearer token-1", "1"),
        ("Bearer token-2", "1"),
    ]
    assert "credential" not in repr(target) and "token" not in repr(target)


async def test_a_credential_that_fails_once_is_retried_within_the_attach_bound(
    handshakes: tuple[URL, list[Mapping[str, str]]],
) -> None:
    url, seen = handshakes
    calls = 0

    async def credential() -> Mapping[str, str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise CredentialError("credential", "the token command exited with status 1")
        return {"api-key": "resource-key"}

    async with aiohttp.ClientSession() as http:
        connection = await SidebandConnection.attach(
            http, SidebandTarget(url=url, credential=credential), "rtc_1", attach_timeout=5
        )
        await connection.close()
    assert connection.attempts == 2
    assert [h["api-key"] for h in seen] == ["resource-key"]


async def test_a_credential_that_keeps_failing_ends_the_attach_with_its_error(
    handshakes: tuple[URL, list[Mapping[str, str]]],
) -> None:
    url, seen = handshakes

    async def credential() -> Mapping[str, str]:
        raise CredentialError("credential", "the token command exited with status 1")

    async with aiohttp.ClientSession() as http:
        with pytest.raises(CredentialError, match="status 1"):
            await SidebandConnection.attach(
                http, SidebandTarget(url=url, credential=credential), "rtc_1", attach_timeout=0.5
            )
    assert seen == []
