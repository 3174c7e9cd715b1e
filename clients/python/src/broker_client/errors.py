"""The broker's RFC 9457 problems as typed exceptions, each with the broker's stable ``code``.

The broker answers every error as ``application/problem+json``: ``{type, title, status,
detail, code}`` plus fields of its own (``retry_after``, ``errors``, ``param``, …). The class
follows the status; the ``code`` says exactly what went wrong and is what a program branches
on (the README lists them all).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

UNEXPECTED_RESPONSE: Final = "unexpected_response"
"""The code of an answer that was not the broker's problem JSON (a proxy's page, say)."""
BROKER_UNREACHABLE: Final = "broker_unreachable"


class BrokerError(Exception):
    """An error answer from the broker (or no answer at all: :class:`BrokerUnreachableError`).

    Attributes:
        status: the HTTP status (0 when no answer arrived).
        code: the broker's stable error code.
        detail: the broker's sentence about this occurrence.
        problem: the whole problem object, with any extra fields.
    """

    def __init__(
        self, status: int, code: str, detail: str, problem: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {detail}" if status else f"{code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.problem: dict[str, Any] = dict(problem or {})


class BrokerUnreachableError(BrokerError):
    """The request got no HTTP answer (connection refused, timeout, TLS failure)."""

    def __init__(self, detail: str) -> None:
        super().__init__(0, BROKER_UNREACHABLE, detail)


class BadRequestError(BrokerError):
    """400: malformed input (``invalid_json``, ``invalid_query`` with ``param``, …)."""

    @property
    def param(self) -> str | None:
        value = self.problem.get("param")
        return value if isinstance(value, str) else None


class AuthenticationError(BrokerError):
    """401: the API key is missing, unknown or revoked (``invalid_api_key``, …)."""


class PermissionDeniedError(BrokerError):
    """403: a valid key without the scope or the tool grant, or the wrong session.

    ``insufficient_scope``; ``tool_not_granted`` (with ``tools``); ``token_session_mismatch``.
    """


class NotFoundError(BrokerError):
    """404: ``session_not_found``, ``key_not_found``, ``unknown_tool``."""


class ConflictError(BrokerError):
    """409: the session is not in a state that allows this (``session_not_live``, …)."""


class ValidationError(BrokerError):
    """422: well-formed but not acceptable (``unknown_tool``, ``invalid_request``, …)."""

    @property
    def errors(self) -> list[dict[str, Any]]:
        """``invalid_request``'s ``[{loc, msg}]``; empty for the other codes."""
        value = self.problem.get("errors")
        return [e for e in value if isinstance(e, dict)] if isinstance(value, list) else []


class RateLimitedError(BrokerError):
    """429: too many requests; try again after :attr:`retry_after` seconds."""

    @property
    def retry_after(self) -> float | None:
        value = self.problem.get("retry_after")
        return float(value) if isinstance(value, int | float) else None


class UpstreamError(BrokerError):
    """502 / 504: the voice provider failed, was unreachable, or timed out."""


class UnavailableError(BrokerError):
    """503: this broker is draining, overloaded or without its database; retry elsewhere."""

    @property
    def retry_after(self) -> float | None:
        value = self.problem.get("retry_after")
        return float(value) if isinstance(value, int | float) else None


_BY_STATUS: Final[dict[int, type[BrokerError]]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: ValidationError,
    429: RateLimitedError,
    502: UpstreamError,
    503: UnavailableError,
    504: UpstreamError,
}


def error_from_response(
    status: int, body: bytes, headers: Mapping[str, str] | None = None
) -> BrokerError:
    """The exception for one error answer: the problem's ``code``, or ``unexpected_response``.

    A ``Retry-After`` header fills in ``retry_after`` when the body lacks it.
    """
    problem: dict[str, Any] = {}
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        problem = parsed
    code = problem.get("code")
    detail = problem.get("detail")
    if not isinstance(code, str) or not code:
        code = UNEXPECTED_RESPONSE
    if not isinstance(detail, str):
        detail = f"the broker answered HTTP {status}"
    retry_header = {k.lower(): v for k, v in (headers or {}).items()}.get("retry-after")
    if "retry_after" not in problem and retry_header is not None and retry_header.isdigit():
        problem["retry_after"] = int(retry_header)
    cls = _BY_STATUS.get(status, BrokerError)
    return cls(status, code, detail, problem)
