"""Liveness (``/healthz``) and readiness (``/readyz``)."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from broker import app_state
from broker.api.schemas import Health, respond
from broker.errors import problem_of, problem_response


async def healthz(request: web.Request) -> web.Response:
    """200 when the database answers; 503 (problem+json) otherwise."""
    try:
        async with request.app[app_state.SESSIONMAKER]() as s:
            await s.execute(text("SELECT 1"))
    except SQLAlchemyError:
        return problem_response(503, "database_unavailable", "Unavailable", "database unreachable")
    return respond(Health(status="ok", provider=request.app[app_state.PROVIDER].name))


async def readyz(request: web.Request) -> web.Response:
    """200 when this process takes new calls; 503 otherwise.

    503 when it is draining, overloaded or without its database: a load balancer sends new
    sessions elsewhere, and the calls it has go on.
    """
    app = request.app
    if app[app_state.SHUTTING_DOWN].is_set() or app[app_state.SUPERVISOR].stopping:
        return problem_response(503, "draining", "Unavailable", "this process is stopping")
    guard = app[app_state.OVERLOAD]
    reason = guard.reason()
    if reason is not None:
        # A reading, not a refused request: not counted, not logged (probes come every
        # few seconds).
        return problem_of(guard.refusal(reason, "a new call"))
    return await healthz(request)
