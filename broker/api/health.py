"""Liveness and readiness."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from broker import app_state
from broker.errors import problem_response


async def healthz(request: web.Request) -> web.Response:
    """200 when the database answers; 503 (problem+json) otherwise."""
    try:
        async with request.app[app_state.SESSIONMAKER]() as s:
            await s.execute(text("SELECT 1"))
    except SQLAlchemyError:
        return problem_response(503, "database_unavailable", "Unavailable", "database unreachable")
    return web.json_response({"status": "ok", "provider": request.app[app_state.PROVIDER].name})
