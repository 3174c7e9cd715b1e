"""``GET /api/v1/openapi.json``: the OpenAPI 3.1 document, built from the models.

Schemas come from the pydantic models the handlers validate requests with and the response
models in :mod:`broker.api.schemas` (``$defs`` become ``components/schemas``); the rest is
:data:`OPERATIONS`, one small table of what each route takes, answers and may refuse with.
Error codes are listed per route and per status; each problem response's schema pins ``code``
to that list, so a schema-driven test catches a route that answers with an undocumented code.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Final

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from broker.api import audit, schemas
from broker.api.api_keys import CreateKeyRequest, GrantToolsRequest
from broker.api.approvals import ApprovalDecision, ApprovalList, ApprovalRecord, DecisionRequest
from broker.api.erasure import SessionErased
from broker.api.ops_actions import (
    ConfigRequest,
    HangupRequest,
    InstructionsRequest,
    TransferRequest,
)
from broker.api.quotas import QuotasBody, QuotasSet, UsageReport
from broker.api.retention import RetentionRequest, RetentionSet
from broker.api.session_list import DEFAULT_LIMIT, MAX_LIMIT
from broker.api.sip_incoming import SipIncomingAnswer
from broker.api.tenants import CreateTenantRequest
from broker.api.tools import DisableToolRequest
from broker.session.service import CreateSessionRequest
from broker.tools.bridge import BridgeCallRequest

OPENAPI_PATH: Final = "/api/v1/openapi.json"
API_KEY: Final = "apiKey"
CLIENT_SECRET: Final = "clientSecret"
CONNECT_TOKEN: Final = "connectToken"
_REF_TEMPLATE: Final = "#/components/schemas/{model}"

Errors = Mapping[int, tuple[str, ...]]
"""Error codes by HTTP status."""

# Shared refusals, by status. Every route that reads the database may meet a full pool
# (503 ``overloaded``); every route refuses a body it does not take or one over its limit.
_API_KEY_ERRORS: Final[Errors] = {
    401: ("missing_credentials", "invalid_authorization", "invalid_api_key")
}
_SCOPED: Final[Errors] = {**_API_KEY_ERRORS, 403: ("insufficient_scope",)}
_CLIENT_SECRET_ERRORS: Final[Errors] = {
    401: (
        "missing_credentials",
        "invalid_authorization",
        "token_invalid",
        "token_expired",
        "token_wrong_audience",
    ),
    403: ("token_session_mismatch",),
}
_RECONFIGURE_ERRORS: Final[Errors] = {
    404: ("session_not_found",),
    409: ("session_not_live", "sideband_not_connected"),
    422: ("provider_lacks_capability",),
    502: ("provider_refused_update",),
    503: ("owner_unavailable",),
    504: ("provider_timeout",),
}
_JSON_BODY: Final[Errors] = {
    400: ("invalid_json",),
    408: ("body_timeout",),
    413: ("payload_too_large",),
    415: ("unsupported_media_type",),
    422: ("invalid_request",),
}
_CROSS_TENANT: Final[Errors] = {403: ("cross_tenant_required",)}
"""What acts on every tenant: refused to a tenant's key (:mod:`broker.auth.tenants`)."""
_ALWAYS: Final[Errors] = {413: ("payload_too_large",), 503: ("overloaded",)}


@dataclass(frozen=True)
class Response:
    """A success response: a model (JSON) or a media type with a plain string schema."""

    description: str
    model: type[BaseModel] | None = None
    media_type: str | None = "application/json"
    """``None``: no body (the CORS preflight's 204)."""


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    operation_id: str
    summary: str
    responses: dict[int, Response]
    security: str | None = API_KEY
    request: type[BaseModel] | None = None
    request_required: bool = True
    request_media_type: str | None = None
    """A non-JSON body (the offer's ``application/sdp``)."""
    errors: tuple[Errors, ...] = ()
    query: tuple[dict[str, Any], ...] = ()
    headers: tuple[dict[str, Any], ...] = ()
    tags: tuple[str, ...] = field(default=("api",))


