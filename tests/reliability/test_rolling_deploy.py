"""A rolling deploy: the previous release and this one serve calls from one PostgreSQL database.

The previous release is the code as it was before this release's first migration
(``0008_call_leases``), taken from git and run as a real ``broker serve`` process. The deploy
goes as an operator's would: the old instance serves calls on the old schema; the database
is upgraded under it (additive migrations only); a new instance starts beside it; then the
old one gets SIGTERM and the new one takes over its live call.

Invariants: the old release keeps working on the upgraded schema (new sessions, offers,
tool calls); the new instance leaves a call the old one watches alone (no lease, no second
sideband) and takes it up once the old one lets go; every tool call runs once.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command

from broker.db.migrate import alembic_config, upgrade_database
from tests.conftest import skip_or_fail
from tests.reliability.test_instances import Leases, close_all, instance_id, wait_until
from tests.support.broker_process import ROOT, BrokerLauncher, BrokerProcess
from tests.support.browser import FakeBrowser
from tests.support.conformance import sideband_client_event_failures
from tests.support.flow import ask, outputs_received, says
from tests.support.servers import RunningEmulator
from tests.support.tool_backend import ToolBackend

FIRST_NEW_MIGRATION = "migrations/versions/0008_call_leases.py"
PREVIOUS_SCHEMA = "0007"
TEST_BUDGET_S = 120


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture(scope="module")
def previous_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The code before this release's first migration, extracted from git."""
    if shutil.which("git") is None:
        skip_or_fail("git is not installed")
    try:
        added = _git("log", "--diff-filter=A", "--format=%H", "--", FIRST_NEW_MIGRATION)
        release = _git("rev-parse", f"{added.splitlines()[-1]}^")
    except (subprocess.CalledProcessError, IndexError):
        skip_or_fail("the previous release is not in this clone's history (a shallow clone?)")
    target = tmp_path_factory.mktemp("previous-release")
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", release, "broker", "sideband", "emulator", "web"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    assert not (target / FIRST_NEW_MIGRATION).exists()
    return target


@pytest.fixture
async def old_schema_db(pg_url: str) -> str:
    """A fresh PostgreSQL database at the previous release's schema."""
    await asyncio.to_thread(command.downgrade, alembic_config(pg_url), PREVIOUS_SCHEMA)
    return pg_url


@pytest.fixture
async def deploy(
    old_schema_db: str, emulator: RunningEmulator, tools_config: Path, tmp_path: Path
) -> AsyncIterator[BrokerLauncher]:
    async with BrokerLauncher(old_schema_db, emulator.base_url, tools_config, tmp_path) as launcher:
        yield launcher
    failures = sideband_client_event_failures(emulator.registry)
    assert not failures, "non-conformant broker client events:\n" + "\n".join(failures[:5])


async def tool_turn(browser: FakeBrowser) -> None:
    earlier = {id(event) for event in browser.events}
    ask(browser, "please lookup_order 42")

    def answered(event: dict[str, Any]) -> bool:
        return id(event) not in earlier and bool(says("42")(event))

    await browser.wait_for("response.done", answered, timeout=20)


async def test_previous_and_new_release_share_the_database_through_a_rolling_deploy(
    deploy: BrokerLauncher,
    previous_release: Path,
    old_schema_db: str,
    emulator: RunningEmulator,
    tool_backend: ToolBackend,
) -> None:
    calls: list[tuple[BrokerProcess, FakeBrowser, dict[str, Any]]] = []
    leases = Leases(old_schema_db)
    try:
        async with asyncio.timeout(TEST_BUDGET_S):
            old = await deploy.start(code=previous_release)
            browser = FakeBrowser()
            calls.append((old, browser, await old.create_session(tools=["lookup_order"])))
            await old.connect(browser, calls[0][2])
            await tool_turn(browser)

            # The deploy: migrate under the running old release, start the new one beside it.
            await asyncio.to_thread(upgrade_database, old_schema_db)
            await tool_turn(browser)  # the old release on the new schema
            late = FakeBrowser()
            calls.append((old, late, await old.create_session(tools=["lookup_order"])))
            await old.connect(late, calls[1][2])
            await tool_turn(late)

            new = await deploy.start(BROKER_LEASE_TTL_S="3")
            new_id = await instance_id(new)
            fresh = FakeBrowser()
            calls.append((new, fresh, await new.create_session(tools=["lookup_order"])))
            await new.connect(fresh, calls[2][2])
            await tool_turn(fresh)
            await asyncio.sleep(2)  # several of the new instance's scans
            owners_beside_old = await leases.owners()

            # The old instance stops (it releases its sidebands); the new one takes over.
            code, _ = await old.terminate(timeout=30)

            async def all_on_new() -> bool:
                owners = await leases.owners()
                return all(owners.get(s["id"]) == new_id for _, _, s in calls)

            await wait_until(all_on_new, 15, "the old release's calls taken over")
            for _, browser_, s in calls[:2]:
                await new.wait_session(s["id"], lambda d: d["sideband"]["state"] == "connected")
                await tool_turn(browser_)
            details = [await new.get_session(s["id"]) for _, _, s in calls]
    finally:
        await close_all(calls)
        await leases.engine.dispose()

    assert code == 0, old.log_tail()
    # Beside a live old instance, the new one took only its own call.
    assert set(owners_beside_old) == {calls[2][2]["id"]}
    for detail in details:
        call = emulator.registry.get(detail["call_id"])
        assert call is not None
        function_calls = [row["call_id"] for row in detail["tool_calls"]]
        assert sorted(e["call_id"] for _, e in outputs_received(call)) == sorted(function_calls)
        for call_id in function_calls:
            assert len(tool_backend.calls_for(call_id)) == 1
    assert [len(d["tool_calls"]) for d in details] == [3, 2, 1]
