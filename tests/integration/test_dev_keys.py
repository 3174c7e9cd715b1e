"""``broker serve --dev`` reuses its two development keys across starts, and never leaves
earlier ones valid."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

import aiohttp

from broker.auth.dev_keys import DEV_KEYS_FILE_NAME

KEY_LINE = re.compile(r"^\s+(API key|ops key)\s+(bk_\S+)", re.MULTILINE)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "OPENAI_"))}
    return env | {
        "BROKER_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'dev.db'}",
        "BROKER_SIGNING_KEY_FILE": str(tmp_path / "keys" / "signing.key"),
    }


async def _broker(
    tmp_path: Path, *args: str, env: Mapping[str, str] | None = None
) -> tuple[int, str]:
    """Run ``broker *args`` to its end; ``env`` adds to (or replaces in) :func:`_env`."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "broker",
        *args,
        cwd=tmp_path,
        env=_env(tmp_path) | dict(env or {}),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(60):
        out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def _dev_start(tmp_path: Path) -> dict[str, str]:
    """Start ``serve --dev``, read the printed keys, check the app key works, stop it."""
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "broker",
        "serve",
        "--dev",
        "--port",
        str(port),
        cwd=tmp_path,
        env=_env(tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    assert proc.stdout is not None
    output: list[str] = []
    keys: dict[str, str] = {}
    try:
        async with asyncio.timeout(90):
            while len(keys) < 2:
                line = (await proc.stdout.readline()).decode()
                assert line, "broker serve --dev exited early:\n" + "".join(output)
                output.append(line)
                if match := KEY_LINE.match(line):
                    keys[match.group(1)] = match.group(2)
        async with aiohttp.ClientSession() as http, asyncio.timeout(30):
            while True:
                try:
                    async with http.get(
                        f"http://127.0.0.1:{port}/metrics",
                        headers={"Authorization": f"Bearer {keys['ops key']}"},
                    ) as resp:
                        assert resp.status == 200, await resp.text()
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGTERM)
            async with asyncio.timeout(15):
                await proc.wait()
    return keys


def _active_rows(listing: str) -> list[list[str]]:
    """``broker keys list`` rows without a revocation time."""
    rows = [line.split("  ") for line in listing.splitlines()[1:] if line.strip()]
    return [[c.strip() for c in row if c.strip()] for row in rows if row[-1].strip() == "-"]


async def test_dev_keys_are_reused_across_starts_and_stale_ones_revoked(
    tmp_path: Path,
) -> None:
    code, out = await _broker(tmp_path, "migrate")
    assert code == 0, out
    # A key of an earlier --dev (before keys were kept) with the app key's name and scopes.
    code, out = await _broker(
        tmp_path,
        "keys",
        "create",
        "--name",
        "development",
        "--scopes",
        "sessions:create,monitor:read",
    )
    assert code == 0, out
    old_key = out.split()[-1]

    first = await _dev_start(tmp_path)
    second = await _dev_start(tmp_path)
    assert first == second
    assert old_key not in first.values()

    key_file = tmp_path / "keys" / DEV_KEYS_FILE_NAME
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert set(json.loads(key_file.read_text()).values()) == set(first.values())

    code, listing = await _broker(tmp_path, "keys", "list")
    assert code == 0, listing
    active = _active_rows(listing)
    assert sorted(row[1] for row in active) == ["development", "development ops"], listing
    assert len(listing.splitlines()) == 1 + 3, listing  # the header, the two, the old revoked


async def test_a_lost_key_file_gets_new_keys_and_the_old_ones_revoked(tmp_path: Path) -> None:
    first = await _dev_start(tmp_path)
    (tmp_path / "keys" / DEV_KEYS_FILE_NAME).unlink()
    second = await _dev_start(tmp_path)
    assert set(first.values()).isdisjoint(second.values())
    code, listing = await _broker(tmp_path, "keys", "list")
    assert code == 0, listing
    assert len(_active_rows(listing)) == 2, listing
    assert len(listing.splitlines()) == 1 + 4, listing
    # The revocations are audited like any other, by the broker itself.
    code, exported = await _broker(tmp_path, "audit", "export")
    assert code == 0, exported
    records = [json.loads(line) for line in exported.splitlines() if line.startswith("{")]
    revoked = [r for r in records if r["kind"] == "key.revoked"]
    assert sorted(r["body"]["name"] for r in revoked) == ["development", "development ops"]
    assert {r["actor"] for r in revoked} == {"broker"}


async def test_a_key_file_others_can_read_stops_the_start(tmp_path: Path) -> None:
    await _dev_start(tmp_path)
    (tmp_path / "keys" / DEV_KEYS_FILE_NAME).chmod(0o644)
    code, out = await _broker(tmp_path, "serve", "--dev", "--port", str(_free_port()))
    assert code == 2, out
    assert "readable by other users" in out
    assert "bk_" not in out


async def test_a_key_folder_that_cannot_be_written_stops_the_start_cleanly(
    tmp_path: Path,
) -> None:
    not_a_folder = tmp_path / "keys"
    not_a_folder.write_text("a file where the key folder should be\n")
    code, out = await _broker(
        tmp_path,
        "serve",
        "--dev",
        "--port",
        str(_free_port()),
        env={"BROKER_SIGNING_KEY": "s" * 40},
    )
    assert code == 2, out
    assert "development keys" in out and "Traceback" not in out
    assert "bk_" not in out
