"""Reading request bodies with hard size and time limits and clear errors."""

from __future__ import annotations

import asyncio
import functools
from typing import Final, TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import BaseModel, ValidationError

from broker import app_state
from broker.errors import (
    BadRequestError,
    PayloadTooLargeError,
    RequestTimeoutError,
    UnsupportedMediaError,
    ValidationFailedError,
)
from broker.session.sdp import MAX_SDP_BYTES
from broker.tools.policy import strict_json_loads

NO_BODY: Final = 0
"""The declared body limit of an endpoint that takes no body at all."""
MAX_JSON_BYTES: Final = 256 * 1024
MAX_REQUEST_BYTES: Final = max(MAX_JSON_BYTES, MAX_SDP_BYTES)
"""aiohttp's own ``client_max_size``: a backstop for any read that bypasses :func:`read_body`."""
_Model = TypeVar("_Model", bound=BaseModel)


def require_content_type(request: web.Request, expected: str) -> None:
    if request.content_type != expected:
        raise UnsupportedMediaError(
            "unsupported_media_type",
            f"expected Content-Type {expected}, got {request.content_type or 'none'}",
        )


def _too_large(limit: int) -> PayloadTooLargeError:
    if limit == NO_BODY:
        return PayloadTooLargeError("payload_too_large", "this endpoint takes no body")
    return PayloadTooLargeError("payload_too_large", f"the body exceeds {limit} bytes")


def check_declared_size(request: web.Request, limit: int) -> None:
    """Refuse (413) a body whose declared size is over ``limit``, before reading any of it.

    A chunked body declares no size; :func:`read_body` counts it as it arrives.
    """
    if limit == NO_BODY:
        if request.body_exists:
            raise _too_large(limit)
    elif request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)


def bounded(handler: Handler, limit: int) -> Handler:
    """``handler`` behind a declared body limit (``NO_BODY`` for an endpoint that reads none).

    Every route is registered through this (``broker/api/routes.py``), so no endpoint accepts a
    body it did not declare; handlers that read one still go through :func:`read_body`.
    """

    @functools.wraps(handler)
    async def checked(request: web.Request) -> web.StreamResponse:
        check_declared_size(request, limit)
        # Here because every route passes through: an id or filter with U+0000 would reach
        # PostgreSQL, whose text cannot hold it (a 500 there, not a refusal).
        if "\x00" in request.path or any("\x00" in k + v for k, v in request.query.items()):
            raise BadRequestError("bad_request", "the URL may not contain U+0000 (NUL)")
        return await handler(request)

    return checked


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, within ``limit`` bytes and the read deadline.

    The deadline (``BROKER_BODY_READ_TIMEOUT_S``) covers the whole body, not each read: a
    client trickling a byte a second would otherwise hold a handler (and, for the offer, a
    claimed client secret's request) open for as long as it likes.

    Raises:
        PayloadTooLargeError: ``payload_too_large`` (413) as soon as it passes ``limit``.
        RequestTimeoutError: ``body_timeout`` (408), the body was not all there in time.
    """
    check_declared_size(request, limit)
    deadline = request.app[app_state.SETTINGS].body_read_timeout_s
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(deadline):
            while chunk := await request.content.read(64 * 1024):
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                chunks.append(chunk)
    except TimeoutError:
        # What is left of the body is not waited for: after the reply aiohttp discards it
        # for at most its lingering time (10 s) and then closes the connection.
        raise RequestTimeoutError(
            "body_timeout", f"the request body did not arrive within {deadline:g} s"
        ) from None
    return b"".join(chunks)


async def read_json(request: web.Request, model: type[_Model]) -> _Model:
    """Parse and validate a JSON body into ``model``.

    Raises:
        UnsupportedMediaError (415), PayloadTooLargeError (413), BadRequestError
        (``invalid_json``), ValidationFailedError (``invalid_request``, with field errors).
    """
    require_content_type(request, "application/json")
    raw = await read_body(request, MAX_JSON_BYTES)
    try:
        data = strict_json_loads(raw)
        nul = _nul_at(data, ())
    except (ValueError, RecursionError):
        raise BadRequestError("invalid_json", "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequestError("invalid_json", "the body must be a JSON object")
    if nul is not None:
        # PostgreSQL's text and jsonb cannot hold U+0000: refused here, not a 500 at the insert.
        raise ValidationFailedError(
            "invalid_request",
            "the request body is not valid",
            errors=[{"loc": nul, "msg": "a string may not contain U+0000 (NUL)"}],
        )
    try:
        # Strict, on the JSON text: what the OpenAPI document says is what is taken (no
        # `false` for an integer, no `"1"` for a boolean); enums still come as their strings.
        return model.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        # Field locations and messages only: echoing input values could echo secrets.
        errors = [
            {"loc": ".".join(str(p) for p in err["loc"]), "msg": err["msg"]}
            for err in exc.errors(include_input=False, include_url=False)
        ]
        raise ValidationFailedError(
            "invalid_request", "the request body is not valid", errors=errors
        ) from None


def _nul_at(value: object, loc: tuple[str, ...]) -> str | None:
    """The location (dotted, as validation errors give it) of the first U+0000, or ``None``."""
    if isinstance(value, str):
        return ".".join(loc) if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in key:
                return ".".join(loc)
            found = _nul_at(item, (*loc, key))
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _nul_at(item, (*loc, str(index)))
            if found is not None:
                return found
    return None
