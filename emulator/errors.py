"""Errors raised inside the emulator and their OpenAI wire shapes.

Hierarchy::

    EmulatorError
    ├── ApiError            an HTTP failure, rendered once by the app's error middleware
    │   └── InvalidSdpError     400 ``invalid_sdp``
    └── ClientEventError    a rejected client event, sent back as a realtime ``error`` event

Both render the OpenAI envelope ``{"error": {"message", "type", "code", "param"}}``
(docs/protocol.md §1.1 "Errors", §3.4 ``error``).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from .faults import CallErrorFault

INVALID_REQUEST = "invalid_request_error"


class EmulatorError(Exception):
    """Root of every error the emulator raises on purpose."""


class ApiError(EmulatorError):
    """An HTTP request the emulator refuses, with the status and envelope to send.

    Args:
        status: HTTP status code.
        code: OpenAI error code, e.g. ``invalid_api_key``.
        message: human-readable message.
        type_: OpenAI error type.
        param: the offending parameter; the sideband 404 uses ``""`` like the real service.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        type_: str = INVALID_REQUEST,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.type = type_
        self.param = param

    def body(self) -> dict[str, Any]:
        return error_envelope(self.message, self.code, type_=self.type, param=self.param)

    def to_response(self) -> web.Response:
        return web.json_response(self.body(), status=self.status, dumps=json.dumps)


class InvalidSdpError(ApiError):
    """The SDP offer is missing, unparseable or not an offer."""

    def __init__(self, message: str) -> None:
        super().__init__(400, "invalid_sdp", message)


class ClientEventError(EmulatorError):
    """A client event the emulator rejects; becomes an ``error`` server event.

    Args:
        code: OpenAI error code, e.g. ``conversation_already_has_active_response``.
        message: human-readable message.
        param: the offending parameter, if any.
        type_: OpenAI error type.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        param: str | None = None,
        type_: str = INVALID_REQUEST,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.type = type_


def error_envelope(
    message: str, code: str, *, type_: str = INVALID_REQUEST, param: str | None = None
) -> dict[str, Any]:
    """Return the OpenAI HTTP error body."""
    return {"error": {"message": message, "type": type_, "code": code, "param": param}}


def call_not_found(call_id: str | None) -> ApiError:
    """The exact 404 the real sideband handshake returns (docs/protocol.md §2.1)."""
    del call_id  # the real message does not echo the id
    return ApiError(404, "call_id_not_found", "No session found for the provided call_id", param="")


def injected_failure(fault: CallErrorFault) -> ApiError:
    """The 5xx a fault switch injects, in the provider's ``server_error`` shape."""
    return ApiError(
        fault.status,
        "server_error",
        "The server had an error while processing your request. (emulator fault injection)",
        type_="server_error",
    )
