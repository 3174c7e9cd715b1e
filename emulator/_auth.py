from __future__ import annotations

import hmac

from aiohttp import web

from ._keys import SETTINGS
from .errors import ApiError


def require_api_key(request: web.Request) -> None:
    """Check ``Authorization: Bearer <key>`` against the configured standard key.

    Raises:
        ApiError: 401 ``invalid_api_key`` (the key itself is never echoed or logged).
    """
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    expected = request.app[SETTINGS].api_key
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), expected.encode()
    ):
        raise ApiError(
            401,
            "invalid_api_key",
            "Incorrect API key provided. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
        )
