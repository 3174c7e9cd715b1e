"""A webhook receiver on loopback: a real aiohttp server that records every delivery.

It answers from a script (``answers``: one ``(status, headers)`` per request, then 200), so
a test can make the broker retry, give up, or wait.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from broker import Secret
from broker.webhooks.signature import verify


@dataclass
class Delivery:
    """One request the receiver got."""

    headers: dict[str, str]
    body: bytes
    at: float
    """``time.monotonic()`` at arrival."""
    status: int
    """What the receiver answered."""

    @property
    def id(self) -> str:
        return self.headers["Webhook-Id"]

    def json(self) -> Any:
        return json.loads(self.body)

    def verified(self, secret: str) -> dict[str, Any]:
        """The payload, after checking the signature as an app would."""
        return verify(secret, self.headers, self.body)


@dataclass
class WebhookReceiver:
    """``start()`` it, point ``BROKER_WEBHOOK_URL`` at :attr:`url`, ``close()`` it."""

    path: str = "/hooks/broker"
    deliveries: list[Delivery] = field(default_factory=list)
    answers: deque[tuple[int, dict[str, str]]] = field(default_factory=deque)
    """Scripted answers, used up in order; 200 once empty."""
    url: str = ""
    _runner: web.AppRunner | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def answer(self, *statuses: int, headers: dict[str, str] | None = None) -> None:
        """Answer the next requests with ``statuses`` (each with ``headers``)."""
        for status in statuses:
            self.answers.append((status, dict(headers or {})))

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_post(self.path, self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        bound = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{bound}{self.path}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status, headers = self.answers.popleft() if self.answers else (200, {})
        self.deliveries.append(Delivery(dict(request.headers), body, time.monotonic(), status))
        self._arrived.set()
        return web.Response(status=status, headers=headers, text="ok" if status < 300 else "no")

    async def wait_deliveries(self, count: int, timeout: float = 10) -> list[Delivery]:  # noqa: ASYNC109
        """Wait until ``count`` requests arrived; return them all."""
        async with asyncio.timeout(timeout):
            while len(self.deliveries) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return list(self.deliveries)


def quick_webhooks(url: str, secret: str, **overrides: Any) -> dict[str, Any]:
    """Broker settings that send webhooks to ``url``, signed with ``secret``, with a timeout
    and backoffs short enough for a test to see retries; ``overrides`` replace any of them."""
    return {
        "webhook_url": url,
        "webhook_secret": Secret(secret),
        "webhook_timeout_s": 2.0,
        "webhook_backoff_s": 0.05,
        "webhook_backoff_max_s": 0.2,
    } | overrides
