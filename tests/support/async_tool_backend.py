"""A real HTTP backend for long-running (``http_async``) tools: 202 + status URL, or callback.

Every request must carry valid signatures (checked with ``standardwebhooks``, as a backend
would; :func:`tests.support.tool_backend.verify_standard`), or it is refused 401.

Tools (``POST /async/{tool}``, arguments ``{"report_id": …}``):

* ``quick_report``: ``200`` with the report at once.
* ``slow_report``: ``202`` + ``Location: /async/jobs/{job}``; the job is done after
  :attr:`AsyncToolBackend.work_seconds`; ``GET`` it: ``202`` until then, ``200`` + the report.
* ``callback_report``: ``202`` with no status URL; after ``work_seconds`` the report is
  POSTed to the request's ``X-Callback-URL``, signed with the tool secret (``Webhook-Id`` =
  the callback id), as docs/tool-webhooks.md tells a backend to.
* ``stuck_report``: ``202`` + a status URL that never finishes.
* ``json_report``: as ``slow_report``, the status URL in a JSON body ``{"status_url": …}``.
* ``failing_report``: as ``slow_report``, but the job's status URL answers ``503``.
* ``elsewhere_report``: ``202`` + a ``Location`` on another origin (never polled).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from broker.webhooks.signature import signed_headers
from tests.support.tool_backend import TOOL_SECRET, verify_standard

WORK_MAX_S = 30.0


def report(report_id: str) -> str:
    """The output every tool here answers for ``report_id``, byte for byte."""
    return json.dumps({"report_id": report_id, "total": 4711}, separators=(",", ":"))


def sign_callback(callback_url: str, body: bytes, secret: str = TOOL_SECRET) -> dict[str, str]:
    """The headers a backend signs a callback with: Standard Webhooks, id = the callback id."""
    callback_id = callback_url.rsplit("/", 1)[1]
    return signed_headers(secret, callback_id, body, int(time.time()))


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    verified: bool
    at: float
    """Arrival, ``time.time()`` (the emulator's clock for received events)."""


@dataclass
class AsyncToolBackend:
    base_url: str = ""
    work_seconds: float = 4.0
    secret: str = TOOL_SECRET
    requests: list[Received] = field(default_factory=list)
    callbacks_sent: list[tuple[str, int]] = field(default_factory=list)
    """``(callback URL, the broker's status)`` of every callback posted."""
    callback_origin: str | None = None
    """Post callbacks here instead of the URL's own origin (another broker instance)."""
    _jobs: dict[str, tuple[float, str]] = field(default_factory=dict)
    _failing: set[str] = field(default_factory=set)
    _ids: Any = field(default_factory=itertools.count)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _runner: web.AppRunner | None = None
    _http: aiohttp.ClientSession | None = None

    def posts_to(self, tool: str) -> list[Received]:
        return [r for r in self.requests if r.method == "POST" and r.path.endswith(f"/{tool}")]

    def polls(self) -> list[Received]:
        return [r for r in self.requests if r.method == "GET"]

    async def _start_job(self, request: web.Request) -> web.Response:
        tool = request.match_info["tool"]
        body = await request.read()
        verified = verify_standard(self.secret, request.headers, body)
        self.requests.append(
            Received("POST", request.path, dict(request.headers), verified, time.time())
        )
        if not verified:
            return web.json_response({"error": "bad signature"}, status=401)
        output = report(json.loads(body)["report_id"])
        if tool == "quick_report":
            return web.Response(text=output, content_type="application/json")
        if tool == "callback_report":
            callback_url = request.headers.get("X-Callback-URL")
            if callback_url is not None:  # none offered: nobody hears of the result
                task = asyncio.create_task(self._call_back(callback_url, output.encode()))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            return web.Response(status=202)
        if tool == "elsewhere_report":
            return web.Response(status=202, headers={"Location": "http://127.0.0.2:9/jobs/1"})
        job = f"job{next(self._ids)}"
        ready = time.monotonic() + (
            WORK_MAX_S * 10 if tool == "stuck_report" else self.work_seconds
        )
        self._jobs[job] = (ready, output)
        if tool == "failing_report":
            self._failing.add(job)
        if tool == "json_report":
            return web.json_response({"status_url": f"/async/jobs/{job}"}, status=202)
        return web.Response(status=202, headers={"Location": f"/async/jobs/{job}"})

    async def _poll(self, request: web.Request) -> web.Response:
        verified = verify_standard(self.secret, request.headers, await request.read())
        self.requests.append(
            Received("GET", request.path, dict(request.headers), verified, time.time())
        )
        if not verified:
            return web.json_response({"error": "bad signature"}, status=401)
        if request.match_info["job"] in self._failing:
            return web.json_response({"error": "worker crashed"}, status=503)
        job = self._jobs.get(request.match_info["job"])
        if job is None:
            return web.json_response({"error": "no such job"}, status=404)
        ready, output = job
        if time.monotonic() < ready:
            return web.json_response({"status": "working"}, status=202)
        return web.Response(text=output, content_type="application/json")

    async def _call_back(self, url: str, body: bytes) -> None:
        await asyncio.sleep(min(self.work_seconds, WORK_MAX_S))
        assert self._http is not None
        headers = {"Content-Type": "application/json", **sign_callback(url, body, self.secret)}
        if self.callback_origin is not None:
            url = self.callback_origin + url[url.index("/api/v1/") :]
        async with self._http.post(url, data=body, headers=headers) as resp:
            self.callbacks_sent.append((url, resp.status))

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/async/{tool}", self._start_job)
        app.router.add_get("/async/jobs/{job}", self._poll)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        self._http = aiohttp.ClientSession()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def config_toml(self, ack_after_ms: int = 1000) -> str:
        """The tools (signed with :data:`TOOL_SECRET`); ``stuck_report`` times out in 2 s."""
        return "".join(
            f"""
[tools.{name}]
description = "Prepare a report (takes a while)."
timeout = {timeout}
http_async = "{self.base_url}/async/{name}"
poll_interval = 0.2
ack_after_ms = {ack_after_ms}
secret = "{self.secret}"
[tools.{name}.parameters]
type = "object"
required = ["report_id"]
properties.report_id = {{ type = "string" }}
"""
            for name, timeout in (
                ("quick_report", 10),
                ("slow_report", 10),
                ("callback_report", 10),
                ("stuck_report", 2),
                ("json_report", 10),
                ("failing_report", 10),
                ("elsewhere_report", 10),
            )
        )
