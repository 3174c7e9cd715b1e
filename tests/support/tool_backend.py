"""A real HTTP tool backend that records every request it gets and checks its signatures.

It verifies both signatures ``docs/tool-webhooks.md`` describes, neither with the broker's
code: the Standard Webhooks one with the ``standardwebhooks`` package (the reference
verifier, as a backend would), the deprecated ``X-Broker-Signature`` as the page tells a
backend to (written out again here, so the tests check the documented algorithm rather than
the broker against itself). A request is refused 401 unless both verify, or its tool is in
``accept_unsigned``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import standardwebhooks
from aiohttp import web

TOOL_SECRET = "test-tool-secret-0123456789abcdef-0123456789"
"""The signing secret of every HTTP tool in :meth:`ToolBackend.config_toml`."""
TOLERANCE_S = 300
HUGE_LIMIT = 64 * 1024 * 1024
"""The endless ``huge`` answer stops here if nobody hung up (a broken cap fails, not hangs)."""
HOLD_TOOLS = frozenset({"hold", "hold_idempotent"})
"""Tools whose backend holds each request (see :attr:`ToolBackend.hold_seconds`)."""
HOLD_MAX_S = 30.0
"""The longest a hold tool holds (a test that forgets to release it fails, not hangs)."""


def verify_signature(
    secret: bytes, headers: Mapping[str, str], body: bytes, now: float | None = None
) -> bool:
    """The verifier from docs/tool-webhooks.md: constant-time compare, 5-minute window."""
    timestamp = headers.get("X-Broker-Timestamp", "")
    signature = headers.get("X-Broker-Signature", "")
    if not (timestamp.isascii() and timestamp.isdigit()):
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > TOLERANCE_S:
        return False  # stale (or from the future): a replay, or a clock far off
    message = timestamp.encode() + b"." + body
    expected = "v1=" + hmac.new(secret, message, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), signature.encode())


def standard_webhook(secret: str) -> standardwebhooks.Webhook:
    """The reference verifier for a tool's secret, as docs/tool-webhooks.md says to build it.

    A ``whsec_`` secret goes in as it is (the library decodes its base64); any other secret
    is the key as its UTF-8 bytes (the library would read a plain string as base64).
    """
    return standardwebhooks.Webhook(secret if secret.startswith("whsec_") else secret.encode())


def verify_standard(secret: str, headers: Mapping[str, str], body: bytes) -> bool:
    """Whether ``standardwebhooks`` accepts the request (5-minute window, its default)."""
    try:
        standard_webhook(secret).verify(body, dict(headers), json_parse=False)
    except standardwebhooks.WebhookVerificationError:
        return False
    return True


async def sleepy(arguments: dict[str, Any], context: Any) -> dict[str, Any]:
    """An in-process tool that outlives its timeout (the timeout must cancel it)."""
    await asyncio.sleep(5)
    return {"slept": True}


BROKEN_DETAIL = "connect to db://admin:hunter2@internal failed"
"""What :func:`broken` raises with: internal detail that must never reach the model."""


async def broken(arguments: dict[str, Any], context: Any) -> dict[str, Any]:
    """An in-process tool with a bug: it raises."""
    raise RuntimeError(BROKEN_DETAIL)


def _json(value: Any, status: int = 200) -> web.Response:
    # Compact, so tests can compare the output the model gets byte for byte.
    return web.Response(
        text=json.dumps(value, separators=(",", ":")),
        status=status,
        content_type="application/json",
    )


def _accepted(headers: Mapping[str, str], legacy: bool, standard: bool) -> bool:
    """What a backend migrating between the schemes accepts: every signature the request
    carries verifies, and it carries at least one (a previous release sends only the
    deprecated one; ``ToolRequest.verified``/``standard_verified`` tell which came)."""
    has_legacy = "X-Broker-Signature" in headers
    has_standard = "webhook-signature" in {name.lower() for name in headers}
    if not (has_legacy or has_standard):
        return False
    return (legacy or not has_legacy) and (standard or not has_standard)


@dataclass
class ToolRequest:
    tool: str
    headers: dict[str, str]
    arguments: Any
    body: bytes = b""
    verified: bool = False
    """The deprecated ``X-Broker-Signature`` verified."""
    standard_verified: bool = False
    """The Standard Webhooks signature verified (by the ``standardwebhooks`` package)."""


@dataclass
class ToolBackend:
    base_url: str = ""
    requests: list[ToolRequest] = field(default_factory=list)
    delay: float = 0.0
    secret: str = TOOL_SECRET
    accept_unsigned: set[str] = field(default_factory=set)
    huge_bytes_sent: int = 0
    """How much of the endless ``huge`` answer went out before the client hung up."""
    flaky_failures: int = 0
    """How many more times ``flaky`` answers 503 before it answers 200 (tests set it)."""
    hold_seconds: float = HOLD_MAX_S
    """How long a hold tool (:data:`HOLD_TOOLS`) keeps its answer unless released first."""
    _release: asyncio.Event = field(default_factory=asyncio.Event)
    _hold_release: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    def calls_to(self, tool: str) -> list[ToolRequest]:
        return [r for r in self.requests if r.tool == tool]

    def calls_for(self, call_id: str) -> list[ToolRequest]:
        """The requests that named function call ``call_id`` (``X-Call-ID``), in order."""
        return [r for r in self.requests if r.headers.get("X-Call-ID") == call_id]

    async def wait_calls_to(
        self,
        tool: str,
        count: int = 1,
        timeout: float = 10,  # noqa: ASYNC109 - same convention as FakeBrowser.wait_for
    ) -> list[ToolRequest]:
        """Wait until ``tool`` has received ``count`` requests (recorded on arrival)."""
        async with asyncio.timeout(timeout):
            while len(self.calls_to(tool)) < count:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        return self.calls_to(tool)

    def release_holds(self) -> None:
        """Let every hold tool's request answer now, and later ones at once."""
        self._hold_release.set()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        tool = request.match_info["tool"]
        body = await request.read()
        verified = verify_signature(self.secret.encode(), request.headers, body)
        standard = verify_standard(self.secret, request.headers, body)
        try:
            arguments = json.loads(body)
        except ValueError:
            arguments = None
        self.requests.append(
            ToolRequest(tool, dict(request.headers), arguments, body, verified, standard)
        )
        if not _accepted(request.headers, verified, standard) and tool not in self.accept_unsigned:
            return _json({"error": "bad signature"}, status=401)
        if self.delay:
            await asyncio.sleep(self.delay)
        if tool == "lookup_order":
            return _json({"order_id": arguments["order_id"], "status": "shipped"})
        if tool == "explode":
            return _json({"error": "boom"}, status=500)
        if tool == "flaky":
            if self.flaky_failures > 0:
                self.flaky_failures -= 1
                return _json({"error": "overloaded"}, status=503)
            return _json({"ok": True, "tool": tool})
        if tool == "malformed":
            # Says JSON, sends a cut-off object: a backend that broke mid-answer.
            return web.Response(text='{"order_id":"42","status":', content_type="application/json")
        if tool == "empty":
            return web.Response(status=200)
        if tool == "redirect":
            # Where a followed redirect would land: lookup_order must never see it.
            raise web.HTTPFound(f"{self.base_url}/tools/lookup_order")
        if tool == "huge":
            return await self._endless(request)
        if tool in HOLD_TOOLS:
            # A long-running tool: it answers when the test releases it or hold_seconds pass
            # (a request whose broker died meanwhile simply answers nobody).
            try:
                async with asyncio.timeout(self.hold_seconds):
                    await self._hold_release.wait()
            except TimeoutError:
                pass
            return _json({"ok": True, "tool": tool})
        if tool == "slow":
            # Holds the answer until the test ends (bounded), well past the tool's timeout.
            async with asyncio.timeout(5):
                await self._release.wait()
        return _json({"ok": True, "tool": tool})

    async def _endless(self, request: web.Request) -> web.StreamResponse:
        """An answer with no Content-Length that never ends by itself (chunked)."""
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        chunk = b"x" * 16384
        try:
            while self.huge_bytes_sent < HUGE_LIMIT:
                await response.write(chunk)
                self.huge_bytes_sent += len(chunk)
        except ConnectionError:
            pass  # the broker stopped reading and closed the connection: the point
        return response

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/tools/{tool}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def close(self) -> None:
        self._release.set()
        self._hold_release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def config_toml(self) -> str:
        """A tools file: HTTP tools signed with :data:`TOOL_SECRET`; get_time in-process.

        lookup_order, delete_account and explode as before; redirect (answers 302), huge (an
        endless body), slow (answers after its 0.5 s timeout) and the in-process sleepy (after
        its 0.3 s timeout) for the failure tests; flaky (503 while :attr:`flaky_failures`
        lasts, then 200), malformed (200, cut-off JSON), empty (200, no body) and the
        in-process broken (raises) for the failure and circuit-breaker tests.
        """
        signed = f'secret = "{self.secret}"'
        return f"""
[tools.lookup_order]
description = "Look up an order."
timeout = 5
http = "{self.base_url}/tools/lookup_order"
{signed}
[tools.lookup_order.parameters]
type = "object"
required = ["order_id"]
additionalProperties = false
properties.order_id = {{ type = "string" }}

[tools.delete_account]
description = "Delete the user's account."
http = "{self.base_url}/tools/delete_account"
{signed}
[tools.delete_account.parameters]
type = "object"
properties = {{}}

[tools.explode]
description = "A tool whose backend always fails."
http = "{self.base_url}/tools/explode"
{signed}
[tools.explode.parameters]
type = "object"
properties = {{}}

[tools.redirect]
description = "A tool whose backend answers with a redirect."
http = "{self.base_url}/tools/redirect"
{signed}

[tools.huge]
description = "A tool whose backend answers without end."
timeout = 5
http = "{self.base_url}/tools/huge"
{signed}

[tools.slow]
description = "A tool that answers after its timeout."
timeout = 0.5
http = "{self.base_url}/tools/slow"
{signed}

[tools.sleepy]
description = "An in-process tool that answers after its timeout."
timeout = 0.3
python = "tests.support.tool_backend:sleepy"

[tools.broken]
description = "An in-process tool that raises."
python = "tests.support.tool_backend:broken"

[tools.flaky]
description = "A tool whose backend fails for a while, then recovers."
idempotent = true
http = "{self.base_url}/tools/flaky"
{signed}

[tools.malformed]
description = "A tool whose backend answers 200 with broken JSON."
http = "{self.base_url}/tools/malformed"
{signed}

[tools.empty]
description = "A tool whose backend answers 200 with no body."
http = "{self.base_url}/tools/empty"
{signed}

[tools.get_time]
description = "Current time."
python = "broker.tools.demo:get_time"
[tools.get_time.parameters]
type = "object"
properties = {{}}
"""

    def hold_tools_toml(self) -> str:
        """The hold tools, to append to :meth:`config_toml`: long-running HTTP tools.

        ``hold`` is not idempotent (a crash while it runs leaves its outcome unknown);
        ``hold_idempotent`` is declared ``idempotent = true`` (safe to run again). Both answer
        ``{"ok":true,"tool":…}`` once released (:meth:`release_holds`) or after
        :attr:`hold_seconds`; their timeout (40 s) is longer than any hold.
        """
        signed = f'secret = "{self.secret}"'
        return "".join(
            f"""
[tools.{name}]
description = "A long-running tool."
timeout = 40
idempotent = {"true" if name == "hold_idempotent" else "false"}
http = "{self.base_url}/tools/{name}"
{signed}
[tools.{name}.parameters]
type = "object"
properties = {{}}
"""
            for name in sorted(HOLD_TOOLS)
        )
