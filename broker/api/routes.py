"""The URL map: every route with the body it may carry (checked before the handler runs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from broker.api import (
    api_keys,
    approvals,
    audit,
    client_package,
    cors,
    erasure,
    events_stream,
    health,
    metrics,
    openapi,
    ops_actions,
    ops_dashboard,
    quotas,
    retention,
    session_list,
    sessions,
    sip_incoming,
    tenants,
    tool_callbacks,
    tools,
    trusted_connect,
)
from broker.api._bodies import MAX_JSON_BYTES, NO_BODY, bounded
from broker.session.sdp import MAX_SDP_BYTES


@dataclass(frozen=True)
class Route:
    """One endpoint; ``max_body`` is its declared body limit (``NO_BODY``: none accepted)."""

    method: str
    path: str
    handler: Handler
    max_body: int
    name: str | None = None
    """The resource name; the CORS middleware recognises browser endpoints by it."""


ROUTES: Final = (
    Route(hdrs.METH_GET, "/healthz", health.healthz, NO_BODY),
    Route(hdrs.METH_GET, "/readyz", health.readyz, NO_BODY),
    Route(hdrs.METH_GET, "/metrics", metrics.metrics, NO_BODY),
    Route(hdrs.METH_GET, openapi.OPENAPI_PATH, openapi.openapi_json, NO_BODY),
    Route(hdrs.METH_POST, "/api/v1/sessions", sessions.create_session, MAX_JSON_BYTES),
    Route(hdrs.METH_GET, "/api/v1/sessions", session_list.list_sessions_route, NO_BODY),
    Route(hdrs.METH_GET, "/api/v1/sessions/{session_id}", sessions.get_session, NO_BODY),
    Route(hdrs.METH_DELETE, "/api/v1/sessions/{session_id}", erasure.erase_session, NO_BODY),
    Route(
        hdrs.METH_GET, "/api/v1/sessions/{session_id}/events", events_stream.session_events, NO_BODY
    ),
    Route(
        hdrs.METH_POST,
        "/api/v1/sessions/{session_id}/realtime-offer",
        sessions.realtime_offer,
        MAX_SDP_BYTES,
        name=cors.OFFER_RESOURCE,
    ),
    Route(
        hdrs.METH_POST,
        "/api/v1/sessions/{session_id}/tools/{tool}",
        sessions.bridge_tool_call,
        MAX_JSON_BYTES,
        name=cors.BRIDGE_RESOURCE,
    ),
    Route(hdrs.METH_GET, "/api/v1/sessions/{session_id}/connect", trusted_connect.connect, NO_BODY),
    Route(
        hdrs.METH_POST,
        "/api/v1/sessions/{session_id}/end",
        sessions.end_call,
        NO_BODY,
        name=cors.END_RESOURCE,
    ),
    Route(hdrs.METH_GET, "/api/v1/keys", api_keys.list_keys, NO_BODY),
    Route(hdrs.METH_POST, "/api/v1/keys", api_keys.create_key, MAX_JSON_BYTES),
    Route(hdrs.METH_DELETE, "/api/v1/keys/{key_id}", api_keys.revoke_key, NO_BODY),
    Route(hdrs.METH_PATCH, "/api/v1/keys/{key_id}", api_keys.grant_tools, MAX_JSON_BYTES),
    Route(
        hdrs.METH_POST,
        "/api/v1/sessions/{session_id}/hangup",
        ops_actions.hangup_session,
        MAX_JSON_BYTES,
    ),
    Route(
        hdrs.METH_POST,
        "/api/v1/sessions/{session_id}/transfer",
        ops_actions.transfer_session,
        MAX_JSON_BYTES,
    ),
    Route(
        hdrs.METH_POST,
        "/api/v1/sessions/{session_id}/instructions",
        ops_actions.update_instructions,
        MAX_JSON_BYTES,
    ),
    Route(
        hdrs.METH_POST,
        "/api/v1/sessions/{session_id}/config",
        ops_actions.reconfigure_session,
        MAX_JSON_BYTES,
    ),
    Route(
        hdrs.METH_PUT,
        "/api/v1/tenants/{tenant_id}/retention",
        retention.put_tenant_retention,
        MAX_JSON_BYTES,
    ),
    Route(hdrs.METH_PUT, "/api/v1/keys/{key_id}/quotas", quotas.put_key_quotas, MAX_JSON_BYTES),
    Route(
        hdrs.METH_PUT,
        "/api/v1/tenants/{tenant_id}/quotas",
        quotas.put_tenant_quotas,
        MAX_JSON_BYTES,
    ),
    Route(hdrs.METH_GET, "/api/v1/usage", quotas.usage, NO_BODY),
    Route(hdrs.METH_GET, "/api/v1/tenants", tenants.list_tenants_route, NO_BODY),
    Route(hdrs.METH_POST, "/api/v1/tenants", tenants.create_tenant_route, MAX_JSON_BYTES),
    Route(hdrs.METH_GET, "/api/v1/tools", tools.list_tools, NO_BODY),
    Route(hdrs.METH_GET, "/api/v1/audit", audit.list_audit, NO_BODY),
    Route(hdrs.METH_GET, "/api/v1/audit/keys", audit.list_audit_keys, NO_BODY),
    Route(hdrs.METH_GET, "/api/v1/audit/head", audit.audit_head, NO_BODY),
    Route(hdrs.METH_POST, "/api/v1/tools/{tool}/disable", tools.disable_tool, MAX_JSON_BYTES),
    Route(hdrs.METH_POST, "/api/v1/tools/{tool}/enable", tools.enable_tool, NO_BODY),
    Route(hdrs.METH_GET, "/api/v1/approvals", approvals.list_approvals, NO_BODY),
    Route(hdrs.METH_GET, "/api/v1/approvals/{approval_id}", approvals.get_approval, NO_BODY),
    Route(
        hdrs.METH_POST, "/api/v1/approvals/{approval_id}/approve", approvals.approve, MAX_JSON_BYTES
    ),
    Route(hdrs.METH_POST, "/api/v1/approvals/{approval_id}/deny", approvals.deny, MAX_JSON_BYTES),
    Route(
        hdrs.METH_POST,
        "/api/v1/sip/incoming",
        sip_incoming.sip_incoming,
        sip_incoming.MAX_WEBHOOK_BYTES,
    ),
    Route(
        hdrs.METH_POST,
        "/api/v1/tool-callbacks/{callback_id}",
        tool_callbacks.receive_tool_callback,
        tool_callbacks.MAX_CALLBACK_BYTES,
    ),
    Route(
        hdrs.METH_GET,
        client_package.PREFIX + "{name}",
        client_package.package_file,
        NO_BODY,
        name=cors.CLIENT_PACKAGE_RESOURCE,
    ),
    Route(hdrs.METH_GET, "/ops", ops_dashboard.redirect, NO_BODY),
    Route(hdrs.METH_GET, "/ops/", ops_dashboard.page, NO_BODY),
    Route(hdrs.METH_GET, "/ops/{name}", ops_dashboard.asset, NO_BODY),
)


def setup_routes(app: web.Application) -> None:
    """Register :data:`ROUTES`, and the CORS preflight of each browser endpoint."""
    for route in ROUTES:
        resource = app.router.add_resource(route.path, name=route.name)
        handler = bounded(route.handler, route.max_body)
        resource.add_route(route.method, handler)
        if route.method == hdrs.METH_GET:
            resource.add_route(hdrs.METH_HEAD, handler)
        if route.name in cors.BROWSER_RESOURCES:
            resource.add_route(hdrs.METH_OPTIONS, bounded(cors.preflight, NO_BODY))
