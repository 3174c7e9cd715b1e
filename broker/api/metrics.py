"""``GET /metrics``: the Prometheus exposition, for keys with ``monitor:read`` (or ``admin``).

Global, for any tenant's ``monitor:read`` key: it holds the deployment's counts and gauges
only (no session id, no tenant label, nothing a session said), so it shows a tenant no other
tenant's session; and Prometheus's scrape keys, all of the default tenant after the upgrade,
keep working. It has no per-tenant series: a tenant label would grow with the tenants.
"""

from __future__ import annotations

from aiohttp import web

from broker import app_state
from broker.api._auth import api_principal
from broker.auth.principals import Scope


async def metrics(request: web.Request) -> web.Response:
    # Behind a key: the numbers describe this deployment's traffic and failures. Prometheus
    # sends one with `authorization: {credentials: …}` in its scrape config.
    (await api_principal(request)).require(Scope.MONITOR_READ)
    body, content_type = request.app[app_state.METRICS].render()
    # The content type carries a version and a charset, which web.Response's content_type
    # argument refuses: it goes in as a header.
    return web.Response(
        body=body, headers={"Content-Type": content_type, "Cache-Control": "no-store"}
    )
