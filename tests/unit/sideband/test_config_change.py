"""A change of the owned config on a live call (ConfigWatch.update_config + the guard).

The owned config and the baseline switch before the update goes out, so the provider's answer
is not drift and a page putting the old tools back is; a refusal, an answer without the new
config, or no answer puts the old config back (and asserts it again).
"""

from __future__ import annotations

import asyncio
from typing import Any

from sideband.config_watch import ConfigOutcome, ConfigWatch
from sideband.events import SessionUpdated
from sideband.tamper import OwnedSession, SessionDrift
from tests.unit.sideband.fakes import FakeWire

TOOL_A = {"type": "function", "name": "tool_a", "description": "A", "parameters": {}}
TOOL_B = {"type": "function", "name": "tool_b", "description": "B", "parameters": {}}
OWNED = OwnedSession(instructions="Be brief.", tools=(TOOL_A,), tool_choice="auto")


def updated(**changes: Any) -> SessionUpdated:
    session = {
        "type": "realtime",
        "instructions": "Be brief.",
        "tools": [TOOL_A],
        "tool_choice": "auto",
    }
    return SessionUpdated(type="session.updated", session=session | changes)


async def with_baseline(wire: FakeWire) -> ConfigWatch:
    config = ConfigWatch(wire.wiring, OWNED, stopping=lambda: False, probe_interval=None)
    await config.attached()
    await config.check(updated())
    assert config.guard.asserted
    return config


async def test_a_tool_change_is_answered_and_the_old_tools_are_then_drift() -> None:
    wire = FakeWire()
    config = await with_baseline(wire)
    change = asyncio.create_task(config.update_config(tools=[TOOL_B]))
    await wire.wait_sent(2)
    # Only the changed field goes out; the tool choice and instructions stay as they are.
    assert wire.sent[1]["session"] == {"type": "realtime", "tools": [TOOL_B]}
    assert config.guard.owned.tools == (TOOL_B,)
    await config.check(updated(tools=[TOOL_B]))
    assert await change is ConfigOutcome.APPLIED
    assert wire.reports == []
    # The page puts the old tool set back: drift, restored to the NEW set.
    await config.check(updated(tools=[TOOL_A]))
    assert wire.reports == [
        SessionDrift(
            fields=("tools",), tools_added=("tool_a",), tools_removed=("tool_b",), reapplied=True
        )
    ]
    assert wire.sent[-1]["session"]["tools"] == [TOOL_B]


async def test_instructions_and_tools_change_together() -> None:
    wire = FakeWire()
    config = await with_baseline(wire)
    change = asyncio.create_task(config.update_config(instructions="Be kind.", tools=[TOOL_B]))
    await wire.wait_sent(2)
    assert wire.sent[1]["session"]["instructions"] == "Be kind."
    await config.check(updated(instructions="Be kind.", tools=[TOOL_B]))
    assert await change is ConfigOutcome.APPLIED
    await config.check(updated(instructions="Be kind.", tools=[TOOL_B]))
    assert wire.reports == []


async def test_a_refused_change_puts_the_old_config_back() -> None:
    wire = FakeWire()
    config = await with_baseline(wire)
    change = asyncio.create_task(config.update_config(tools=[TOOL_B]))
    await wire.wait_sent(2)
    assert config.refused(wire.sent[1]["event_id"], "invalid_value")
    assert await change is ConfigOutcome.REFUSED
    assert config.guard.owned == OWNED
    # The old tools are asserted again; their answer is no drift.
    assert wire.sent[-1]["session"]["tools"] == [TOOL_A]
    await config.check(updated())
    assert wire.reports == []


async def test_an_answer_without_the_new_config_is_a_refusal_not_tampering() -> None:
    wire = FakeWire()
    config = await with_baseline(wire)
    change = asyncio.create_task(config.update_config(tools=[TOOL_B]))
    await wire.wait_sent(2)
    await config.check(updated())  # the provider kept tool_a
    assert await change is ConfigOutcome.REFUSED
    assert config.guard.owned == OWNED
    assert wire.reports == []


async def test_an_unanswered_change_times_out_and_its_late_answer_is_not_drift() -> None:
    wire = FakeWire()
    config = await with_baseline(wire)
    config.update_timeout = 0.05
    assert await config.update_config(tools=[TOOL_B]) is ConfigOutcome.TIMEOUT
    assert config.guard.owned == OWNED
    revert = wire.sent[-1]
    assert revert["session"]["tools"] == [TOOL_A]
    # The change's late answer (tool_b) is the broker's own; the revert's answer follows.
    await config.check(updated(tools=[TOOL_B]))
    await config.check(updated())
    assert wire.reports == []
    # Afterwards the old config is the owned one again: tool_b is drift.
    await config.check(updated(tools=[TOOL_B]))
    assert [report.fields for report in wire.reports] == [("tools",)]


async def test_a_change_that_cannot_be_sent_changes_nothing() -> None:
    wire = FakeWire()
    config = await with_baseline(wire)
    wire.up = False
    assert await config.update_config(tools=[TOOL_B]) is ConfigOutcome.UNSENT
    assert config.guard.owned == OWNED
    wire.up = True
    await config.check(updated())
    assert wire.reports == []


async def test_a_lost_connection_ends_the_wait() -> None:
    wire = FakeWire()
    config = await with_baseline(wire)
    change = asyncio.create_task(config.update_config(tools=[TOOL_B]))
    await wire.wait_sent(2)
    config.connection_lost()
    assert await change is ConfigOutcome.TIMEOUT
    assert config.guard.owned == OWNED
