"""The ``/_emulator/…`` admin routes: inspect calls, act on them, and switch faults.

None of these is an OpenAI route. All need the standard key, take and return JSON, and
fail with the provider's error envelope.

``/_emulator/bench/v1`` is a second provider base URL for load tests (``bench/``): the
OpenAI routes again, where an offer can ask for a call without a WebRTC peer
(:class:`SidebandOnlyCall`), so thousands of calls cost the emulator little.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any, Final

from aiohttp import web

from ._auth import require_api_key
from ._ids import new_call_id
from ._keys import CALL_REGISTRY, FAULTS, SETTINGS
from ._session import initial_session
from ._transcription import MAX_HEARD_CHARS, MAX_HEARD_QUEUED, Heard, Hearing, Misheard
from .calls import Call
from .errors import ApiError, InvalidSdpError
from .faults import FaultValueError
from .peer import MAX_SDP_BYTES, validate_offer
from .settings import EmulatorSettings
from .sideband import sideband_handler

# The /v1 route's multipart parser: the bench route takes the same parts with the same checks.
from .signaling import _read_multipart, hangup_call, read_json_object, sdp_answer

logger = logging.getLogger(__name__)

MAX_REASON_CHARS: Final = 200
MAX_FAILURE_CODE_CHARS: Final = 64


def _call(request: web.Request) -> Call:
    call = request.app[CALL_REGISTRY].get(request.match_info["call_id"])
    if call is None:
        raise ApiError(404, "call_id_not_found", "No such call.")
    return call


def _check_keys(body: dict[str, Any], allowed: set[str]) -> None:
    for key in body:
        if key not in allowed:
            raise ApiError(400, "unknown_parameter", f"Unknown parameter: '{key}'.", param=key)


def _close_code(value: Any, param: str) -> int:
    # Codes a peer may put in a close frame (RFC 6455 §7.4): not 1004-1006 or 1015.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(
            400, "invalid_type", f"Invalid type for '{param}': expected an integer.", param=param
        )
    if not (1000 <= value <= 1003 or 1007 <= value <= 1014 or 3000 <= value <= 4999):
        raise ApiError(
            400,
            "invalid_value",
            f"Invalid value for '{param}': a close code a server may send (1000-1003, "
            "1007-1014, 3000-4999).",
            param=param,
        )
    return value


async def inspect_call(request: web.Request) -> web.Response:
    """``GET /_emulator/calls/{call_id}``: the recorder's view of one call.

    Raises:
        ApiError: 401 for a bad key, 404 ``call_id_not_found`` for an unknown call.
    """
    require_api_key(request)
    return web.json_response(_call(request).snapshot())


async def drop_sidebands(request: web.Request) -> web.Response:
    """``POST /_emulator/calls/{call_id}/drop-sidebands``: cut every sideband of a call.

    Body ``{"mode": "abort"}`` aborts each TCP transport (clients see 1006, no close frame);
    ``{"mode": "close", "code": 1011}`` sends a close frame with ``code`` (default 1000)
    after what is already queued. The call goes on. Answers ``{"call_id", "dropped": N}``.

    Raises:
        ApiError: 401; 404 ``call_id_not_found``; 400 for a bad body.
    """
    require_api_key(request)
    call = _call(request)
    body = await read_json_object(request)
    _check_keys(body, {"mode", "code"})
    mode = body.get("mode")
    if mode not in ("abort", "close"):
        raise ApiError(
            400,
            "invalid_value" if "mode" in body else "missing_required_parameter",
            "'mode' must be 'abort' or 'close'.",
            param="mode",
        )
    if mode == "abort" and "code" in body:
        raise ApiError(400, "invalid_value", "'code' applies only to mode 'close'.", param="code")
    code = _close_code(body.get("code", 1000), "code")
    links = call.sidebands
    for link in links:
        if mode == "abort":
            link.request_abort()
        else:
            link.request_close(code)
    return web.json_response({"call_id": call.call_id, "dropped": len(links)})


async def end_call(request: web.Request) -> web.Response:
    """``POST /_emulator/calls/{call_id}/end``: end a call the way the provider would.

    Body (both optional) ``{"reason": "max_duration", "close_code": 1001}``: sidebands are
    closed with ``close_code`` (default 1000), the peer is closed and ``end_reason`` is
    ``reason`` (default ``"provider_ended"``). Afterwards the call is gone: sideband
    handshakes and hangup get 404 ``call_id_not_found``. Ending an ended call changes
    nothing. Answers ``{"call_id", "ended": true, "end_reason"}`` once the call has ended.

    Raises:
        ApiError: 401; 404 ``call_id_not_found``; 400 for a bad body.
    """
    require_api_key(request)
    call = _call(request)
    body = await read_json_object(request)
    _check_keys(body, {"reason", "close_code"})
    reason = body.get("reason", "provider_ended")
    if not isinstance(reason, str) or not 0 < len(reason) <= MAX_REASON_CHARS:
        raise ApiError(
            400,
            "invalid_value",
            f"'reason' must be a string of 1 to {MAX_REASON_CHARS} characters.",
            param="reason",
        )
    close_code = _close_code(body.get("close_code", 1000), "close_code")
    await call.end(reason, close_code=close_code)
    return web.json_response(
        {"call_id": call.call_id, "ended": True, "end_reason": call.end_reason}
    )


def _heard_texts(value: Any) -> list[Hearing]:
    texts = value if isinstance(value, list) else [value]
    if not texts:
        raise ApiError(400, "invalid_value", "'text' must not be an empty list.", param="text")
    entries: list[Hearing] = []
    for index, text in enumerate(texts):
        param = f"text[{index}]" if isinstance(value, list) else "text"
        if not isinstance(text, str):
            raise ApiError(
                400, "invalid_type", f"Invalid type for '{param}': expected a string.", param=param
            )
        if not text.strip() or len(text) > MAX_HEARD_CHARS:
            raise ApiError(
                400,
                "invalid_value",
                f"'{param}' must be a non-blank string of at most {MAX_HEARD_CHARS} characters.",
                param=param,
            )
        entries.append(Heard(text))
    return entries


def _heard_failure(value: Any) -> Misheard:
    if value is True:
        return Misheard()
    if not isinstance(value, dict):
        raise ApiError(
            400,
            "invalid_type",
            "Invalid type for 'fail': expected true or an object.",
            param="fail",
        )
    _check_keys({f"fail.{key}": None for key in value}, {"fail.code"})
    code = value.get("code")
    if code is not None and (
        not isinstance(code, str) or not 0 < len(code) <= MAX_FAILURE_CODE_CHARS
    ):
        raise ApiError(
            400,
            "invalid_value",
            f"'fail.code' must be null or a string of 1 to {MAX_FAILURE_CODE_CHARS} characters.",
            param="fail.code",
        )
    return Misheard(code)


async def queue_heard(request: web.Request) -> web.Response:
    """``POST /_emulator/calls/{call_id}/heard``: what the call's next audio turns say.

    Body ``{"text": "..."}`` or ``{"text": ["...", "..."]}`` queues one entry per text;
    ``{"fail": true}`` or ``{"fail": {"code": "DeploymentNotFound"}}`` queues a turn whose
    transcription fails (``error.code`` null unless given). Each committed user audio turn
    takes the oldest entry (else ``EmulatorSettings.heard_default``); a session that
    transcribes reports it. Answers ``{"call_id", "queued": N}`` (entries now waiting).

    Raises:
        ApiError: 401; 404 ``call_id_not_found``; 400 for a bad body or a full queue.
    """
    require_api_key(request)
    call = _call(request)
    body = await read_json_object(request)
    _check_keys(body, {"text", "fail"})
    if ("text" in body) == ("fail" in body):
        raise ApiError(
            400,
            "missing_required_parameter" if not body else "invalid_value",
            "Give exactly one of 'text' and 'fail'.",
            param="text",
        )
    entries = _heard_texts(body["text"]) if "text" in body else [_heard_failure(body["fail"])]
    if len(call.heard) + len(entries) > MAX_HEARD_QUEUED:
        raise ApiError(
            400,
            "invalid_value",
            f"At most {MAX_HEARD_QUEUED} turns may be queued for a call.",
            param="text" if "text" in body else "fail",
        )
    queued = call.heard.extend(entries)
    return web.json_response({"call_id": call.call_id, "queued": queued})


async def get_faults(request: web.Request) -> web.Response:
    """``GET /_emulator/faults``: the switches in force now."""
    require_api_key(request)
    return web.json_response(request.app[FAULTS].current.to_json())


async def update_faults(request: web.Request) -> web.Response:
    """``POST /_emulator/faults``: merge the given switches; answer the new state.

    Raises:
        ApiError: 401; 400 ``unknown_parameter``/``invalid_type``/``invalid_value`` (then
            nothing changes).
    """
    require_api_key(request)
    body = await read_json_object(request)
    try:
        current = request.app[FAULTS].update(body)
    except FaultValueError as exc:
        raise ApiError(400, exc.code, exc.message, param=exc.param) from exc
    return web.json_response(current.to_json())


async def reset_faults(request: web.Request) -> web.Response:
    """``DELETE /_emulator/faults``: back to ``EmulatorSettings.faults``; answer that state."""
    require_api_key(request)
    return web.json_response(request.app[FAULTS].reset().to_json())


def add_admin_routes(router: web.UrlDispatcher) -> None:
    """Register every ``/_emulator/…`` route on ``router``."""
    router.add_get("/_emulator/calls/{call_id}", inspect_call)
    router.add_post("/_emulator/calls/{call_id}/drop-sidebands", drop_sidebands)
    router.add_post("/_emulator/calls/{call_id}/end", end_call)
    router.add_post("/_emulator/calls/{call_id}/heard", queue_heard)
    router.add_get("/_emulator/faults", get_faults)
    router.add_post("/_emulator/faults", update_faults)
    router.add_delete("/_emulator/faults", reset_faults)
    add_bench_routes(router)


# ---- load-test provider base URL (bench/) ---------------------------------------------

BENCH_BASE_PATH: Final = "/_emulator/bench/v1"
"""A provider base URL for load tests (``bench/``): the same calls, sideband and hangup routes
as ``/v1``, under the admin prefix (standard key only). Offers whose SDP session name is
:data:`SIDEBAND_ONLY_SESSION_NAME` get a :class:`SidebandOnlyCall`; any other offer gets a
normal WebRTC call, exactly as ``POST /v1/realtime/calls`` would (without its faults)."""
SIDEBAND_ONLY_SESSION_NAME: Final = "emulator-bench-sideband-only"
"""Put ``s=emulator-bench-sideband-only`` in an offer to ask for a call without a peer."""
SIDEBAND_ONLY_RECORDED: Final = 200
"""Events each way a sideband-only call keeps in its recorder (a normal call keeps 50 000):
thousands of long-lived benchmark calls must not hold millions of event dicts."""

# A fixed answer nobody can connect to: the broker relays it to the "browser" verbatim, and
# a sideband-only call never negotiates media.
_SIDEBAND_ONLY_ANSWER: Final = (
    "v=0\r\n"
    "o=- 0 0 IN IP4 127.0.0.1\r\n"
    f"s={SIDEBAND_ONLY_SESSION_NAME}\r\n"
    "t=0 0\r\n"
    "a=group:BUNDLE 0 1\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
    "c=IN IP4 0.0.0.0\r\n"
    "a=mid:0\r\n"
    "a=sendrecv\r\n"
    "a=rtpmap:111 opus/48000/2\r\n"
    "a=ice-ufrag:bnch\r\n"
    "a=ice-pwd:benchbenchbenchbenchbe\r\n"
    "a=fingerprint:sha-256 " + ":".join(["00"] * 32) + "\r\n"
    "a=setup:active\r\n"
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"
    "c=IN IP4 0.0.0.0\r\n"
    "a=mid:1\r\n"
    "a=sctp-port:5000\r\n"
    "a=ice-ufrag:bnch\r\n"
    "a=ice-pwd:benchbenchbenchbenchbe\r\n"
    "a=fingerprint:sha-256 " + ":".join(["00"] * 32) + "\r\n"
    "a=setup:active\r\n"
)


class SidebandOnlyCall(Call):
    """A call without a WebRTC peer, for load tests of a sideband client (``bench/``).

    Everything but media behaves as in a normal call: client events from sidebands (or
    :meth:`Call.submit` in-process, as if from the data channel), the scripted model,
    fan-out to every sideband, hangup and the admin routes. Nothing ever connects to the
    peer, so the call never ends by itself (no ``peer_closed``): hang it up or end it. Its
    recorder keeps only the newest :data:`SIDEBAND_ONLY_RECORDED` events each way.
    """

    def __init__(self, call_id: str, session: dict[str, Any], settings: EmulatorSettings) -> None:
        super().__init__(call_id, session, settings)
        self.sent = deque(maxlen=SIDEBAND_ONLY_RECORDED)
        self.received = deque(maxlen=SIDEBAND_ONLY_RECORDED)

    async def start(self, offer_sdp: str) -> str:
        """Check the offer like a normal call does, start the worker; return a fixed answer.

        Raises:
            InvalidSdpError: the offer is unusable.
        """
        validate_offer(offer_sdp)
        self._spawn(self._work(), f"call-worker:{self.call_id}")
        return _SIDEBAND_ONLY_ANSWER


def is_sideband_only_offer(sdp: str) -> bool:
    """Whether an offer asks for a :class:`SidebandOnlyCall` (its ``s=`` line)."""
    return any(line.strip() == f"s={SIDEBAND_ONLY_SESSION_NAME}" for line in sdp.splitlines()[:8])


async def create_bench_call(request: web.Request) -> web.Response:
    """``POST /_emulator/bench/v1/realtime/calls``: create a call, maybe without a peer.

    The standard key and a ``multipart/form-data`` body (parts ``sdp`` and ``session``, as
    the unified ``/v1`` route) or a raw ``application/sdp`` body. Answers like ``/v1``:
    ``201``, the SDP answer, ``Location: /v1/realtime/calls/<call_id>``. Fault switches do
    not apply here.

    Raises:
        ApiError: 401; 400 ``invalid_session``/``unknown_parameter``/``invalid_sdp``; 415.
    """
    require_api_key(request)
    if request.content_type == "multipart/form-data":
        sdp, posted = await _read_multipart(request)
    elif request.content_type == "application/sdp":
        body = await request.read()
        if len(body) > MAX_SDP_BYTES:
            raise InvalidSdpError("SDP offer too large.")
        sdp, posted = body.decode("utf-8", errors="replace"), None
    else:
        raise ApiError(
            415,
            "unsupported_content_type",
            "Send the offer as application/sdp or multipart/form-data.",
        )
    if not sdp or not sdp.strip():
        raise InvalidSdpError("Missing SDP offer.")
    session = initial_session(posted, request.query.get("model"))
    registry = request.app[CALL_REGISTRY]
    if is_sideband_only_offer(sdp):
        settings = request.app[SETTINGS]
        call: Call = SidebandOnlyCall(new_call_id(settings.flavor), session, settings)
        try:
            answer = await call.start(sdp)
        except BaseException:
            await call.end("setup_failed")
            raise
        # CallRegistry only registers the calls it negotiates itself; this one it could not
        # (no peer), so it is added the way create_call adds its own.
        registry._calls[call.call_id] = call
        registry._forget_old_calls()
        logger.info("call %s created (sideband only) model=%s", call.call_id, session.get("model"))
    else:
        call, answer = await registry.create_call(sdp, session)
    return sdp_answer(answer, call.location)


def add_bench_routes(router: web.UrlDispatcher) -> None:
    """Register the provider routes under :data:`BENCH_BASE_PATH`."""
    router.add_post(f"{BENCH_BASE_PATH}/realtime/calls", create_bench_call)
    router.add_post(f"{BENCH_BASE_PATH}/realtime/calls/{{call_id}}/hangup", hangup_call)
    router.add_get(f"{BENCH_BASE_PATH}/realtime", sideband_handler)
