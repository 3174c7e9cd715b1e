"""The ``/_emulator/…`` admin routes: inspect calls, act on them, and switch faults.

None of these is an OpenAI route. All need the standard key, take and return JSON, and
fail with the provider's error envelope.
"""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

from ._auth import require_api_key
from ._keys import CALL_REGISTRY, FAULTS
from .calls import Call
from .errors import ApiError
from .faults import FaultValueError
from .signaling import read_json_object

MAX_REASON_CHARS: Final = 200


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
    router.add_get("/_emulator/faults", get_faults)
    router.add_post("/_emulator/faults", update_faults)
    router.add_delete("/_emulator/faults", reset_faults)
