"""Fixtures that bring up the real stack: emulator, tool backend, database, broker."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import pytest

from broker import Settings
from broker.db.migrate import upgrade_database
from emulator import EmulatorSettings
from tests.support.broker_server import (
    PROVIDER_KEY,
    BrokerFactory,
    RunningBroker,
    broker_factory,
    stack_settings,
)
from tests.support.browser import FakeBrowser
from tests.support.conformance import server_event_failures, sideband_client_event_failures
from tests.support.migrations import migrated_sqlite
from tests.support.postgres import PgTemplate, fresh_pg_database, pg_template
from tests.support.servers import RunningEmulator, start_emulator
from tests.support.tool_backend import ToolBackend
from tests.support.webhook_receiver import WebhookReceiver

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def skip_or_fail(reason: str) -> None:
    """Skip on a laptop without the dependency; fail in CI, where it must be present."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true turns this skip into a failure)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file; each test gets a copy (migrating per test is slow)."""
    path = tmp_path_factory.mktemp("db") / "template.db"
    # In a worker thread: an async fixture may ask for this one first (a getfixturevalue
    # inside its running loop), where Alembic's own asyncio.run would refuse to start.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(upgrade_database, f"sqlite+aiosqlite:///{path}").result()
    return path


@pytest.fixture
def sqlite_db_url(template_db: Path, tmp_path: Path) -> str:
    """A migrated SQLite database of the test's own, whatever ``BROKER_TEST_DATABASE_URL``
    says: for the tests that are about SQLite."""
    path = tmp_path / "broker.db"
    shutil.copy(template_db, path)
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture(scope="session")
def pg_template_db() -> Iterator[PgTemplate | None]:
    """With ``BROKER_TEST_DATABASE_URL`` set, the run's migrated PostgreSQL template (dropped
    at the end of the run); else ``None``."""
    with pg_template() as template:
        yield template


@pytest.fixture
def db_url(pg_template_db: PgTemplate | None, request: pytest.FixtureRequest) -> Iterator[str]:
    """The test's own migrated broker database: a copy of the SQLite template, or with
    ``BROKER_TEST_DATABASE_URL`` set a clone of the run's PostgreSQL template (dropped after
    the test). PostgreSQL unreachable then fails the test, CI or not."""
    if pg_template_db is None:
        yield request.getfixturevalue("sqlite_db_url")
        return
    with pg_template_db.clone() as url:
        yield url


def assert_conformant(emulator: RunningEmulator) -> None:
    """Fail the test if the emulator sent a server event the SDK's own types reject."""
    failures = server_event_failures(emulator.registry)
    assert not failures, "non-conformant server events:\n" + "\n".join(failures[:5])


@pytest.fixture
async def emulator() -> AsyncIterator[RunningEmulator]:
    """An emulator on loopback; every server event it sent is validated at teardown."""
    running = await start_emulator(EmulatorSettings(api_key=PROVIDER_KEY))
    yield running
    await running.close()
    assert_conformant(running)


@pytest.fixture
async def late_emulator() -> AsyncIterator[RunningEmulator]:
    """An emulator whose sideband answers 404 call_id_not_found for 30 s after each call."""
    running = await start_emulator(EmulatorSettings(api_key=PROVIDER_KEY, sideband_ready_delay=30))
    yield running
    await running.close()
    assert_conformant(running)


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A fresh, migrated PostgreSQL database, dropped afterwards (skips, or fails in CI)."""
    async with fresh_pg_database() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def migrated_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A new database at the head revision: SQLite, then PostgreSQL (a migration's checks)."""
    if request.param == "sqlite":
        yield await migrated_sqlite(tmp_path)
        return
    async with fresh_pg_database() as url:
        yield url


@pytest.fixture
async def tool_backend() -> AsyncIterator[ToolBackend]:
    backend = ToolBackend()
    await backend.start()
    yield backend
    await backend.close()


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    """A webhook endpoint on loopback that records every delivery."""
    running = WebhookReceiver()
    await running.start()
    yield running
    await running.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def browser() -> AsyncIterator[FakeBrowser]:
    fake = FakeBrowser()
    yield fake
    await fake.close()


@pytest.fixture
def tools_config(tool_backend: ToolBackend, tmp_path: Path) -> Path:
    """The tool backend's tools, written as the broker's ``tools.toml``."""
    tools = tmp_path / "tools.toml"
    tools.write_text(tool_backend.config_toml())
    return tools


@pytest.fixture
def broker_settings(db_url: str, emulator: RunningEmulator, tools_config: Path) -> Settings:
    return stack_settings(db_url, emulator.base_url, tools_config)


@pytest.fixture
async def make_broker(
    broker_settings: Settings, emulator: RunningEmulator
) -> AsyncIterator[BrokerFactory]:
    """Start brokers with settings overrides; all are closed after the test.

    At teardown every client event a broker sent on a sideband is validated against the
    SDK's ``RealtimeClientEvent`` types (the browser's data-channel events are not ours).
    """
    async with broker_factory(broker_settings) as factory:
        yield factory
    failures = sideband_client_event_failures(emulator.registry)
    assert not failures, "non-conformant broker client events:\n" + "\n".join(failures[:5])


@pytest.fixture
async def broker(make_broker: BrokerFactory) -> RunningBroker:
    return await make_broker()


@pytest.fixture
async def reconnecting_broker(
    make_broker: BrokerFactory, tool_backend: ToolBackend, tmp_path: Path
) -> RunningBroker:
    """A broker (with the hold tools) whose lost sidebands are re-attached for 20 s: long
    enough to outlast a test's outage (the default 2 s is for tests of giving up)."""
    tools = tmp_path / "reconnect-tools.toml"
    tools.write_text(tool_backend.config_toml() + tool_backend.hold_tools_toml())
    return await make_broker(tools_config=tools, sideband_reconnect_timeout=20.0)
