"""`make run PORT=…`, started as a new user would: it serves /healthz on that port and the
printed key works."""

from __future__ import annotations

import asyncio
import os
import re
import socket
from pathlib import Path

import aiohttp

from tests.support.subprocesses import stop_group

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_make_run_serves_and_the_printed_key_creates_a_session(tmp_path: Path) -> None:
    port = decoy = _free_port()
    while decoy == port:
        decoy = _free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BROKER_", "OPENAI_")) and k != "MAKEFLAGS"
    }
    env |= {
        # make's PORT wins over the environment's BROKER_PORT, so listening on `port` shows
        # that `make run PORT=…` passed it on.
        "BROKER_PORT": str(decoy),
        # A private database and signing key, so the test never touches the developer's files.
        "BROKER_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'run.db'}",
        "BROKER_SIGNING_KEY_FILE": str(tmp_path / "signing.key"),
    }
    proc = await asyncio.create_subprocess_exec(
        "make",
        "--no-print-directory",
        "run",
        f"PORT={port}",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    assert proc.stdout is not None
    output: list[str] = []
    try:
        key = None
        async with asyncio.timeout(90):
            while key is None:
                line = (await proc.stdout.readline()).decode()
                assert line, "make run exited early:\n" + "".join(output)
                output.append(line)
                if match := re.search(r"API key\s+(bk_\S+)", line):
                    key = match.group(1)
        text = "".join(output)
        assert f"http://127.0.0.1:{port}/healthz" in text
        assert "built-in emulator" in text
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(15):
                while True:
                    try:
                        async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                            assert resp.status == 200
                            assert (await resp.json())["status"] == "ok"
                            break
                    except aiohttp.ClientConnectionError:
                        await asyncio.sleep(0.1)
            async with http.post(
                f"http://127.0.0.1:{port}/api/v1/sessions",
                json={"tools": ["lookup_order"]},
                headers={"Authorization": f"Bearer {key}"},
            ) as resp:
                assert resp.status == 201, await resp.text()
                body = await resp.json()
        assert body["state"] == "created" and body["tools"] == ["lookup_order"]
        assert body["client_secret"]["value"].count(".") == 2
    finally:
        await stop_group(proc, grace_s=10)
