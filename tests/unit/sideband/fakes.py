"""A stand-in for what the controller lends its pieces: records sends, runs spawned work."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from sideband.contracts import FunctionCall, Undelivered, Wiring
from sideband.tamper import Tamper


class FakeWire:
    """Sends go to :attr:`sent` (or fail while :attr:`up` is false); spawned work runs as tasks."""

    def __init__(self) -> None:
        self.up = True
        self.sent: list[dict[str, Any]] = []
        self.reports: list[Tamper] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.sent_event = asyncio.Event()

    async def send(self, event: dict[str, Any]) -> bool:
        if not self.up:
            return False
        self.sent.append(event)
        self.sent_event.set()
        return True

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.append(task)
        return task

    def report(self, tamper: Tamper) -> None:
        self.reports.append(tamper)

    @property
    def wiring(self) -> Wiring:
        return Wiring("rtc_test", self.send, self.spawn, self.report)

    def types(self) -> list[str]:
        return [event["type"] for event in self.sent]

    async def wait_sent(self, count: int) -> None:
        async with asyncio.timeout(5):
            while len(self.sent) < count:
                self.sent_event.clear()
                await self.sent_event.wait()

    async def settle(self) -> None:
        """Wait for every spawned task (re-raising their errors)."""
        async with asyncio.timeout(5):
            while not all(task.done() for task in self.tasks):
                await asyncio.gather(*self.tasks)


def call(call_id: str, *, response_id: str = "r1", arguments: str = "{}") -> FunctionCall:
    return FunctionCall(call_id, "lookup_order", arguments, response_id, f"item_{call_id}")


def output(call_id: str, text: str | None = None) -> Undelivered:
    return Undelivered(call(call_id), text or f'{{"ran":"{call_id}"}}', f"out_{call_id}")
