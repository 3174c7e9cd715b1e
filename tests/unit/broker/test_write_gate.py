"""The SQLite write gate: one writer at a time, urgent ones first, nothing stuck."""

from __future__ import annotations

import asyncio

import pytest

from broker.db.write_gate import WriteGate


async def test_urgent_writers_go_before_routine_ones_and_each_in_order() -> None:
    gate = WriteGate()
    order: list[str] = []
    release = asyncio.Event()

    async def write(name: str, urgent: bool) -> None:
        async with gate.turn(urgent=urgent):
            order.append(name)
            if name == "first":
                await release.wait()

    async with asyncio.timeout(5):
        first = asyncio.create_task(write("first", urgent=False))
        await asyncio.sleep(0)
        later = [
            asyncio.create_task(write(name, urgent))
            for name, urgent in (
                ("log-1", False),
                ("tool-1", True),
                ("log-2", False),
                ("tool-2", True),
            )
        ]
        await asyncio.sleep(0)
        assert order == ["first"] and gate.waiting == 4
        release.set()
        await asyncio.gather(first, *later)
    assert order == ["first", "tool-1", "tool-2", "log-1", "log-2"]
    assert gate.waiting == 0


async def test_a_cancelled_waiter_neither_holds_nor_blocks_the_gate() -> None:
    gate = WriteGate()
    holding = asyncio.Event()
    release = asyncio.Event()

    async def hold() -> None:
        async with gate.turn(urgent=True):
            holding.set()
            await release.wait()

    async def wait_turn() -> None:
        async with gate.turn(urgent=True):
            pass

    async with asyncio.timeout(5):
        holder = asyncio.create_task(hold())
        await holding.wait()
        waiter = asyncio.create_task(wait_turn())
        await asyncio.sleep(0)
        waiter.cancel()
        release.set()
        await holder
        with pytest.raises(asyncio.CancelledError):
            await waiter
        # Free again: a new writer gets its turn at once.
        async with gate.turn(urgent=False):
            pass


async def test_a_writer_granted_the_turn_as_it_is_cancelled_passes_it_on() -> None:
    gate = WriteGate()
    done: list[str] = []

    async def write(name: str) -> None:
        async with gate.turn(urgent=True):
            done.append(name)

    async with asyncio.timeout(5):
        holder = gate.turn(urgent=True)
        await holder.__aenter__()
        granted = asyncio.create_task(write("granted"))
        after = asyncio.create_task(write("after"))
        await asyncio.sleep(0)
        # The turn is handed to "granted" and, before it runs, it is cancelled.
        await holder.__aexit__(None, None, None)
        granted.cancel()
        with pytest.raises(asyncio.CancelledError):
            await granted
        await after
    assert done == ["after"]


async def test_an_open_gate_never_waits() -> None:
    gate = WriteGate(enabled=False)
    async with asyncio.timeout(1):
        async with gate.turn(urgent=False):
            async with gate.turn(urgent=True):  # would deadlock on a closed gate
                pass
