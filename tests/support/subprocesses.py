"""Child processes of the packaging and ``make`` tests: fresh virtualenvs that must not see this
checkout, pip runs that may need the package index, and process groups stopped at the end."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
from typing import Final

import pytest

INDEX_HOST: Final = ("pypi.org", 443)


def index_reachable() -> bool:
    try:
        with socket.create_connection(INDEX_HOST, timeout=5):
            return True
    except OSError:
        return False


def clean_env(drop_prefixes: tuple[str, ...] = ()) -> dict[str, str]:
    """This process's environment without what would let a venv see our packages (and
    without the variables that start with ``drop_prefixes``, say the broker's settings)."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    return {
        k: v
        for k, v in os.environ.items()
        if k not in drop and not (drop_prefixes and k.startswith(drop_prefixes))
    }


def needs_index(result: subprocess.CompletedProcess[str], what: str) -> None:
    """Fail on a failed ``result``, unless the index is unreachable: then the network, not
    the package, is at fault, and the test skips (or fails under CI)."""
    if result.returncode != 0:
        from tests.conftest import skip_or_fail  # the one place that knows about CI

        if not index_reachable():
            skip_or_fail(f"the package index is unreachable: {what} needs it")
        pytest.fail(f"{what} failed:\n{result.stderr[-3000:]}")


async def stop_group(proc: asyncio.subprocess.Process, grace_s: float) -> None:
    """SIGTERM the process group ``proc`` leads (started with ``start_new_session``), and
    SIGKILL it if it is still running ``grace_s`` seconds later."""
    if proc.returncode is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        async with asyncio.timeout(grace_s):
            await proc.wait()
    except TimeoutError:
        os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
