"""Start the broker (the real app factory) on a free loopback port, and a checked HTTP client."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from broker import Secret, Settings, app_state, create_app
from broker.audit.signing import AuditSigner
from broker.db.models import ALL_TOOLS

ADMIN_KEY = "admin-key-for-tests-0123456789"
PROVIDER_KEY = "sk-test-provider-key-5f3a9c1e7b2d4086"
AUDIT_SIGNER = AuditSigner.generate()
"""The test stacks' audit signing key (one per test process, never a file in the checkout)."""
CREATE_RESPONSE_KEYS = frozenset(
    {
        "id",
        "state",
        "model",
        "tools",
        "sideband",
        "input_transcription",
        "client_secret",
        "offer_url",
        "bridge_url",
        "end_url",
    }
)
"""What ``POST /api/v1/sessions`` returns, written out here rather than read from the broker's
schema, so that a change to the answer fails the tests that hand it to a page."""


def stack_settings(
    database_url: str, provider_base_url: str, tools_config: Path, **overrides: Any
) -> Settings:
    """A test stack's broker: the test keys, and timeouts short enough for a test to see
    them run out; ``overrides`` replace any field (checked in one construction, as a new
    instance is)."""
    fields: dict[str, Any] = {
        "signing_key": Secret("test-signing-key-" + "x" * 32),
        "audit_signing_key": Secret(AUDIT_SIGNER.private_pem()),
        "audit_checkpoint_file": None,
        "database_url": database_url,
        "admin_key": Secret(ADMIN_KEY),
        "provider_base_url": provider_base_url,
        "provider_api_key": Secret(PROVIDER_KEY),
        "provider_timeout": 5.0,
        "tools_config": tools_config,
        "sideband_attach_timeout": 5.0,
        "sideband_reconnect_timeout": 2.0,
        "shutdown_grace_s": 2.0,
        "bridge_wait_timeout": 3.0,
        # The broker shares its event loop with the emulator and aiortc peers here, whose
        # stalls are not the broker's load; the overload tests set their own threshold.
        "overload_loop_lag_s": 60.0,
    }
    return Settings(**(fields | overrides))


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)

    @property
    def code(self) -> str | None:
        return self.json().get("code")


@dataclass
class RunningBroker:
    base_url: str
    app: web.Application
    settings: Settings
    http: aiohttp.ClientSession
    _runner: web.AppRunner = field(repr=False)
    replies: list[Reply] = field(default_factory=list)
    _closed: bool = False

    async def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = ADMIN_KEY,
        json_body: Any = None,
        data: str | bytes | None = None,
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """One request; every reply is checked for the provider key before it is returned."""
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        if json_body is not None:
            data = json.dumps(json_body)
            content_type = content_type or "application/json"
        if content_type is not None:
            all_headers["Content-Type"] = content_type
        async with self.http.request(
            method, self.base_url + path, data=data, headers=all_headers
        ) as resp:
            reply = Reply(resp.status, dict(resp.headers), await resp.text())
        assert_no_provider_key(reply)
        self.replies.append(reply)
        return reply

    async def new_key(
        self, *scopes: str, name: str = "test key", tools: Sequence[str] = (ALL_TOOLS,)
    ) -> str:
        """A new API key with ``scopes`` (made with the admin key); the key itself.

        ``tools``: its tool grants, every tool unless a test says otherwise (a new key's
        default is none; the tests that are not about grants create sessions with tools).
        """
        reply = await self.request(
            "POST",
            "/api/v1/keys",
            json_body={"name": name, "scopes": list(scopes), "tools": list(tools)},
        )
        assert reply.status == 201, reply.text
        key: str = reply.json()["key"]
        return key

    async def create_session(self, **body: Any) -> dict[str, Any]:
        body.setdefault("tools", ["lookup_order"])
        reply = await self.request("POST", "/api/v1/sessions", json_body=body)
        assert reply.status == 201, reply.text
        return reply.json()

    async def offer(self, session: dict[str, Any], sdp: str) -> Reply:
        return await self.request(
            "POST",
            f"/api/v1/sessions/{session['id']}/realtime-offer",
            token=session["client_secret"]["value"],
            data=sdp,
            content_type="application/sdp",
        )

    async def bridge(
        self, session: dict[str, Any], tool: str, call_id: str, arguments: Any
    ) -> Reply:
        return await self.request(
            "POST",
            f"/api/v1/sessions/{session['id']}/tools/{tool}",
            token=session["client_secret"]["value"],
            json_body={"call_id": call_id, "arguments": arguments},
        )

    async def get_session(self, session_id: str) -> dict[str, Any]:
        reply = await self.request("GET", f"/api/v1/sessions/{session_id}")
        assert reply.status == 200, reply.text
        return reply.json()

    async def close(self) -> None:
        """Stop the broker (idempotent)."""
        if not self._closed:
            self._closed = True
            await self._runner.cleanup()


def assert_no_provider_key(reply: Reply) -> None:
    assert PROVIDER_KEY not in reply.text, "provider key leaked in a response body"
    for name, value in reply.headers.items():
        assert PROVIDER_KEY not in value, f"provider key leaked in header {name}"


async def start_broker(settings: Settings, listen_port: int = 0) -> RunningBroker:
    """The broker on loopback, on ``listen_port`` (0: any free port), e.g. so a test can
    give it a ``public_url`` naming its port before it starts."""
    runner = web.AppRunner(create_app(settings), shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", listen_port)
    await site.start()
    port = runner.addresses[0][1]
    app = runner.app
    assert app_state.SESSIONS in app
    running = RunningBroker(
        base_url=f"http://127.0.0.1:{port}",
        app=app,
        settings=settings,
        http=aiohttp.ClientSession(),
        _runner=runner,
    )
    for observe in BROKER_OBSERVERS:
        observe(running)
    return running


BrokerFactory = Callable[..., Awaitable[RunningBroker]]


@asynccontextmanager
async def broker_factory(settings: Settings) -> AsyncIterator[BrokerFactory]:
    """Start brokers from ``settings`` with overrides; all are closed on leaving."""
    started: list[RunningBroker] = []

    async def factory(listen_port: int = 0, **overrides: Any) -> RunningBroker:
        running = await start_broker(settings.replace(**overrides), listen_port)
        started.append(running)
        return running

    try:
        yield factory
    finally:
        for running in reversed(started):
            await running.http.close()
            await running.close()


# Called with every broker started (the security suite's leak watch inspects their replies).
BROKER_OBSERVERS: list[Callable[[RunningBroker], None]] = []
