"""Broker errors and their one rendering: RFC 9457 ``application/problem+json``.

The tree (each class carries a stable ``code`` and an HTTP ``status``)::

    BrokerError
    ├── BadRequestError          400  malformed input (bad JSON, not an SDP offer, …)
    ├── UnauthorizedError        401  missing / bad / expired credentials
    ├── ForbiddenError           403  valid credentials, wrong scope or wrong session
    ├── NotFoundError            404  unknown session, tool call, …
    ├── RequestTimeoutError      408  the body did not arrive in time (``body_timeout``)
    ├── ConflictError            409  the resource is not in a state that allows this
    ├── PayloadTooLargeError     413
    ├── UnsupportedMediaError    415
    ├── ValidationFailedError    422  well-formed but not acceptable (unknown tool, …)
    ├── RateLimitedError         429  too many requests for this key (with ``Retry-After``)
    ├── UpstreamError            502 / 504  the provider failed or timed out
    ├── UnavailableError         503  this broker process is shutting down (retry elsewhere)
    └── OverloadedError          503  this process is at capacity (``overloaded``, ``Retry-After``)

Nothing below ``broker/api`` raises ``web.HTTP*``; handlers and services raise these, and
:func:`problem_middleware` renders them (and turns anything unexpected into a logged 500).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from typing import Any, ClassVar

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

logger = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"
POOL_RETRY_AFTER_S = 2


class BrokerError(Exception):
    """Root of every error the broker reports to a client.

    Args:
        code: stable, machine-readable error code (documented in the README).
        detail: a human sentence for this occurrence; must not contain secrets.
    """

    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"

    def __init__(self, code: str, detail: str, **extensions: Any) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.extensions = extensions

    @property
    def headers(self) -> Mapping[str, str]:
        """Extra response headers this error needs (none by default)."""
        return {}


class BadRequestError(BrokerError):
    status = 400
    title = "Bad request"


class UnauthorizedError(BrokerError):
    status = 401
    title = "Unauthorized"


class ForbiddenError(BrokerError):
    status = 403
    title = "Forbidden"


class NotFoundError(BrokerError):
    status = 404
    title = "Not found"


class RequestTimeoutError(BrokerError):
    """The client did not send its whole body within the read deadline."""

    status = 408
    title = "Request timeout"


class ConflictError(BrokerError):
    status = 409
    title = "Conflict"


class PayloadTooLargeError(BrokerError):
    status = 413
    title = "Payload too large"


class UnsupportedMediaError(BrokerError):
    status = 415
    title = "Unsupported media type"


class ValidationFailedError(BrokerError):
    status = 422
    title = "Unprocessable content"


class RateLimitedError(BrokerError):
    """Too many requests; the client may retry after ``retry_after`` seconds."""

    status = 429
    title = "Too many requests"

    def __init__(self, code: str, detail: str, *, retry_after: float, **extensions: Any) -> None:
        # Retry-After takes whole seconds; rounding down would invite a retry that fails again.
        self.retry_after = max(1, math.ceil(retry_after))
        super().__init__(code, detail, retry_after=self.retry_after, **extensions)

    @property
    def headers(self) -> Mapping[str, str]:
        return {"Retry-After": str(self.retry_after)}


class UpstreamError(BrokerError):
    """The provider failed (502) or timed out (504)."""

    title = "Provider failure"

    def __init__(self, code: str, detail: str, *, timeout: bool = False, **extensions: Any) -> None:
        super().__init__(code, detail, **extensions)
        self.timeout = timeout

    @property
    def http_status(self) -> int:
        return 504 if self.timeout else 502


class UnavailableError(BrokerError):
    """This process cannot take the request now (it is draining); another one can."""

    status = 503
    title = "Service unavailable"

    @property
    def headers(self) -> Mapping[str, str]:
        return {"Retry-After": "1"}


class RelayedError(BrokerError):
    """A refusal the instance that owns a call made, reported here as it was there."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(code, detail)
        # Per instance: the owner's status, whichever BrokerError it raised.
        self.__dict__["status"] = status if 400 <= status <= 599 else 500


class OverloadedError(BrokerError):
    """This process is at capacity; it takes new work again after ``retry_after`` seconds."""

    status = 503
    title = "Overloaded"

    def __init__(self, detail: str, *, retry_after: int, reason: str) -> None:
        self.retry_after = max(1, retry_after)
        super().__init__("overloaded", detail, retry_after=self.retry_after, reason=reason)

    @property
    def headers(self) -> Mapping[str, str]:
        return {"Retry-After": str(self.retry_after)}


def problem_response(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    **extensions: Any,
) -> web.Response:
    """A problem+json response; ``type`` is a stable URN built from the code."""
    body = {
        "type": f"urn:broker:error:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        **extensions,
    }
    all_headers = dict(headers or {})
    if status == 401:
        all_headers["WWW-Authenticate"] = "Bearer"
    return web.Response(
        status=status,
        text=json.dumps(body),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=all_headers or None,
    )


_HTTP_CODES: dict[int, str] = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


def problem_of(exc: BrokerError) -> web.Response:
    """The problem+json response that reports ``exc`` (its status, code and headers)."""
    status = exc.http_status if isinstance(exc, UpstreamError) else exc.status
    return problem_response(
        status, exc.code, exc.title, exc.detail, headers=exc.headers, **exc.extensions
    )


def _refused(request: web.Request, exc: BrokerError) -> web.Response:
    response = problem_of(exc)
    if response.status >= 500:
        logger.warning("request failed path=%s code=%s: %s", request.path, exc.code, exc)
    return response


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render every error as problem+json, in one place."""
    try:
        return await handler(request)
    except BrokerError as exc:
        return _refused(request, exc)
    except PoolTimeoutError:
        # Every database connection stayed busy past the pool's timeout: this process is
        # overloaded, not broken; the client retries (and nothing was half-written: the
        # request never got a connection).
        return _refused(
            request,
            OverloadedError(
                "this broker process is at capacity (database connections); retry later",
                retry_after=POOL_RETRY_AFTER_S,
                reason="database_pool",
            ),
        )
    except web.HTTPException as exc:
        # aiohttp's own (unmatched route, wrong method, client_max_size): same contract.
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, f"http_{exc.status}")
        # A 405 must say which methods the resource takes (RFC 9110 §15.5.6); aiohttp put
        # them on its exception.
        allow = exc.headers.get(hdrs.ALLOW)
        return problem_response(
            exc.status,
            code,
            exc.reason,
            exc.text or exc.reason,
            headers={hdrs.ALLOW: allow} if allow is not None else None,
        )
    except Exception:
        logger.exception("unhandled error path=%s", request.path)
        return problem_response(500, "internal_error", "Internal error", "unexpected server error")
