"""A real HTTP tool backend that records every request it gets."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


def _json(value: Any, status: int = 200) -> web.Response:
    # Compact, so tests can compare the output the model gets byte for byte.
    return web.Response(
        text=json.dumps(value, separators=(",", ":")),
        status=status,
        content_type="application/json",
    )


@dataclass
class ToolRequest:
    tool: str
    headers: dict[str, str]
    arguments: Any


@dataclass
class ToolBackend:
    base_url: str = ""
    requests: list[ToolRequest] = field(default_factory=list)
    delay: float = 0.0
    _runner: web.AppRunner | None = None

    def calls_to(self, tool: str) -> list[ToolRequest]:
        return [r for r in self.requests if r.tool == tool]

    async def _handle(self, request: web.Request) -> web.Response:
        tool = request.match_info["tool"]
        arguments = await request.json()
        self.requests.append(ToolRequest(tool, dict(request.headers), arguments))
        if self.delay:
            await asyncio.sleep(self.delay)
        if tool == "lookup_order":
            return _json({"order_id": arguments["order_id"], "status": "shipped"})
        if tool == "explode":
            return _json({"error": "boom"}, status=500)
        return _json({"ok": True, "tool": tool})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/tools/{tool}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def config_toml(self) -> str:
        """A tools file: lookup_order, delete_account, explode over HTTP; get_time in-process."""
        return f"""
[tools.lookup_order]
description = "Look up an order."
timeout = 5
http = "{self.base_url}/tools/lookup_order"
[tools.lookup_order.parameters]
type = "object"
required = ["order_id"]
additionalProperties = false
properties.order_id = {{ type = "string" }}

[tools.delete_account]
description = "Delete the user's account."
http = "{self.base_url}/tools/delete_account"
[tools.delete_account.parameters]
type = "object"
properties = {{}}

[tools.explode]
description = "A tool whose backend always fails."
http = "{self.base_url}/tools/explode"
[tools.explode.parameters]
type = "object"
properties = {{}}

[tools.get_time]
description = "Current time."
python = "broker.tools.demo:get_time"
[tools.get_time.parameters]
type = "object"
properties = {{}}
"""
