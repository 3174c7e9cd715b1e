"""Session endpoints: create, realtime offer, bridge tool call, detail."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiohttp import web

from broker import app_state, tracing
from broker.api._auth import api_principal, browser_principal
from broker.api._bodies import read_body, read_json, require_content_type
from broker.api._times import iso
from broker.api.audit import session_audit_url
from broker.api.public_urls import connect_url, session_urls
from broker.api.schemas import (
    BridgeResult,
    ClientSecret,
    Ended,
    ServerToolOut,
    SessionCreated,
    SessionDetail,
    TrustedSessionCreated,
    respond,
)
from broker.auth.browser_limits import BrowserRoute
from broker.db.models import ConnectionType, SessionRow, SessionState, ToolCall
from broker.errors import BadRequestError
from broker.record import transcript
from broker.record.usage import Usage
from broker.session.sdp import MAX_SDP_BYTES
from broker.session.service import CreatedSession, CreateSessionRequest
from broker.tools.bridge import BridgeCallRequest


def _session_json(row: SessionRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "tenant": row.tenant_id,
        "state": row.state,
        "model": row.model,
        "voice": row.voice,
        "tools": row.tools,
        "connection_type": row.connection_type,
        "service_id": row.service_id,
        "sip_line": row.sip_line,
        "caller": row.caller,
        "server_tools": row.server_tools,
        "call_id": row.call_id,
        "sideband": {"enabled": row.sideband_enabled, "state": row.sideband_state},
        "metadata": row.metadata_,
        "end_reason": row.end_reason,
        "limits": {
            "max_duration_s": row.max_duration_s,
            "idle_timeout_s": row.idle_timeout_s,
            "max_tool_calls": row.max_tool_calls,
            "max_concurrent_tools": row.max_concurrent_tools,
            "max_argument_bytes": row.max_argument_bytes,
            "on_tamper": row.tamper_policy,
            "page_items": row.page_items,
            "page_responses": row.page_responses,
        },
        "input_transcription": row.input_transcription,
        "created_at": iso(row.created_at),
        "live_at": iso(row.live_at),
        "ended_at": iso(row.ended_at),
        "erased_at": iso(row.erased_at),
        "usage": Usage.from_columns(row).as_json(),
    }


def _tool_call_json(call: ToolCall) -> dict[str, Any]:
    return {
        "call_id": call.call_id,
        "tool": call.tool,
        "arguments": call.arguments,
        "status": call.status,
        "decision": call.decision,
        "path": call.path,
        "output": call.output,
        "error": call.error,
        "created_at": iso(call.created_at),
        "finished_at": iso(call.finished_at),
        "injected_at": iso(call.injected_at),
    }


async def create_session(request: web.Request) -> web.Response:
    principal = await api_principal(request)
    # Only now, with the API key checked: a trusted backend may make this a span of its own
    # trace (W3C ``traceparent``); an unauthenticated request chooses nothing.
    with tracing.span(
        "broker.session.create",
        {"broker.key_id": principal.key_id},
        kind="server",
        remote_parent=request.headers,
    ) as span:
        request.app[app_state.OVERLOAD].check("a new session")
        body = await read_json(request, CreateSessionRequest)
        created = await request.app[app_state.SESSIONS].create(
            principal, body, trace_parent=span.trace_parent()
        )
        span.set("broker.session_id", created.row.id)
        span.set("broker.outcome", "created")
    return created_response(request, created)


def created_response(request: web.Request, created: CreatedSession) -> web.Response:
    """The create reply; ``POST /demo/session`` returns it too.

    One shape for ``broker-client.js``, whether a backend passes it through or the demo made it.
    """
    row = created.row
    if row.connection_type == ConnectionType.TRUSTED_SERVER:
        return _trusted_created(request, created)
    # Absolute: the page that uses them is on another origin than the broker.
    urls = session_urls(request, row.id)
    return respond(
        SessionCreated(
            id=row.id,
            state=SessionState(row.state),
            model=row.model,
            tools=row.tools,
            sideband=row.sideband_enabled,
            input_transcription=row.input_transcription,
            client_secret=ClientSecret(value=created.client_secret, expires_at=created.expires_at),
            offer_url=urls["offer_url"],
            bridge_url=urls["bridge_url"],
            end_url=urls["end_url"],
        ),
        status=201,
        # The reply carries a live credential: no cache may keep a copy.
        headers={"Cache-Control": "no-store"},
    )


def _trusted_created(request: web.Request, created: CreatedSession) -> web.Response:
    """A trusted session's create reply: its backend's connect token, not a client secret."""
    row = created.row
    assert row.service_id is not None
    return respond(
        TrustedSessionCreated(
            id=row.id,
            state=SessionState(row.state),
            connection_type="trusted_server",
            service_id=row.service_id,
            model=row.model,
            tools=row.tools,
            server_tools=[ServerToolOut.model_validate(t) for t in row.server_tools or ()],
            input_transcription=row.input_transcription,
            connect_token=created.client_secret,
            connect_expires_at=created.expires_at,
            connect_url=connect_url(request, row.id),
        ),
        status=201,
        headers={"Cache-Control": "no-store"},
    )


async def realtime_offer(request: web.Request) -> web.Response:
    session_id = request.match_info["session_id"]
    browser = browser_principal(request, session_id)
    # After the token (no I/O), before the body and the database's session row: a flood
    # costs an HMAC (and, with shared limits on PostgreSQL, one statement on its bucket).
    await request.app[app_state.BROWSER_LIMITS].check(BrowserRoute.OFFER, browser)
    # Before the body and the provider: a refused offer leaves the session as it was, and
    # the page offers again after Retry-After.
    request.app[app_state.OVERLOAD].check("an offer")
    require_content_type(request, "application/sdp")
    raw = await read_body(request, MAX_SDP_BYTES)
    try:
        sdp = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequestError("invalid_sdp", "the SDP offer is not UTF-8 text") from None
    answer = await request.app[app_state.SESSIONS].offer(browser, sdp)
    return web.Response(status=201, text=answer, content_type="application/sdp")


async def bridge_tool_call(request: web.Request) -> web.Response:
    session_id = request.match_info["session_id"]
    # Expiry is the service's call: the token that made the offer outlives `exp` while live.
    browser = browser_principal(request, session_id, check_expiry=False)
    await request.app[app_state.BROWSER_LIMITS].check(BrowserRoute.BRIDGE, browser)
    body = await read_json(request, BridgeCallRequest)
    outcome = await request.app[app_state.SESSIONS].bridge_call(
        browser, request.match_info["tool"], body
    )
    return respond(
        BridgeResult(
            call_id=outcome.call_id,
            status=outcome.status,
            output=outcome.output,
            handled_by=outcome.handled_by,
        ),
        # 202: recorded and owned by the sideband, but not finished within the wait. A held
        # (approval-gated) call's pending output is its answer: 200.
        status=200 if outcome.answered else 202,
    )


async def end_call(request: web.Request) -> web.Response:
    """The page hung up: end the call at the provider now (it cannot, it holds no key)."""
    session_id = request.match_info["session_id"]
    # Like the bridge: the secret that made the offer stays good while its call is live.
    browser = browser_principal(request, session_id, check_expiry=False)
    await request.app[app_state.BROWSER_LIMITS].check(BrowserRoute.END, browser)
    ended = await request.app[app_state.SESSIONS].end_by_browser(browser)
    return respond(Ended(id=session_id, ended=ended))


async def get_session(request: web.Request) -> web.Response:
    principal = await api_principal(request)
    row, calls = await request.app[app_state.SESSIONS].detail(
        principal, request.match_info["session_id"]
    )
    # Built here from the rows already read: the broker's outputs are what tell its tool
    # outputs from ones a page forged (broker.record.transcript).
    lines = await transcript.load(request.app[app_state.SESSIONMAKER], row.id, calls)
    # Validated on the way out: a field the document does not declare is a bug found here.
    detail = {
        **_session_json(row),
        "tool_calls": _tool_calls(calls),
        "transcript": lines,
        "audit_url": session_audit_url(request, row.id),
    }
    return respond(SessionDetail.model_validate(detail))


def _tool_calls(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    return [_tool_call_json(call) for call in calls]
