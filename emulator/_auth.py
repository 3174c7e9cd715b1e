"""Authentication: the standard key everywhere, client secrets only to create calls.

On OpenAI the key is ``Authorization: Bearer <key>``. On Azure (the ``azure`` flavour) the
resource key also comes as ``api-key: <key>``, and ``Bearer <key>`` stands in for an Entra
token; there, ``/realtime/calls`` takes client secrets only (docs/protocol.md §0).
No message here ever contains the presented key.
"""

from __future__ import annotations

import hmac
from typing import Final

from aiohttp import web

from ._flavors import API_PREFIX
from ._keys import CLIENT_SECRETS, SETTINGS
from .errors import ApiError
from .secrets import EPHEMERAL_PREFIX, ClientSecret

INCORRECT_KEY_MESSAGE: Final = (
    "Incorrect API key provided. You can find your API key at "
    "https://platform.openai.com/account/api-keys."
)
AZURE_INCORRECT_KEY_MESSAGE: Final = (  # Azure's wording; the envelope stays OpenAI's [inferred]
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide "
    "a valid key for an active subscription and use a correct regional API endpoint for your "
    "resource."
)
EPHEMERAL_REQUIRED_CODE: Final = "ephemeral_token_required"  # [inferred]: never recorded
EPHEMERAL_REQUIRED_MESSAGE: Final = "This operation requires ephemeral tokens for authentication."


def _bearer_token(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip()


def _presented_key(request: web.Request) -> str | None:
    """The credential the request carries: Azure's ``api-key`` header first, else the Bearer."""
    if request.app[SETTINGS].flavor == "azure":
        api_key = request.headers.get("api-key")
        if api_key is not None:
            return api_key.strip()
    return _bearer_token(request)


def _is_standard_key(request: web.Request, token: str | None) -> bool:
    expected = request.app[SETTINGS].api_key
    return token is not None and hmac.compare_digest(
        token.encode("utf-8", "surrogatepass"), expected.encode()
    )


def _invalid_key(message: str) -> ApiError:
    return ApiError(401, "invalid_api_key", message)


def _incorrect_key(request: web.Request) -> ApiError:
    azure = request.app[SETTINGS].flavor == "azure"
    return _invalid_key(AZURE_INCORRECT_KEY_MESSAGE if azure else INCORRECT_KEY_MESSAGE)


def bearer_is_client_secret(request: web.Request) -> bool:
    """Whether the request authenticates with an ephemeral client secret (``ek_…``)."""
    token = _presented_key(request)
    return token is not None and token.startswith(EPHEMERAL_PREFIX)


def require_api_key(request: web.Request) -> None:
    """Check the presented credential against the configured standard key.

    Client secrets are refused here: they only create calls (see
    :func:`authorize_call_creation`).

    Raises:
        ApiError: 401 ``invalid_api_key``.
    """
    token = _presented_key(request)
    if _is_standard_key(request, token):
        return
    if token is not None and token.startswith(EPHEMERAL_PREFIX):
        # [inferred] Ephemeral-key sidebands are unreliable on the real service (docs/protocol.md
        # §2.5 item 1, §7 item 6); refusing them makes a client that relies on one fail fast.
        calls = API_PREFIX[request.app[SETTINGS].flavor] + "/realtime/calls"
        raise _invalid_key(
            f"Ephemeral client secrets can only create calls (POST {calls}); "
            "use a standard API key for this request."
        )
    raise _incorrect_key(request)


def authorize_call_creation(request: web.Request) -> ClientSecret | None:
    """Authenticate ``POST …/realtime/calls``: the standard key or a live client secret.

    On Azure only a client secret will do: any other credential, the resource key included,
    gets 401 ``ephemeral_token_required`` ("This operation requires ephemeral tokens ...").

    Returns:
        ``None`` for the standard key, else the client secret the request presented.

    Raises:
        ApiError: 401 ``invalid_api_key``, also for an unknown or expired client secret; on
            Azure 401 ``ephemeral_token_required``.
    """
    token = _presented_key(request)
    if token is not None and token.startswith(EPHEMERAL_PREFIX):
        secret = request.app[CLIENT_SECRETS].lookup(token)
        if secret is None:
            raise _invalid_key("The ephemeral client secret has expired or is unknown.")
        return secret
    if request.app[SETTINGS].flavor == "azure":
        raise ApiError(401, EPHEMERAL_REQUIRED_CODE, EPHEMERAL_REQUIRED_MESSAGE)
    if _is_standard_key(request, token):
        return None
    raise _invalid_key(INCORRECT_KEY_MESSAGE)
