"""The minimal watcher (issue 16): what a sideband costs with nothing but the tool round trip.

One process, one aiohttp WebSocket per call, ``json.loads`` of every event; at a
``response.done`` that completed with function calls, each gets a ``function_call_output``
(``conversation.item.create``) and then one ``response.create`` follows. Nothing is recorded,
checked or stored: it is the floor a broker's CPU per event is compared with.

``python -m bench.watcher --provider http://127.0.0.1:PORT/v1`` prints
``WATCHER_PORT=<port>`` once its admin routes serve (127.0.0.1): ``POST /_watcher/attach``
``{"call_ids": [...]}`` attaches (answers once all are attached, or failed), ``POST
/_watcher/detach`` closes every socket, ``GET /_watcher/stats`` gives the counts (events
received, outputs sent, attach failures).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import dataclass
from typing import Final

import aiohttp
from aiohttp import web

from .helper_process import serve_until_stopped
from .standin_wire import DEFAULT_KEY

READY_PREFIX: Final = "WATCHER_PORT="
TOOL_OUTPUT: Final = "{}"
ATTACH_CONCURRENCY: Final = 64
ATTACH_TIMEOUT_S: Final = 30.0


@dataclass
class Counts:
    events: int = 0
    outputs: int = 0
    response_creates: int = 0
    attach_failures: int = 0
    closed: int = 0


class Watcher:
    """Every call's socket and the counts."""

    def __init__(self, provider: str, key: str) -> None:
        self.sideband_url = provider.rstrip("/").replace("http", "ws", 1) + "/realtime"
        self.headers = {"Authorization": f"Bearer {key}"}
        self.counts = Counts()
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def attach(self, call_ids: list[str]) -> int:
        """Attach to each call; how many attached (each then runs until detached)."""
        gate = asyncio.Semaphore(ATTACH_CONCURRENCY)

        async def one(call_id: str) -> bool:
            async with gate:
                attached: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
                self.tasks[call_id] = asyncio.create_task(self._watch(call_id, attached))
                try:
                    async with asyncio.timeout(ATTACH_TIMEOUT_S):
                        return await attached
                except TimeoutError:
                    return False

        results = await asyncio.gather(*(one(c) for c in call_ids if c not in self.tasks))
        return sum(results)

    async def _watch(self, call_id: str, attached: asyncio.Future[bool]) -> None:
        assert self.http is not None
        try:
            ws = await self.http.ws_connect(
                f"{self.sideband_url}?call_id={call_id}", headers=self.headers, autoping=True
            )
        except (aiohttp.ClientError, OSError):
            self.counts.attach_failures += 1
            attached.set_result(False)
            return
        attached.set_result(True)
        counts = self.counts
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                event = json.loads(msg.data)
                counts.events += 1
                if event.get("type") == "response.done":
                    await self._answer(ws, event["response"])
        finally:
            counts.closed += 1
            await ws.close()

    async def _answer(
        self, ws: aiohttp.ClientWebSocketResponse, response: dict[str, object]
    ) -> None:
        if response.get("status") != "completed":
            return
        output = response.get("output")
        calls = [
            item["call_id"]
            for item in (output if isinstance(output, list) else [])
            if isinstance(item, dict) and item.get("type") == "function_call"
        ]
        if not calls:
            return
        for call_id in calls:
            await ws.send_str(
                json.dumps(
                    {
                        "type": "conversation.item.create",
                        "item": {
                            "type": "function_call_output",
                            "call_id": call_id,
                            "output": TOOL_OUTPUT,
                        },
                    }
                )
            )
            self.counts.outputs += 1
        await ws.send_str('{"type":"response.create"}')
        self.counts.response_creates += 1

    async def detach(self) -> int:
        tasks, self.tasks = list(self.tasks.values()), {}
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return len(tasks)

    async def close(self) -> None:
        await self.detach()
        if self.http is not None:
            await self.http.close()


def create_app(watcher: Watcher) -> web.Application:
    async def attach(request: web.Request) -> web.Response:
        body = await request.json()
        attached = await watcher.attach([str(c) for c in body.get("call_ids") or []])
        return web.json_response({"attached": attached})

    async def detach(_request: web.Request) -> web.Response:
        return web.json_response({"detached": await watcher.detach()})

    async def stats(_request: web.Request) -> web.Response:
        c = watcher.counts
        return web.json_response(
            {
                "sockets": len(watcher.tasks),
                "events": c.events,
                "outputs": c.outputs,
                "response_creates": c.response_creates,
                "attach_failures": c.attach_failures,
                "closed": c.closed,
            }
        )

    app = web.Application()
    app.router.add_post("/_watcher/attach", attach)
    app.router.add_post("/_watcher/detach", detach)
    app.router.add_get("/_watcher/stats", stats)
    return app


async def serve(args: argparse.Namespace) -> None:
    watcher = Watcher(args.provider, args.key)
    await watcher.start()
    runner = web.AppRunner(create_app(watcher), access_log=None)
    await runner.setup()
    await serve_until_stopped(runner, READY_PREFIX, args.max_seconds)
    await watcher.close()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.watcher", description=__doc__)
    parser.add_argument("--provider", required=True, help="the provider base URL (…/v1)")
    parser.add_argument("--key", default=DEFAULT_KEY)
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    asyncio.run(serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
