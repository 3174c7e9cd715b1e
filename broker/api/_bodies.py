"""Reading request bodies with hard size limits and clear errors."""

from __future__ import annotations

from typing import Final, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from broker.errors import (
    BadRequestError,
    PayloadTooLargeError,
    UnsupportedMediaError,
    ValidationFailedError,
)
from broker.tools.policy import strict_json_loads

MAX_JSON_BYTES: Final = 256 * 1024
_Model = TypeVar("_Model", bound=BaseModel)


def require_content_type(request: web.Request, expected: str) -> None:
    if request.content_type != expected:
        raise UnsupportedMediaError(
            "unsupported_media_type",
            f"expected Content-Type {expected}, got {request.content_type or 'none'}",
        )


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, refusing (413) as soon as it passes ``limit`` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLargeError("payload_too_large", f"the body exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError("payload_too_large", f"the body exceeds {limit} bytes")
        chunks.append(chunk)
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
    except (ValueError, RecursionError):
        raise BadRequestError("invalid_json", "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequestError("invalid_json", "the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        # Field locations and messages only: echoing input values could echo secrets.
        errors = [
            {"loc": ".".join(str(p) for p in err["loc"]), "msg": err["msg"]}
            for err in exc.errors(include_input=False, include_url=False)
        ]
        raise ValidationFailedError(
            "invalid_request", "the request body is not valid", errors=errors
        ) from None
