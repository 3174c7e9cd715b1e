"""The URL map."""

from __future__ import annotations

from aiohttp import web

from broker.api import health, sessions


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", health.healthz)
    app.router.add_post("/api/v1/sessions", sessions.create_session)
    app.router.add_get("/api/v1/sessions/{session_id}", sessions.get_session)
    app.router.add_post("/api/v1/sessions/{session_id}/realtime-offer", sessions.realtime_offer)
    app.router.add_post("/api/v1/sessions/{session_id}/tools/{tool}", sessions.bridge_tool_call)
