"""Fixtures shared by the reliability tests that run real ``broker serve`` processes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.broker_process import BrokerLauncher
from tests.support.conformance import sideband_client_event_failures
from tests.support.servers import RunningEmulator
from tests.support.tool_backend import ToolBackend


@pytest.fixture
async def brokers(
    db_url: str, emulator: RunningEmulator, tool_backend: ToolBackend, tmp_path: Path
) -> AsyncIterator[BrokerLauncher]:
    """``broker serve`` processes on one database (``db_url``: SQLite, or PostgreSQL with
    ``BROKER_TEST_DATABASE_URL`` set), with the hold tools configured.

    Every process is killed and reaped at teardown; then every client event a broker sent on
    a sideband is checked against the SDK's types.
    """
    tools = tmp_path / "tools.toml"
    tools.write_text(tool_backend.config_toml() + tool_backend.hold_tools_toml())
    async with BrokerLauncher(db_url, emulator.base_url, tools, tmp_path) as launcher:
        yield launcher
    failures = sideband_client_event_failures(emulator.registry)
    assert not failures, "non-conformant broker client events:\n" + "\n".join(failures[:5])


@pytest.fixture
async def pg_brokers(
    pg_url: str, emulator: RunningEmulator, tool_backend: ToolBackend, tmp_path: Path
) -> AsyncIterator[BrokerLauncher]:
    """``broker serve`` processes sharing one fresh PostgreSQL database."""
    tools = tmp_path / "tools.toml"
    tools.write_text(tool_backend.config_toml() + tool_backend.hold_tools_toml())
    async with BrokerLauncher(pg_url, emulator.base_url, tools, tmp_path) as launcher:
        yield launcher
    failures = sideband_client_event_failures(emulator.registry)
    assert not failures, "non-conformant broker client events:\n" + "\n".join(failures[:5])
