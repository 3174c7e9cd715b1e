"""HTTP control plane (docs/protocol.md §1): client secrets, call creation and call control.

``POST /v1/realtime/client_secrets``, ``POST /v1/realtime/calls``,
``POST /v1/realtime/calls/{call_id}/hangup`` (under ``/openai/v1`` in the ``azure`` flavour)
and, for phone calls (:mod:`emulator.sip`), ``…/accept``, ``…/reject`` and ``…/refer``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Final

from aiohttp import BodyPartReader, web

from ._auth import authorize_call_creation, require_api_key
from ._flavors import WEBRTC_FILTER_EVENTS
from ._keys import CALL_REGISTRY, CLIENT_SECRETS, FAULTS, SETTINGS
from ._session import check_session_fields, initial_session
from .errors import ApiError, ClientEventError, InvalidSdpError, call_not_found, injected_failure
from .peer import MAX_SDP_BYTES
from .sip import SipCall

logger = logging.getLogger(__name__)

MAX_SESSION_BYTES: Final = 256 * 1024
MAX_JSON_BYTES: Final = 256 * 1024
SECRET_TTL_DEFAULT_S: Final = 600
SECRET_TTL_MIN_S: Final = 10
SECRET_TTL_MAX_S: Final = 7200


def _invalid_session(message: str, param: str | None = "session") -> ApiError:
    return ApiError(400, "invalid_session", message, param=param)


def _unknown_parameter(param: str) -> ApiError:
    return ApiError(400, "unknown_parameter", f"Unknown parameter: '{param}'.", param=param)


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """Read the request body as one JSON object; an empty body counts as ``{}``.

    Raises:
        ApiError: 400 ``invalid_json`` when the body is too large, not JSON, or not an object.
    """
    body = await request.read()
    if len(body) > MAX_JSON_BYTES:
        raise ApiError(400, "invalid_json", "The request body is too large.")
    if not body.strip():
        return {}
    try:
        parsed = json.loads(body)
    except ValueError as exc:
        raise ApiError(400, "invalid_json", "The request body is not valid JSON.") from exc
    if not isinstance(parsed, dict):
        raise ApiError(400, "invalid_json", "The request body must be a JSON object.")
    return parsed


def _posted_session(session: Any) -> dict[str, Any]:
    try:
        return check_session_fields(session)
    except ClientEventError as exc:
        raise ApiError(400, exc.code, exc.message, param=exc.param) from exc


def _secret_ttl(expires_after: Any) -> int:
    param = "expires_after"
    if not isinstance(expires_after, dict):
        raise ApiError(
            400, "invalid_type", f"Invalid type for '{param}': expected an object.", param=param
        )
    for key in expires_after:
        if key not in {"anchor", "seconds"}:
            raise _unknown_parameter(f"{param}.{key}")
    if expires_after.get("anchor", "created_at") != "created_at":
        raise ApiError(
            400,
            "invalid_value",
            f"Invalid value for '{param}.anchor': only 'created_at' is supported.",
            param=f"{param}.anchor",
        )
    seconds = expires_after.get("seconds", SECRET_TTL_DEFAULT_S)
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        raise ApiError(
            400,
            "invalid_type",
            f"Invalid type for '{param}.seconds': expected an integer.",
            param=f"{param}.seconds",
        )
    if not SECRET_TTL_MIN_S <= seconds <= SECRET_TTL_MAX_S:
        raise ApiError(
            400,
            "invalid_value",
            f"Invalid value for '{param}.seconds': expected between {SECRET_TTL_MIN_S} and "
            f"{SECRET_TTL_MAX_S}.",
            param=f"{param}.seconds",
        )
    return seconds


async def create_client_secret(request: web.Request) -> web.Response:
    """Issue an ephemeral client secret (``ek_…``) for a realtime session (§1.2).

    Body (JSON, both fields optional): ``expires_after`` ``{"anchor": "created_at",
    "seconds": 10..7200}`` (default 600 s) and ``session`` (a realtime session, validated
    like the ``session`` part of ``/calls``). Answers ``200 {"value", "expires_at",
    "session"}``, the session being the effective one, built as for a call.

    Raises:
        ApiError: 401 ``invalid_api_key`` (standard key only); 400 ``invalid_json``,
            ``unknown_parameter``, ``invalid_type``, ``invalid_value`` (also for a
            ``"transcription"`` session, which is not emulated), ``missing_required_parameter``.
    """
    require_api_key(request)
    body = await read_json_object(request)
    for key in body:
        if key not in {"expires_after", "session"}:
            raise _unknown_parameter(key)
    ttl = _secret_ttl(body["expires_after"]) if "expires_after" in body else SECRET_TTL_DEFAULT_S
    posted = _posted_session(body["session"]) if "session" in body else None
    session = initial_session(posted, None)
    value, secret = request.app[CLIENT_SECRETS].issue(session, ttl)
    logger.info("client secret issued model=%s ttl=%ss", session.get("model"), ttl)
    return web.json_response({"value": value, "expires_at": secret.expires_at, "session": session})


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
    return sdp, _posted_session(session)


async def _apply_create_call_faults(request: web.Request) -> None:
    faults = request.app[FAULTS]
    delay_ms = faults.current.create_call_delay_ms
    if delay_ms:
        await asyncio.sleep(delay_ms / 1000)
        transport = request.transport
        if transport is None or transport.is_closing():
            # The client gave up during the delay; do not leave a call nobody can answer.
            raise ApiError(408, "request_timeout", "The client went away before the answer.")
    failure = faults.take_create_call_error()
    if failure is not None:
        raise injected_failure(failure)


async def create_call(request: web.Request) -> web.Response:
    """Create a WebRTC call from an SDP offer; answer ``201`` with the SDP answer.

    Accepts ``multipart/form-data`` (parts ``sdp`` and optional ``session``, with or without
    part content types) or a raw ``application/sdp`` body. The session is, with the standard
    key, the posted one over the defaults (``?model=`` is the fallback model); with a client
    secret, the secret's session with the posted one merged in. The answer has
    ``Content-Type: text/plain; charset=utf-8`` (as recorded from OpenAI and Azure, not
    ``application/sdp``) and ``Location: /v1/realtime/calls/<call_id>`` (no
    ``/openai`` prefix in the ``azure`` flavour either, as Azure answers). On Azure only a
    client secret creates calls, and ``?webrtcfilter=on`` limits the call's data channel to
    :data:`~emulator._flavors.WEBRTC_FILTER_EVENTS`.
    The ``create_call_delay_ms``/``create_call_error`` faults apply after validation.

    Raises:
        ApiError: 401 ``invalid_api_key`` (also an unknown or expired client secret), on
            Azure 401 ``ephemeral_token_required`` for anything but a client secret; 400
            ``invalid_session``/``unknown_parameter``/``invalid_type``; 400 ``invalid_sdp``;
            415 ``unsupported_content_type``; an injected 5xx ``server_error``.
    """
    secret = authorize_call_creation(request)
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
    if session is not None and request.app[FAULTS].current.keep_instructions_on_empty:
        # Recorded real traffic: a call created with "" kept the service's default.
        if session.get("instructions") == "":
            session = {k: v for k, v in session.items() if k != "instructions"}
    if secret is None:
        effective = initial_session(session, request.query.get("model"))
    else:
        effective = secret.session_for_call(session)
    await _apply_create_call_faults(request)
    filtered = (
        request.app[SETTINGS].flavor == "azure"
        and request.query.get("webrtcfilter", "").lower() == "on"
    )
    registry = request.app[CALL_REGISTRY]
    call, answer = await registry.create_call(
        sdp, effective, page_events=WEBRTC_FILTER_EVENTS if filtered else None
    )
    return sdp_answer(answer, call.location)


def sdp_answer(answer: str, location: str) -> web.Response:
    """The ``201`` of ``/calls``: the answer SDP and the call's ``Location``.

    The SDP goes as ``text/plain; charset=utf-8``, the type the real service labels it with
    (docs/protocol.md §0), not ``application/sdp``.
    """
    return web.Response(
        status=201,
        text=answer,
        content_type="text/plain",
        charset="utf-8",
        headers={"Location": location},
    )


async def hangup_call(request: web.Request) -> web.StreamResponse:
    """End a call; ``200`` with an empty JSON object as termination begins.

    The spec says hangup "returns 200 OK when OpenAI begins terminating": the answer is sent
    first, then the sidebands (code 1000) and the peer are closed, so a client may still read
    events after the 200. The ``hangup_answers_after_close`` fault restores the opposite
    order (the 200 once everything is closed).
    The SDK sends an empty body with ``Content-Type: application/json``; the body is ignored.
    Hanging up again after a hangup is a no-op (200); a call that ended any other way (the
    browser left, the provider ended it) is gone, so it gets the 404.

    Raises:
        ApiError: 401 ``invalid_api_key``; 404 ``call_id_not_found`` for an unknown call or
            one ended otherwise than by hangup.
    """
    require_api_key(request)
    call_id = request.match_info["call_id"]
    call = request.app[CALL_REGISTRY].get(call_id)
    if (
        call is None
        or call.media == "websocket"  # a WebSocket session is no call: its socket ends it
        or (call.ended and call.end_reason != "hangup")
    ):
        raise call_not_found(call_id)
    faults = request.app[FAULTS]
    failure = faults.take_hangup_error()
    if failure is not None:
        raise injected_failure(failure)
    if faults.current.hangup_answers_after_close:
        await call.end("hangup")
        logger.info("call %s: hangup answered", call.call_id)
        return web.json_response({})
    response = web.json_response({})
    await response.prepare(request)
    await response.write_eof()
    logger.info("call %s: hangup answered", call.call_id)
    # The answer is on the wire; an error from here on can only be logged.
    try:
        await call.end("hangup")
    except Exception:
        logger.exception("call %s: ending after hangup failed", call.call_id)
    return response


# ---- phone calls (SIP) ------------------------------------------------------------------

SIP_STATUS_MIN: Final = 400
SIP_STATUS_MAX: Final = 699
MAX_TARGET_URI_CHARS: Final = 2048


def _sip_call(request: web.Request, *, ringing_only: bool) -> SipCall:
    """The phone call named by the path: ringing (``ringing_only``) or live, else the 404."""
    call_id = request.match_info["call_id"]
    call = request.app[CALL_REGISTRY].get(call_id)
    if not isinstance(call, SipCall) or call.ended or (ringing_only and call.accepted):
        raise call_not_found(call_id)
    return call


async def accept_call(request: web.Request) -> web.Response:
    """``POST /v1/realtime/calls/{call_id}/accept``: answer a ringing phone call.

    The body is the session config (``type: "realtime"`` required), checked as the
    ``session`` part of ``/calls``; the call becomes live with it and sidebands may attach
    with ``?call_id=``. Answers ``200`` with no body. The ``accept_delay_ms`` fault delays
    the answer; ``accept_not_found`` then answers the 404 instead (as reported at the real
    service, docs/protocol.md §0 "SIP").

    Raises:
        ApiError: 401; 400 ``invalid_json``/``missing_required_parameter``/
            ``invalid_value``/``unknown_parameter``/``invalid_type``; 404
            ``call_id_not_found`` for an unknown call, one that is no phone call, no longer
            rings (answered, rejected, given up on) or ended.
    """
    require_api_key(request)
    body = await read_json_object(request)
    session = initial_session(_posted_session(body), None)
    faults = request.app[FAULTS]
    delay_ms = faults.current.accept_delay_ms
    if delay_ms:
        await asyncio.sleep(delay_ms / 1000)
    if faults.current.accept_not_found:
        raise call_not_found(request.match_info["call_id"])
    # Looked up after the delay: the call may have stopped ringing meanwhile.
    call = _sip_call(request, ringing_only=True)
    call.accept(session)
    return web.Response(status=200)


async def reject_call(request: web.Request) -> web.Response:
    """``POST /v1/realtime/calls/{call_id}/reject``: decline a ringing phone call.

    Body ``{"status_code": 486}`` (optional; 400–699, default 603 Decline). The call ends
    (``end_reason`` ``"rejected"``, ``reject_status_code`` recorded). Answers ``200``, no body.

    Raises:
        ApiError: 401; 400 for a bad body; 404 ``call_id_not_found`` unless the call rings.
    """
    require_api_key(request)
    body = await read_json_object(request)
    for key in body:
        if key != "status_code":
            raise _unknown_parameter(key)
    status_code = body.get("status_code", 603)
    if isinstance(status_code, bool) or not isinstance(status_code, int):
        raise ApiError(
            400,
            "invalid_type",
            "Invalid type for 'status_code': expected an integer.",
            param="status_code",
        )
    if not SIP_STATUS_MIN <= status_code <= SIP_STATUS_MAX:
        raise ApiError(
            400,
            "invalid_value",
            f"Invalid value for 'status_code': expected a SIP final failure status "
            f"({SIP_STATUS_MIN}-{SIP_STATUS_MAX}).",
            param="status_code",
        )
    call = _sip_call(request, ringing_only=True)
    call.reject_status_code = status_code
    await call.end("rejected")
    logger.info("call %s: rejected status=%s", call.call_id, status_code)
    return web.Response(status=200)


async def refer_call(request: web.Request) -> web.StreamResponse:
    """``POST /v1/realtime/calls/{call_id}/refer``: transfer a phone call.

    Body ``{"target_uri": "tel:+1…" | "sip:…" | "sips:…"}``, ringing or live call. The
    target is recorded (``referred_to``) and, as the real service hands the SIP leg to the
    trunk and is out of the call, the call then ends (``end_reason`` ``"referred"``,
    sidebands closed with 1000), after the ``200`` (no body) is sent, as hangup does.

    Raises:
        ApiError: 401; 400 for a missing or malformed ``target_uri``; 404
            ``call_id_not_found`` for an unknown or ended call, or one that is no phone call.
    """
    require_api_key(request)
    body = await read_json_object(request)
    for key in body:
        if key != "target_uri":
            raise _unknown_parameter(key)
    if "target_uri" not in body:
        raise ApiError(
            400,
            "missing_required_parameter",
            "Missing required parameter: 'target_uri'.",
            param="target_uri",
        )
    target = body["target_uri"]
    if (
        not isinstance(target, str)
        or not target.startswith(("tel:", "sip:", "sips:"))
        or len(target) > MAX_TARGET_URI_CHARS
        or any(ch in target for ch in "\r\n<> ")
    ):
        raise ApiError(
            400,
            "invalid_value",
            "Invalid value for 'target_uri': expected a tel:, sip: or sips: URI.",
            param="target_uri",
        )
    call = _sip_call(request, ringing_only=False)
    call.referred_to = target
    response = web.Response(status=200)
    await response.prepare(request)
    await response.write_eof()
    logger.info("call %s: referred", call.call_id)
    try:
        await call.end("referred")
    except Exception:
        logger.exception("call %s: ending after refer failed", call.call_id)
    return response
