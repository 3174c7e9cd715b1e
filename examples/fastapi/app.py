"""An app backend for the sideband broker, in FastAPI.

It plays the part every real web app needs on its server: it holds the broker API key, decides
which tools a call may use, creates the session at the broker, and hands the page the broker's
create response exactly as it came (the browser package reads ``client_secret``, ``offer_url``,
``bridge_url`` and ``end_url`` from it). The page loads the browser package from the broker
itself, at its versioned URL, so the broker's ``BROKER_CORS_ORIGINS`` must list this app's origin.

Run it (see README.md):

    export BROKER_URL=http://127.0.0.1:8080 BROKER_API_KEY=bk_...
    uvicorn --factory app:create_app --port 8000
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, Response

logger = logging.getLogger("broker_example")

HERE = Path(__file__).resolve().parent
INSTRUCTIONS = (
    "You are the voice assistant of a small online shop. Use the tools to look things up;"
    " never make up an order's status."
)
CLIENT_PATH = "/client/v1/broker-client.js"
"""Where the broker serves its browser package; the major version is in the path."""


@dataclass(frozen=True)
class Config:
    broker_url: str
    api_key: str
    tools: tuple[str, ...]
    client_url: str

    @classmethod
    def from_env(cls) -> Config:
        api_key = os.environ.get("BROKER_API_KEY", "")
        if not api_key:
            # Fail at start-up, not at the first call: a page cannot fix a missing key.
            raise RuntimeError("set BROKER_API_KEY to a broker API key with sessions:create")
        broker_url = os.environ.get("BROKER_URL", "http://127.0.0.1:8080").rstrip("/")
        tools = os.environ.get("EXAMPLE_TOOLS", "lookup_order")
        return cls(
            broker_url=broker_url,
            api_key=api_key,
            tools=tuple(name.strip() for name in tools.split(",") if name.strip()),
            client_url=os.environ.get("BROKER_CLIENT_URL", broker_url + CLIENT_PATH),
        )


def problem(status: int, code: str, detail: str) -> JSONResponse:
    # The browser package reads `code` from problem+json replies.
    return JSONResponse(
        {"type": "about:blank", "title": detail, "status": status, "code": code, "detail": detail},
        status_code=status,
        media_type="application/problem+json",
    )


def create_app(config: Config | None = None) -> FastAPI:
    config = config or Config.from_env()
    # The import map names the broker's package for the page's `import ... from "broker-client"`;
    # json.dumps keeps the URL a valid JSON string inside the page.
    page = (
        (HERE / "index.html")
        .read_text()
        .replace('"__BROKER_CLIENT_URL__"', json.dumps(config.client_url))
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with httpx.AsyncClient(
            base_url=config.broker_url,
            headers={"Authorization": f"Bearer {config.api_key}"},
            timeout=10.0,
        ) as broker:
            app.state.broker = broker
            yield

    app = FastAPI(title="sideband broker example (FastAPI)", lifespan=lifespan)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.post("/session")
    async def create_session() -> Response:
        # A real app checks its own user's login here before spending a session on them.
        broker: httpx.AsyncClient = app.state.broker
        body = {
            "tools": list(config.tools),
            "instructions": INSTRUCTIONS,
            "metadata": {"source": "fastapi-example"},
        }
        try:
            reply = await broker.post("/api/v1/sessions", json=body)
        except httpx.HTTPError as exc:
            logger.warning("the broker is unreachable: %s", type(exc).__name__)
            return problem(502, "broker_unreachable", "The broker is unreachable right now")
        if reply.status_code == 201:
            # The broker's bytes, unchanged: the page's package reads this very shape.
            return Response(
                content=reply.content,
                status_code=201,
                media_type="application/json",
                headers={"Cache-Control": "no-store"},
            )
        code = _problem_code(reply)
        logger.warning("the broker refused the session: HTTP %d %s", reply.status_code, code)
        if reply.status_code == 429:
            # The user may retry after a while; anything else is this backend's problem to fix.
            headers = {"Retry-After": reply.headers.get("Retry-After", "1")}
            response = problem(429, "rate_limited", "Too many calls were started")
            response.headers.update(headers)
            return response
        return problem(502, "session_failed", "The call could not be set up")

    return app


def _problem_code(reply: httpx.Response) -> str:
    try:
        body = reply.json()
    except ValueError:
        return "-"
    return str(body.get("code", "-")) if isinstance(body, dict) else "-"