def _q(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def _ok(model: type[BaseModel], description: str = "OK") -> dict[int, Response]:
    return {200: Response(description, model)}


def _preflight(path: str, name: str) -> Operation:
    return Operation(
        "options",
        path,
        f"{name}Preflight",
        "CORS preflight: 204 for an Origin in BROKER_CORS_ORIGINS",
        {204: Response("Allowed; the Access-Control-* headers say what", media_type=None)},
        security=None,
        errors=({403: ("origin_not_allowed",)},),
        headers=(
            {"name": "Origin", "in": "header", "required": False, "schema": {"type": "string"}},
        ),
        tags=("browser",),
    )


OPERATIONS: Final = (
    Operation(
        "get",
        "/healthz",
        "healthz",
        "Liveness: the database answers",
        _ok(schemas.Health),
        security=None,
        errors=({503: ("database_unavailable",)},),
        tags=("probes",),
    ),
    Operation(
        "get",
        "/readyz",
        "readyz",
        "Readiness: this process takes new calls",
        _ok(schemas.Health),
        security=None,
        errors=({503: ("draining", "overloaded", "database_unavailable")},),
        tags=("probes",),
    ),
    Operation(
        "get",
        "/metrics",
        "metrics",
        "Prometheus exposition (monitor:read)",
        {200: Response("Prometheus text format", media_type="text/plain")},
        errors=(_SCOPED,),
        tags=("probes",),
    ),
    Operation(
        "get",
        OPENAPI_PATH,
        "openapi",
        "This document",
        {200: Response("The OpenAPI 3.1 document")},
        security=None,
        tags=("meta",),
    ),
    Operation(
        "post",
        "/api/v1/sessions",
        "createSession",
        "Create a session and mint its browser client secret (sessions:create), or a trusted"
        " server session and its backend's connect token (sessions:trusted)",
        {
            201: Response(
                "Created; the reply carries a live credential", schemas.SessionCreatedReply
            )
        },
        request=CreateSessionRequest,
        errors=(
            _SCOPED,
            _JSON_BODY,
            {
                422: (
                    "unknown_tool",
                    "limit_exceeds_ceiling",
                    "transcription_model_required",
                    "provider_lacks_capability",
                    "trusted_fields_on_webrtc",
                    "service_id_required",
                    "sideband_required",
                    "server_tool_name_clash",
                ),
                403: ("tool_not_granted",),
                429: ("rate_limited", "quota_exceeded"),
            },
            {403: ("cross_tenant_required",), 422: ("unknown_tenant",)},
        ),
        headers=tuple(
            # Ignored when malformed, never refused: a caller's tracing must not cost it the call.
            {
                "name": name,
                "in": "header",
                "required": False,
                "description": "W3C trace context: the session's creation joins the caller's"
                " trace and its call's spans link to it (when the broker traces)",
                "schema": {"type": "string"},
            }
            for name in ("traceparent", "tracestate")
        ),
    ),
    Operation(
        "get",
        "/api/v1/sessions",
        "listSessions",
        "Sessions, newest first, with filters (monitor:read)",
        _ok(schemas.SessionPage),
        errors=(_SCOPED, {400: ("invalid_query",)}),
        query=(
            _q("state", "Comma-separated session states"),
            _q("model", "Only sessions of this model"),
            _q("tool", "Only sessions that called this tool"),
            _q("created_after", "ISO 8601 time"),
            _q("created_before", "ISO 8601 time"),
            _q(
                "limit",
                "Rows a page",
                {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
            ),
            _q("cursor", "``next_cursor`` of the previous page"),
        ),
    ),
    Operation(
        "get",
        "/api/v1/sessions/{session_id}",
        "getSession",
        "A session with its tool calls, transcript and usage (owner, or monitor:read)",
        _ok(schemas.SessionDetail),
        errors=(_SCOPED, {404: ("session_not_found",)}),
    ),
    Operation(
        "delete",
        "/api/v1/sessions/{session_id}",
        "eraseSession",
        "Erase an ended session's content now: events, transcript, tool arguments and"
        " outputs, instructions, metadata, audit bodies (admin; idempotent; audited)",
        _ok(SessionErased),
        errors=(_SCOPED, {404: ("session_not_found",), 409: ("session_live",)}),
        tags=("ops",),
    ),
    Operation(
        "get",
        "/api/v1/sessions/{session_id}/events",
        "sessionEvents",
        "The session's event log as server-sent events (monitor:read)",
        {200: Response("Server-sent events", media_type="text/event-stream")},
        errors=(
            _SCOPED,
            {
                400: ("invalid_last_event_id", "invalid_since"),
                404: ("session_not_found",),
                429: ("too_many_streams",),
            },
        ),
        query=(
            _q(
                "since",
                "Replay the events after this seq",
                {"type": "string", "pattern": "^[0-9]{1,18}$"},
            ),
        ),
        headers=(
            {
                "name": "Last-Event-ID",
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
            },
        ),
    ),
    Operation(
        "post",
        "/api/v1/sessions/{session_id}/realtime-offer",
        "realtimeOffer",
        "The browser's SDP offer; answers with the SDP answer (client secret)",
        {201: Response("The SDP answer", media_type="application/sdp")},
        security=CLIENT_SECRET,
        request_media_type="application/sdp",
        errors=(
            _CLIENT_SECRET_ERRORS,
            {
                400: ("invalid_sdp",),
                401: ("token_replayed",),
                404: ("session_not_found",),
                408: ("body_timeout",),
                409: ("session_already_offered", "session_not_offered"),
                413: ("payload_too_large",),
                415: ("unsupported_media_type",),
                422: ("provider_lacks_capability",),
                429: ("rate_limited", "quota_exceeded"),
                502: ("provider_error", "provider_unreachable"),
                503: ("shutting_down",),
                504: ("provider_timeout",),
            },
        ),
        tags=("browser",),
    ),
    Operation(
        "post",
        "/api/v1/sessions/{session_id}/tools/{tool}",
        "bridgeToolCall",
        "A tool call relayed by the page (client secret)",
        {
            200: Response("The call settled", schemas.BridgeResult),
            202: Response("Recorded; the sideband runs it", schemas.BridgeResult),
        },
        security=CLIENT_SECRET,
        request=BridgeCallRequest,
        errors=(
            _CLIENT_SECRET_ERRORS,
            _JSON_BODY,
            {
                403: ("tool_not_allowed",),
                404: ("session_not_found", "call_not_found"),
                409: ("session_not_live", "call_arguments_mismatch"),
                422: (
                    "provider_lacks_capability",
                    "unknown_tool",
                    "call_id_invalid",
                    "too_many_tool_calls",
                ),
                429: ("rate_limited",),
                503: ("owner_unavailable",),
            },
        ),
        tags=("browser",),
    ),
    Operation(
        "get",
        "/api/v1/sessions/{session_id}/connect",
        "connectTrustedSession",
        "A trusted session's backend opens its WebSocket (connect token; no Origin header)",
        {
            101: Response(
                "Switching to the WebSocket: the realtime events, relayed", media_type=None
            )
        },
        security=CONNECT_TOKEN,
        errors=(
            {
                400: ("websocket_required",),
                401: (
                    "missing_credentials",
                    "invalid_authorization",
                    "token_invalid",
                    "token_expired",
                    "token_wrong_audience",
                    "token_session_mismatch",
                    "token_replayed",
                ),
                403: ("browser_origin_refused",),
                404: ("session_not_found",),
                409: (
                    "not_trusted_session",
                    "session_already_connected",
                    "session_ended",
                    "session_not_offered",
                ),
                429: ("quota_exceeded",),
                502: ("provider_error",),
                503: ("shutting_down",),
            },
        ),
        tags=("trusted",),
    ),
    Operation(
        "post",
        "/api/v1/sessions/{session_id}/end",
        "endCall",
        "The page hung up: end the call (client secret)",
        _ok(schemas.Ended),
        security=CLIENT_SECRET,
        errors=(
            _CLIENT_SECRET_ERRORS,
            {
                404: ("session_not_found",),
                409: ("session_not_live",),
                429: ("rate_limited",),
                502: ("provider_error",),
                503: ("owner_unavailable",),
            },
        ),
        tags=("browser",),
    ),
    Operation(
        "post",
        "/api/v1/sessions/{session_id}/hangup",
        "hangupSession",
        "Hang a live call up (admin)",
        _ok(schemas.HungUp),
        request=HangupRequest,
        request_required=False,
        errors=(
            _SCOPED,
            _JSON_BODY,
            {
                404: ("session_not_found",),
                409: ("session_not_live",),
                502: ("provider_error",),
                503: ("owner_unavailable",),
            },
        ),
        tags=("ops",),
    ),
    Operation(
        "post",
        "/api/v1/sessions/{session_id}/transfer",
        "transferSession",
        "Transfer a live phone call to a tel: or sip: URI (SIP refer; admin)",
        _ok(schemas.Transferred),
        request=TransferRequest,
        errors=(
            _SCOPED,
            _JSON_BODY,
            {
                404: ("session_not_found",),
                409: ("not_a_phone_call", "session_not_live"),
                422: ("provider_lacks_capability",),
                502: ("provider_error",),
                503: ("owner_unavailable",),
                504: ("provider_timeout",),
            },
        ),
        tags=("ops",),
    ),
    Operation(
        "post",
        "/api/v1/sessions/{session_id}/instructions",
        "updateInstructions",
        "Change a live call's instructions (alias of /config; its key or admin)",
        _ok(schemas.InstructionsUpdated),
        request=InstructionsRequest,
        errors=(_SCOPED, _JSON_BODY, _RECONFIGURE_ERRORS),
        tags=("ops",),
    ),
    Operation(
        "post",
        "/api/v1/sessions/{session_id}/config",
        "reconfigureSession",
        "Change a live call's instructions and/or tools (its key or admin)",
        _ok(schemas.SessionReconfigured),
        request=ConfigRequest,
        errors=(
            _SCOPED,
            _JSON_BODY,
            _RECONFIGURE_ERRORS,
            {403: ("tool_not_granted",), 422: ("unknown_tool",)},
        ),
        tags=("ops",),
    ),
    Operation(
        "get",
        "/api/v1/keys",
        "listKeys",
        "API keys (admin)",
        _ok(schemas.KeyList),
        errors=(_SCOPED, {400: ("invalid_query",)}),
        query=(_q("include", "``usage`` adds each key's usage", {"enum": ["usage"]}),),
        tags=("keys",),
    ),
    Operation(
        "post",
        "/api/v1/keys",
        "createKey",
        "Create an API key (admin); the only time the key is shown",
        {201: Response("Created", schemas.KeyCreated)},
        request=CreateKeyRequest,
        errors=(
            _SCOPED,
            _JSON_BODY,
            {403: ("tool_not_granted",), 422: ("unknown_scope", "unknown_tool")},
            {403: ("cross_tenant_required",), 422: ("unknown_tenant",)},
        ),
        tags=("keys",),
    ),
    Operation(
        "delete",
        "/api/v1/keys/{key_id}",
        "revokeKey",
        "Revoke an API key (admin; idempotent; another tenant's key is not found)",
        _ok(schemas.KeyRecord),
        errors=(_SCOPED, {404: ("key_not_found",)}),
        tags=("keys",),
    ),
    Operation(
        "patch",
        "/api/v1/keys/{key_id}",
        "grantTools",
        "Replace the tools an API key may grant (admin; audited key.grants_changed)",
        _ok(schemas.KeyRecord),
        request=GrantToolsRequest,
        errors=(
            _SCOPED,
            _JSON_BODY,
            {403: ("tool_not_granted",), 404: ("key_not_found",), 422: ("unknown_tool",)},
        ),
        tags=("keys",),
    ),
    Operation(
        "get",
        "/api/v1/tenants",
        "listTenants",
        "Tenants (cross-tenant admin)",
        _ok(schemas.TenantList),
        errors=(_SCOPED, _CROSS_TENANT),
        tags=("tenants",),
    ),
    Operation(
        "post",
        "/api/v1/tenants",
        "createTenant",
        "Create a tenant (cross-tenant admin; audited tenant.created)",
        {201: Response("Created", schemas.TenantOut)},
        request=CreateTenantRequest,
        errors=(
            _SCOPED,
            _JSON_BODY,
            _CROSS_TENANT,
            {409: ("tenant_exists",), 422: ("invalid_tenant_id",)},
        ),
        tags=("tenants",),
    ),
    Operation(
        "get",
        "/api/v1/tools",
        "listTools",
        "Configured tools and their kill switch (monitor:read)",
        _ok(schemas.ToolList),
        errors=(_SCOPED,),
        tags=("ops",),
    ),
    Operation(
        "post",
        "/api/v1/tools/{tool}/disable",
        "disableTool",
        "Switch a tool off for every session (admin; cross-tenant with several tenants)",
        _ok(schemas.ToolSwitch),
        request=DisableToolRequest,
        request_required=False,
        errors=(_SCOPED, _JSON_BODY, {404: ("unknown_tool",)}, _CROSS_TENANT),
        tags=("ops",),
    ),
    Operation(
        "post",
        "/api/v1/tools/{tool}/enable",
        "enableTool",
        "Switch a tool back on (admin; cross-tenant with several tenants)",
        _ok(schemas.ToolSwitch),
        errors=(_SCOPED, {404: ("unknown_tool",)}, _CROSS_TENANT),
        tags=("ops",),
    ),
    Operation(
        "get",
        "/api/v1/approvals",
        "listApprovals",
        "Approval-gated tool calls of the key's tenant, newest first (monitor:read or admin)",
        _ok(ApprovalList),
        errors=(_SCOPED, {400: ("invalid_query",)}),
        query=(
            _q("status", "pending, approved, denied or expired"),
            _q("limit", "1-200 (default 50)", {"type": "integer", "minimum": 1, "maximum": 200}),
        ),
        tags=("ops",),
    ),
    Operation(
        "get",
        "/api/v1/approvals/{approval_id}",
        "getApproval",
        "One approval-gated tool call (monitor:read or admin)",
        _ok(ApprovalRecord),
        errors=(_SCOPED, {404: ("approval_not_found",)}),
        tags=("ops",),
    ),
    *(
        Operation(
            "post",
            f"/api/v1/approvals/{{approval_id}}/{verb}",
            f"{verb}Approval",
            summary,
            _ok(ApprovalDecision),
            request=DecisionRequest,
            request_required=False,
            errors=(
                _SCOPED,
                _JSON_BODY,
                {
                    404: ("approval_not_found",),
                    409: ("approval_decided", "session_not_live", "sideband_not_connected"),
                    503: ("owner_unavailable",),
                },
            ),
            tags=("ops",),
        )
        for verb, summary in (
            ("approve", "Approve a held tool call: it runs and the model is told (admin)"),
            ("deny", "Deny a held tool call: the model is told (admin)"),
        )
    ),
    Operation(
        "post",
        "/api/v1/sip/incoming",
        "sipIncoming",
        "The provider's realtime.call.incoming webhook (Standard-Webhooks-signed with"
        " BROKER_SIP_WEBHOOK_SECRET): the call is accepted, rejected or referred as its line"
        " says, by a task after the answer; a repeated webhook-id is answered, not acted on",
        _ok(SipIncomingAnswer, "Received"),
        security=None,
        request_media_type="application/json",
        errors=(
            {
                400: ("invalid_webhook",),
                401: ("invalid_signature",),
                404: ("sip_not_configured",),
                408: ("body_timeout",),
                413: ("payload_too_large",),
                503: ("shutting_down",),
            },
        ),
        headers=tuple(
            # Checked by the route (401 ``invalid_signature`` without them), not by the schema.
            {"name": name, "in": "header", "required": False, "schema": {"type": "string"}}
            for name in ("webhook-id", "webhook-timestamp", "webhook-signature")
        ),
        tags=("phone",),
    ),
    Operation(
        "post",
        "/api/v1/tool-callbacks/{callback_id}",
        "receiveToolCallback",
        "A long-running (http_async) tool's backend posts its output (signed; taken once)",
        {204: Response("Received; the waiting call reads it", media_type=None)},
        security=None,
        request_media_type="application/json",
        errors=(
            {
                401: ("invalid_signature",),
                404: ("callback_not_found",),
                408: ("body_timeout",),
                409: ("callback_already_received",),
                413: ("payload_too_large",),
                422: ("invalid_tool_output",),
            },
        ),
        tags=("tools",),
    ),
    Operation(
        "get",
        "/api/v1/audit",
        "listAudit",
        "Audit records, oldest first, with filters (audit:read)",
        _ok(schemas.AuditPage),
        errors=(_SCOPED, {400: ("invalid_query",)}),
        query=(
            _q("session_id", "Only this session's records"),
            _q("tool", "Only records of this tool"),
            {
                **_q("kind", "Record kinds: repeat the parameter or separate them by commas"),
                "schema": {"type": "array", "items": {"type": "string"}},
                "style": "form",
                "explode": True,
            },
            _q("actor", "``key:<id>``, ``page``, ``sideband`` or ``broker``"),
            _q("decision", "Only records with this policy decision"),
            _q("since", "RFC 3339 time (inclusive)", {"type": "string", "format": "date-time"}),
            _q("until", "RFC 3339 time (exclusive)", {"type": "string", "format": "date-time"}),
            _q(
                "limit",
                "Records a page",
                {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": audit.MAX_LIMIT,
                    "default": audit.DEFAULT_LIMIT,
                },
            ),
            _q("cursor", "``next_cursor`` of the previous page"),
        ),
        tags=("audit",),
    ),
    Operation(
        "get",
        "/api/v1/audit/keys",
        "listAuditKeys",
        "Every public key the audit chain was signed with (audit:read)",
        _ok(schemas.AuditKeyList),
        errors=(_SCOPED,),
        tags=("audit",),
    ),
    Operation(
        "get",
        "/api/v1/audit/head",
        "auditHead",
        "The audit chain's signed head, a checkpoint for verify --expect-head (audit:read)",
        _ok(schemas.AuditCheckpoint),
        errors=(_SCOPED, {404: ("audit_empty",)}),
        tags=("audit",),
    ),
    Operation(
        "put",
        "/api/v1/tenants/{tenant_id}/retention",
        "setTenantRetention",
        "Set a tenant's own retention period; null: BROKER_RETENTION_DAYS (admin; audited"
        " tenant.retention_changed)",
        _ok(RetentionSet),
        request=RetentionRequest,
        errors=(_SCOPED, _JSON_BODY, {404: ("tenant_not_found",)}),
        tags=("ops",),
    ),
    Operation(
        "put",
        "/api/v1/keys/{key_id}/quotas",
        "setKeyQuotas",
        "Replace an API key's spend caps; null clears them (admin; audited quota.changed)",
        _ok(QuotasSet),
        request=QuotasBody,
        errors=(
            _SCOPED,
            _JSON_BODY,
            {404: ("key_not_found",), 422: ("invalid_quotas", "hard_cap_without_token_cap")},
        ),
        tags=("quotas",),
    ),
    Operation(
        "put",
        "/api/v1/tenants/{tenant_id}/quotas",
        "setTenantQuotas",
        "Replace a tenant's spend caps; null clears them (admin; audited quota.changed)",
        _ok(QuotasSet),
        request=QuotasBody,
        errors=(
            _SCOPED,
            _JSON_BODY,
            {404: ("tenant_not_found",), 422: ("invalid_quotas", "hard_cap_without_token_cap")},
        ),
        tags=("quotas",),
    ),
    Operation(
        "get",
        "/api/v1/usage",
        "getUsage",
        "What the caller's key and its tenant spent, their caps, what remains and when it resets",
        _ok(UsageReport),
        errors=(_API_KEY_ERRORS,),
        tags=("quotas",),
    ),
    # The browser endpoints' CORS preflights (broker.api.cors).
    _preflight("/api/v1/sessions/{session_id}/realtime-offer", "realtimeOffer"),
    _preflight("/api/v1/sessions/{session_id}/tools/{tool}", "bridgeToolCall"),
    _preflight("/api/v1/sessions/{session_id}/end", "endCall"),
)


_GENERIC_ERRORS: Final[Errors] = {
    # aiohttp's own refusals, rendered by the problem middleware (broker.errors._HTTP_CODES).
    400: ("bad_request",),
    404: ("not_found",),
    405: ("method_not_allowed",),
}


def _merged(op: Operation) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    groups: list[Errors] = [*op.errors, _GENERIC_ERRORS]
    if op.security is not None or op.path != OPENAPI_PATH:
        groups.append(_ALWAYS)
    for group in groups:
        for status, codes in group.items():
            bucket = out.setdefault(status, [])
            bucket.extend(c for c in codes if c not in bucket)
    return dict(sorted(out.items()))


def error_codes() -> dict[str, set[int]]:
    """Every documented error code, with the statuses it comes with."""
    codes: dict[str, set[int]] = {}
    for op in OPERATIONS:
        for status, names in _merged(op).items():
            for name in names:
                codes.setdefault(name, set()).add(status)
    return codes


def _path_params(path: str) -> list[dict[str, Any]]:
    names = [part[1:-1] for part in path.split("/") if part.startswith("{")]
    return [
        {"name": n, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
        for n in names
    ]


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF_TEMPLATE.format(model=model.__name__)}


def _operation(op: Operation) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": list(op.tags),
        "security": [{op.security: []}] if op.security else [],
    }
    params = [*_path_params(op.path), *op.query, *op.headers]
    if params:
        doc["parameters"] = params
    if op.request is not None:
        doc["requestBody"] = {
            "required": op.request_required,
            "content": {"application/json": {"schema": _ref(op.request)}},
        }
    elif op.request_media_type is not None:
        doc["requestBody"] = {
            "required": True,
            "content": {op.request_media_type: {"schema": {"type": "string"}}},
        }
    responses: dict[str, Any] = {}
    for status, ok in op.responses.items():
        schema = _ref(ok.model) if ok.model is not None else {"type": "string"}
        if op.path == OPENAPI_PATH:
            schema = {"type": "object"}
        responses[str(status)] = {"description": ok.description}
        if ok.media_type is not None:
            responses[str(status)]["content"] = {ok.media_type: {"schema": schema}}
    for status, codes in _merged(op).items():
        responses[str(status)] = {
            "description": "Refused: " + ", ".join(f"`{c}`" for c in codes),
            "content": {
                "application/problem+json": {
                    "schema": {
                        "allOf": [
                            _ref(schemas.Problem),
                            {"properties": {"code": {"enum": codes}}},
                        ]
                    }
                }
            },
        }
    doc["responses"] = responses
    return doc


def _models() -> list[type[BaseModel]]:
    seen: dict[str, type[BaseModel]] = {"Problem": schemas.Problem}
    for op in OPERATIONS:
        for model in (op.request, *(r.model for r in op.responses.values())):
            if model is not None:
                seen.setdefault(model.__name__, model)
    return list(seen.values())


def _version() -> str:
    try:
        return version("sideband-broker")
    except PackageNotFoundError:
        return "0"


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (built once: it depends on code only, not on settings)."""
    models = _models()
    # Requests in validation mode, responses in serialization mode: each as it is on the wire.
    requests = {op.request for op in OPERATIONS if op.request is not None}
    _, top = models_json_schema(
        [(m, "validation" if m in requests else "serialization") for m in models],
        ref_template=_REF_TEMPLATE,
    )
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Sideband broker API",
            "version": _version(),
            "description": "Errors are RFC 9457 problem+json with a stable `code`.",
        },
        "paths": paths,
        "components": {
            "schemas": top.get("$defs", {}),
            "securitySchemes": {
                API_KEY: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key (`bk_…`) or BROKER_ADMIN_KEY",
                },
                CLIENT_SECRET: {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "The session's client secret, from its create response",
                },
                CONNECT_TOKEN: {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "A trusted session's connect token (single use), from its"
                    " create response",
                },
            },
        },
    }


@functools.cache
def _body() -> bytes:
    return json.dumps(document()).encode()


async def openapi_json(request: web.Request) -> web.Response:
    """The document; public: it describes the API, not this deployment."""
    return web.Response(body=_body(), content_type="application/json")
