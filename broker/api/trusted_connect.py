"""``GET /api/v1/sessions/{id}/connect``: a trusted session's backend opens its WebSocket.

Every refusal comes before the upgrade, as problem+json: a request with an ``Origin``
header (403 ``browser_origin_refused``: the connect token is for a server, and a page could
otherwise be tricked into spending it), no or a bad, expired, replayed or other session's
token (401), not a WebSocket upgrade (400 ``websocket_required``), a browser session, one
already connected or ended (409). The token goes in ``Authorization: Bearer`` only: a query
string lands in access logs and proxies' histories. Then the broker opens the provider's
session and relays (:mod:`broker.session.trusted`, :mod:`broker.call.trusted_relay`).
"""

from __future__ import annotations

from aiohttp import hdrs, web

from broker import app_state
from broker.auth.principals import CONNECT_TOKEN_AUDIENCE, bearer_token, verify_client_secret
from broker.call.trusted_relay import MAX_BACKEND_FRAME
from broker.errors import BadRequestError, ForbiddenError, UnauthorizedError

HEARTBEAT_S = 20.0
CLOSE_TIMEOUT_S = 2.0
"""How long closing waits for the backend's close frame (a backend that stopped reading must
not hold a shutdown up)."""


async def connect(request: web.Request) -> web.StreamResponse:
    session_id = request.match_info["session_id"]
    if hdrs.ORIGIN in request.headers:
        raise ForbiddenError(
            "browser_origin_refused",
            "a trusted session is connected by a server, never from a browser page",
        )
    token = bearer_token(request.headers.get(hdrs.AUTHORIZATION))
    try:
        principal = verify_client_secret(
            token,
            request.app[app_state.SETTINGS].signing_key,
            session_id,
            audience=CONNECT_TOKEN_AUDIENCE,
        )
    except ForbiddenError as exc:
        # Another session's token is as good as none here.
        raise UnauthorizedError(exc.code, "the connect token is for another session") from None
    ws = web.WebSocketResponse(
        heartbeat=HEARTBEAT_S, max_msg_size=MAX_BACKEND_FRAME, timeout=CLOSE_TIMEOUT_S
    )
    if not ws.can_prepare(request).ok:
        raise BadRequestError("websocket_required", "this route is a WebSocket upgrade")
    trusted = request.app[app_state.SESSIONS].trusted
    opened = await trusted.open(principal)
    try:
        await ws.prepare(request)
    except BaseException:
        await trusted.abandon(opened)
        raise
    await trusted.run(opened, ws)
    return ws
