"""HTTP control plane: ``POST /v1/realtime/calls`` and ``…/{call_id}/hangup`` (PROTOCOL.md §1)."""

from __future__ import annotations

import json
import logging
from typing import Any, Final

from aiohttp import BodyPartReader, web

from ._auth import require_api_key
from ._keys import CALL_REGISTRY
from ._session import check_session_fields, initial_session
from .errors import ApiError, ClientEventError, InvalidSdpError, call_not_found
from .peer import MAX_SDP_BYTES

logger = logging.getLogger(__name__)

MAX_SESSION_BYTES: Final = 256 * 1024


def _invalid_session(message: str, param: str | None = "session") -> ApiError:
    return ApiError(400, "invalid_session", message, param=param)


async def _read_multipart(request: web.Request) -> tuple[str | None, dict[str, Any] | None]:
    sdp: str | None = None
    session_text: str | None = None
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            continue  # a nested multipart body; nothing legitimate sends one
        name = part.name
        if name == "sdp":
            data = await part.read(decode=True)
            if len(data) > MAX_SDP_BYTES:
                raise InvalidSdpError("SDP offer too large.")
            sdp = data.decode("utf-8", errors="replace")
        elif name == "session":
            data = await part.read(decode=True)
            if len(data) > MAX_SESSION_BYTES:
                raise _invalid_session("Session config too large.")
            session_text = data.decode("utf-8", errors="replace")
        # Unknown parts are ignored, like unknown query parameters.
    if session_text is None:
        return sdp, None
    try:
        session = json.loads(session_text)
    except ValueError as exc:
        raise _invalid_session("The 'session' part is not valid JSON.") from exc
    if not isinstance(session, dict):
        raise _invalid_session("The 'session' part must be a JSON object.")
    if session.get("type") != "realtime":
        raise _invalid_session(
            "Missing or invalid 'session.type': expected 'realtime'.", param="session.type"
        )
    try:
        check_session_fields(session)
    except ClientEventError as exc:
        raise ApiError(400, exc.code, exc.message, param=exc.param) from exc
    return sdp, session


async def create_call(request: web.Request) -> web.Response:
    """Create a WebRTC call from an SDP offer; answer ``201`` with the SDP answer.

    Accepts ``multipart/form-data`` (parts ``sdp`` and optional ``session``, with or without
    part content types) or a raw ``application/sdp`` body (default session). The answer has
    ``Content-Type: application/sdp`` and ``Location: /v1/realtime/calls/<call_id>``.

    Raises:
        ApiError: 401 ``invalid_api_key``; 400 ``invalid_session``/``unknown_parameter``/
            ``invalid_type``; 400 ``invalid_sdp``; 415 ``unsupported_content_type``.
    """
    require_api_key(request)
    content_type = request.content_type
    session: dict[str, Any] | None = None
    if content_type == "multipart/form-data":
        sdp, session = await _read_multipart(request)
    elif content_type == "application/sdp":
        body = await request.read()
        if len(body) > MAX_SDP_BYTES:
            raise InvalidSdpError("SDP offer too large.")
        sdp = body.decode("utf-8", errors="replace")
    else:
        raise ApiError(
            415,
            "unsupported_content_type",
            "Send the offer as application/sdp or multipart/form-data.",  # [inferred]
        )
    if not sdp or not sdp.strip():
        raise InvalidSdpError("Missing SDP offer.")
    effective = initial_session(session, request.query.get("model"))
    registry = request.app[CALL_REGISTRY]
    call, answer = await registry.create_call(sdp, effective)
    return web.Response(
        status=201,
        text=answer,
        content_type="application/sdp",
        headers={"Location": call.location},
    )


async def hangup_call(request: web.Request) -> web.Response:
    """End a call; ``200`` with an empty JSON object once it is ended.

    The SDK sends an empty body with ``Content-Type: application/json``; the body is ignored.

    Raises:
        ApiError: 401 ``invalid_api_key``; 404 ``call_id_not_found`` for an unknown call.
    """
    require_api_key(request)
    call_id = request.match_info["call_id"]
    call = request.app[CALL_REGISTRY].get(call_id)
    if call is None:
        raise call_not_found(call_id)
    await call.end("hangup")
    return web.json_response({})
