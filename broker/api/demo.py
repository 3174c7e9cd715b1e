"""The demo: a page at ``/`` that plays a web app, and the app-backend route it needs.

Mounted only in demo mode (``broker serve --dev``, which ``make run`` uses). ``POST
/demo/session`` stands in for a web app's own backend: it creates the session server-side,
with the configured tools, as a built-in principal, and hands the page what ``POST
/api/v1/sessions`` returns (the same shape: the session id, its short-lived client secret and
the absolute URLs to use), as a backend passing the API's reply through would. The page never sees
an API key or the provider key. Anyone who can reach a demo broker can start calls (within the
per-key creation rate), so demo mode is for development only.
"""

from __future__ import annotations

from typing import Final

from aiohttp import hdrs, web
from pydantic import BaseModel, ConfigDict

from broker import app_state
from broker.api import sessions
from broker.api._bodies import MAX_JSON_BYTES, NO_BODY, bounded, read_json
from broker.api.web_files import WEB_ROOT as WEB_ROOT  # client_package reads it here too
from broker.auth.principals import ApiPrincipal, Scope
from broker.session.service import CreateSessionRequest

DEMO_PRINCIPAL: Final = ApiPrincipal(
    key_id="demo", name="demo page", scopes=frozenset({Scope.SESSIONS_CREATE})
)
DEMO_INSTRUCTIONS: Final = (
    "You are the voice assistant of a small online shop. Use the tools to look things up;"
    " never make up an order's status."
)


class DemoSessionRequest(BaseModel):
    """Body of ``POST /demo/session``."""

    model_config = ConfigDict(extra="forbid")

    bridge: bool = False
    """Run tools through the browser bridge: the session gets no sideband."""


async def create_demo_session(request: web.Request) -> web.Response:
    """What an app backend does for its page: create the session, return the browser's part."""
    body = await read_json(request, DemoSessionRequest)
    registry = request.app[app_state.TOOLS]
    created = await request.app[app_state.SESSIONS].create(
        DEMO_PRINCIPAL,
        CreateSessionRequest(
            tools=sorted(registry),
            sideband=not body.bridge,
            instructions=DEMO_INSTRUCTIONS,
            metadata={"source": "demo"},
        ),
    )
    return sessions.created_response(request, created)


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB_ROOT / "demo" / "index.html")


async def client_library(request: web.Request) -> web.FileResponse:
    return web.FileResponse(
        WEB_ROOT / "broker-client.js", headers={hdrs.CONTENT_TYPE: "text/javascript"}
    )


def setup_demo(app: web.Application) -> None:
    """Mount the page, its files, the client library and the demo backend route."""
    for path, handler in (("/", index), ("/broker-client.js", client_library)):
        resource = app.router.add_resource(path)
        resource.add_route(hdrs.METH_GET, bounded(handler, NO_BODY))
        resource.add_route(hdrs.METH_HEAD, bounded(handler, NO_BODY))
    app.router.add_static("/demo/", WEB_ROOT / "demo")
    app.router.add_resource("/demo/session").add_route(
        hdrs.METH_POST, bounded(create_demo_session, MAX_JSON_BYTES)
    )
