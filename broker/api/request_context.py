"""Tags every log record written while a request to a session's route runs with its id."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from broker.logs import bound


@web.middleware
async def log_context_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    with bound(request.match_info.get("session_id")):
        return await handler(request)
