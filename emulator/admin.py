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
from yarl import URL

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
from .sip import DTMF_DIGITS, SipCall, signing_key, sip_headers

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
    add_sip_routes(router)
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


# ---- phone calls (SIP) -----------------------------------------------------------------

MAX_NUMBER_CHARS: Final = 64
MAX_SIP_HEADERS: Final = 32
MAX_SIP_HEADER_CHARS: Final = 1024
MAX_SAY_CHARS: Final = 2000
MAX_DTMF_DIGITS: Final = 32


def _number(body: dict[str, Any], param: str) -> str:
    value = body.get(param)
    if param not in body:
        raise ApiError(
            400,
            "missing_required_parameter",
            f"Missing required parameter: '{param}'.",
            param=param,
        )
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= MAX_NUMBER_CHARS
        or any(ch in value for ch in '<>"@;\r\n ')
    ):
        raise ApiError(
            400,
            "invalid_value",
            f"'{param}' must be a phone number or SIP user part of 1 to {MAX_NUMBER_CHARS} "
            "characters.",
            param=param,
        )
    return value


def _extra_headers(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or len(value) > MAX_SIP_HEADERS:
        raise ApiError(
            400,
            "invalid_type",
            f"'headers' must be a list of at most {MAX_SIP_HEADERS} {{name, value}} objects.",
            param="headers",
        )
    headers: list[dict[str, str]] = []
    for index, header in enumerate(value):
        param = f"headers[{index}]"
        if (
            not isinstance(header, dict)
            or set(header) != {"name", "value"}
            or not all(
                isinstance(header[key], str)
                and 0 < len(header[key]) <= MAX_SIP_HEADER_CHARS
                and "\r" not in header[key]
                and "\n" not in header[key]
                for key in ("name", "value")
            )
        ):
            raise ApiError(
                400,
                "invalid_value",
                f'\'{param}\' must be {{"name": str, "value": str}} (one line each).',
                param=param,
            )
        headers.append({"name": header["name"], "value": header["value"]})
    return headers


def _webhook_url(value: Any, param: str) -> str:
    url = URL(value) if isinstance(value, str) else None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise ApiError(400, "invalid_value", f"'{param}' must be an http(s) URL.", param=param)
    return str(value)


def _sip_call_of(request: web.Request) -> SipCall:
    call = _call(request)
    if not isinstance(call, SipCall):
        raise ApiError(404, "call_id_not_found", "No such phone call.")
    return call


def _live_sip_call(request: web.Request) -> SipCall:
    call = _sip_call_of(request)
    if call.state != "live":
        raise ApiError(
            409, "call_not_live", f"The phone call is {call.state}, not live (answered)."
        )
    return call


async def ring_sip_call(request: web.Request) -> web.Response:
    """``POST /_emulator/sip/ring``: a phone call rings; its webhook is delivered.

    Body ``{"to": "+15551234567", "from": "+14445550000", "headers"?: [{"name", "value"}],
    "webhook_url"?: "http://…", "webhook_secret"?: "whsec_…"}``. Creates a ringing
    :class:`~emulator.sip.SipCall` (``rtc_u2_…``) whose SIP headers are ``From``, ``To``
    (``<sip:{to}@sip.api.openai.com>``), ``Call-ID``, ``CSeq``, ``Contact`` and then
    ``headers``; posts its signed ``realtime.call.incoming`` to ``webhook_url`` (default
    ``EmulatorSettings.sip_webhook_url``) with ``webhook_secret`` (default the setting) and
    answers once the receiver did: ``{"call_id", "webhook_id", "delivery_status",
    "sip_headers"}``, ``delivery_status`` being the receiver's HTTP status, or
    ``"not_configured"`` (no URL), ``"timeout"``, ``"unreachable"``. Unanswered, the call
    stops ringing after ``sip_ring_timeout``.

    Raises:
        ApiError: 401; 400 for a bad body, or a URL without a secret.
    """
    require_api_key(request)
    settings = request.app[SETTINGS]
    body = await read_json_object(request)
    _check_keys(body, {"to", "from", "headers", "webhook_url", "webhook_secret"})
    to = _number(body, "to")
    from_ = _number(body, "from")
    extra = _extra_headers(body["headers"]) if "headers" in body else []
    url = settings.sip_webhook_url
    if body.get("webhook_url") is not None:
        url = _webhook_url(body["webhook_url"], "webhook_url")
    secret = settings.sip_webhook_secret
    if body.get("webhook_secret") is not None:
        secret = body["webhook_secret"]
        try:
            signing_key(secret if isinstance(secret, str) else "")
        except ValueError:
            raise ApiError(
                400,
                "invalid_value",
                "'webhook_secret' must be whsec_ followed by base64.",
                param="webhook_secret",
            ) from None
    if url is not None and secret is None:
        raise ApiError(
            400,
            "invalid_request",
            "No webhook secret: set sip_webhook_secret or give 'webhook_secret'.",
            param="webhook_secret",
        )
    call = SipCall(
        new_call_id(settings.flavor),
        sip_headers(to, from_, extra),
        settings,
        request.app[FAULTS],
        webhook_url=url,
        webhook_secret=secret,
    )
    request.app[CALL_REGISTRY].add(call)
    call.ring(settings.sip_ring_timeout)
    logger.info("call %s: ringing", call.call_id)
    status = await call.webhook.send()
    return web.json_response(
        {
            "call_id": call.call_id,
            "webhook_id": call.webhook.webhook_id,
            "delivery_status": status,
            "sip_headers": call.sip_headers,
        }
    )


async def redeliver_sip_webhook(request: web.Request) -> web.Response:
    """``POST /_emulator/sip/calls/{call_id}/redeliver``: post the call's webhook again.

    The same ``webhook-id`` and body (a repeated delivery, as the real service may send),
    signed anew at ``timestamp`` (optional Unix seconds; default now: an old one makes a
    stale delivery) to ``webhook_url`` (optional; default the ring's). Works in any state.
    Answers ``{"call_id", "webhook_id", "delivery_status"}``.

    Raises:
        ApiError: 401; 404 ``call_id_not_found`` (also for a call that is no phone call);
            400 for a bad body.
    """
    require_api_key(request)
    call = _sip_call_of(request)
    body = await read_json_object(request)
    _check_keys(body, {"timestamp", "webhook_url"})
    timestamp = body.get("timestamp")
    if timestamp is not None and (isinstance(timestamp, bool) or not isinstance(timestamp, int)):
        raise ApiError(
            400,
            "invalid_type",
            "Invalid type for 'timestamp': expected an integer.",
            param="timestamp",
        )
    url = None
    if body.get("webhook_url") is not None:
        url = _webhook_url(body["webhook_url"], "webhook_url")
    if call.webhook.secret is None:
        raise ApiError(400, "invalid_request", "The call's webhook has no secret.")
    status = await call.webhook.send(timestamp=timestamp, url=url)
    return web.json_response(
        {"call_id": call.call_id, "webhook_id": call.webhook.webhook_id, "delivery_status": status}
    )


async def say_on_call(request: web.Request) -> web.Response:
    """``POST /_emulator/calls/{call_id}/say``: the phone caller says ``text``.

    Body ``{"text": "..."}``. Speech-like audio and then a pause enter the live call's input
    path (:meth:`~emulator.sip.SipCall.say`): under server VAD a committed user audio turn
    (``speech_started``/``stopped``, ``committed``, the item; its transcription is ``text``
    when the session transcribes) answered as ``turn_detection`` says; without turn
    detection the audio waits in the input buffer. The model understands ``text`` either
    way. Answers ``{"call_id", "queued"}`` (turns still waiting for a commit).

    Raises:
        ApiError: 401; 404 ``call_id_not_found`` (or no phone call); 409 ``call_not_live``;
            400 for a bad body.
    """
    require_api_key(request)
    call = _live_sip_call(request)
    body = await read_json_object(request)
    _check_keys(body, {"text"})
    text = body.get("text")
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_SAY_CHARS:
        raise ApiError(
            400,
            "invalid_value",
            f"'text' must be a non-blank string of at most {MAX_SAY_CHARS} characters.",
            param="text",
        )
    if len(call.heard) >= MAX_HEARD_QUEUED:
        raise ApiError(400, "invalid_value", "Too many turns wait for a commit.", param="text")
    call.say(text)
    return web.json_response({"call_id": call.call_id, "queued": len(call.heard)})


async def press_dtmf(request: web.Request) -> web.Response:
    """``POST /_emulator/calls/{call_id}/dtmf``: the phone caller presses keys.

    Body ``{"digits": "12#"}`` (``0-9``, ``*``, ``#``, ``A-D``; up to 32): one
    ``input_audio_buffer.dtmf_event_received`` ``{type, event, received_at}`` (no
    ``event_id``) per digit, in order, to the call's sidebands. Answers
    ``{"call_id", "sent": N}``.

    Raises:
        ApiError: 401; 404; 409 ``call_not_live``; 400 for a bad body.
    """
    require_api_key(request)
    call = _live_sip_call(request)
    body = await read_json_object(request)
    _check_keys(body, {"digits"})
    digits = body.get("digits")
    if (
        not isinstance(digits, str)
        or not 0 < len(digits) <= MAX_DTMF_DIGITS
        or not set(digits) <= DTMF_DIGITS
    ):
        raise ApiError(
            400,
            "invalid_value",
            f"'digits' must be 1 to {MAX_DTMF_DIGITS} of 0-9, *, #, A-D.",
            param="digits",
        )
    call.press(digits)
    return web.json_response({"call_id": call.call_id, "sent": len(digits)})


async def caller_hangup(request: web.Request) -> web.Response:
    """``POST /_emulator/calls/{call_id}/caller_hangup``: the phone caller hangs up.

    The call ends (``end_reason`` ``"caller_hangup"``; a ringing one too) and its sidebands'
    transports are cut without a close frame (clients see 1006), as a SIP caller's hangup
    has been seen to close the sideband (docs/protocol.md §0). Answers
    ``{"call_id", "ended": true, "end_reason"}`` once it ended.

    Raises:
        ApiError: 401; 404 ``call_id_not_found`` (or no phone call); 409 ``call_not_live``
            for an ended call.
    """
    require_api_key(request)
    call = _sip_call_of(request)
    if call.ended:
        raise ApiError(409, "call_not_live", "The phone call has ended.")
    await call.end("caller_hangup", abort=True)
    return web.json_response(
        {"call_id": call.call_id, "ended": True, "end_reason": call.end_reason}
    )


def add_sip_routes(router: web.UrlDispatcher) -> None:
    """Register the phone-call admin routes."""
    router.add_post("/_emulator/sip/ring", ring_sip_call)
    router.add_post("/_emulator/sip/calls/{call_id}/redeliver", redeliver_sip_webhook)
    router.add_post("/_emulator/calls/{call_id}/say", say_on_call)
    router.add_post("/_emulator/calls/{call_id}/dtmf", press_dtmf)
    router.add_post("/_emulator/calls/{call_id}/caller_hangup", caller_hangup)
