"""Bearer authentication: the standard key everywhere, client secrets only to create calls.

No message here ever contains the presented key.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from ._keys import CLIENT_SECRETS, SETTINGS
from .errors import ApiError
from .secrets import EPHEMERAL_PREFIX, ClientSecret

INCORRECT_KEY_MESSAGE = (
    "Incorrect API key provided. You can find your API key at "
    "https://platform.openai.com/account/api-keys."
)


def _bearer_token(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip()


def _is_standard_key(request: web.Request, token: str | None) -> bool:
    expected = request.app[SETTINGS].api_key
    return token is not None and hmac.compare_digest(
        token.encode("utf-8", "surrogatepass"), expected.encode()
    )


def _invalid_key(message: str) -> ApiError:
    return ApiError(401, "invalid_api_key", message)


def bearer_is_client_secret(request: web.Request) -> bool:
    """Whether the request authenticates with an ephemeral client secret (``ek_…``)."""
    token = _bearer_token(request)
    return token is not None and token.startswith(EPHEMERAL_PREFIX)


def require_api_key(request: web.Request) -> None:
    """Check ``Authorization: Bearer <key>`` against the configured standard key.

    Client secrets are refused here: they only create calls (see
    :func:`authorize_call_creation`).

    Raises:
        ApiError: 401 ``invalid_api_key``.
    """
    token = _bearer_token(request)
    if _is_standard_key(request, token):
        return
    if token is not None and token.startswith(EPHEMERAL_PREFIX):
        # [inferred] Ephemeral-key sidebands are unreliable on the real service (docs/protocol.md
        # §2.5 item 1, §7 item 6); refusing them makes a client that relies on one fail fast.
        raise _invalid_key(
            "Ephemeral client secrets can only create calls (POST /v1/realtime/calls); "
            "use a standard API key for this request."
        )
    raise _invalid_key(INCORRECT_KEY_MESSAGE)


def authorize_call_creation(request: web.Request) -> ClientSecret | None:
    """Authenticate ``POST /v1/realtime/calls``: the standard key or a live client secret.

    Returns:
        ``None`` for the standard key, else the client secret the request presented.

    Raises:
        ApiError: 401 ``invalid_api_key``, also for an unknown or expired client secret.
    """
    token = _bearer_token(request)
    if _is_standard_key(request, token):
        return None
    if token is not None and token.startswith(EPHEMERAL_PREFIX):
        secret = request.app[CLIENT_SECRETS].lookup(token)
        if secret is None:
            raise _invalid_key("The ephemeral client secret has expired or is unknown.")
        return secret
    raise _invalid_key(INCORRECT_KEY_MESSAGE)
