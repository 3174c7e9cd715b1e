"""Authenticating a request: API keys for backends, client secrets for browsers."""

from __future__ import annotations

from aiohttp import hdrs, web

from broker import app_state
from broker.auth.principals import (
    ADMIN_KEY_ID,
    ALL_SCOPES,
    ApiPrincipal,
    BrowserPrincipal,
    bearer_token,
    hash_api_key,
    is_admin_key,
    verify_client_secret,
)
from broker.db import queries
from broker.errors import UnauthorizedError

API_PRINCIPAL = web.RequestKey("api_principal", ApiPrincipal)


async def api_principal(request: web.Request) -> ApiPrincipal:
    """The API key's principal.

    Raises:
        UnauthorizedError: ``missing_credentials``, ``invalid_api_key`` (unknown or revoked).
    """
    token = bearer_token(request.headers.get(hdrs.AUTHORIZATION))
    settings = request.app[app_state.SETTINGS]
    if is_admin_key(token, settings.admin_key):
        # The operator's own key: every tenant, every tool.
        principal = ApiPrincipal(
            key_id=ADMIN_KEY_ID, name="admin", scopes=frozenset(ALL_SCOPES), tenant_id=None
        )
    else:
        # Looked up on every request, so a revoked key fails from its next request on.
        async with request.app[app_state.SESSIONMAKER]() as s:
            row = await queries.get_api_key_by_hash(s, hash_api_key(token))
        if row is None or row.revoked_at is not None:
            # One code for unknown and revoked: the client's fix is the same (a new key).
            raise UnauthorizedError("invalid_api_key", "the API key is not valid")
        principal = ApiPrincipal(
            key_id=row.id,
            name=row.name,
            scopes=frozenset(row.scopes),
            tenant_id=row.tenant_id,
            tool_grants=frozenset(row.tool_grants),
        )
    request[API_PRINCIPAL] = principal
    return principal


def browser_principal(
    request: web.Request, session_id: str, *, check_expiry: bool = True
) -> BrowserPrincipal:
    """The client secret's principal, bound to ``session_id``.

    Args:
        request: the request carrying ``Authorization: Bearer <client secret>``.
        session_id: the session in the URL.
        check_expiry: ``False`` only for the bridge, whose service decides on expiry (the
            token that made the offer stays good while its call is live).

    Raises:
        UnauthorizedError, ForbiddenError: see :func:`broker.auth.principals.verify_client_secret`.
    """
    token = bearer_token(request.headers.get(hdrs.AUTHORIZATION))
    return verify_client_secret(
        token, request.app[app_state.SETTINGS].signing_key, session_id, check_expiry=check_expiry
    )
