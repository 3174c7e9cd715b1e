"""Principals and credentials: API keys for app backends, client secrets for browsers.

API keys are random 256-bit strings; the database stores only their SHA-256 (a slow hash adds
nothing for keys with that much entropy). Client secrets are short-lived HS256 JWTs bound to one
session (audience ``browser``, subject = session id, unique ``jti``).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any, Final

from jose import jwt
from jose.exceptions import ExpiredSignatureError, JWTClaimsError, JWTError

from broker.errors import ForbiddenError, UnauthorizedError
from broker.settings import Secret

CLIENT_SECRET_AUDIENCE: Final = "browser"
CLIENT_SECRET_ISSUER: Final = "sideband-broker"
_ALGORITHM: Final = "HS256"
API_KEY_PREFIX: Final = "bk_"
ADMIN_KEY_ID: Final = "admin"


class Scope(enum.StrEnum):
    SESSIONS_CREATE = "sessions:create"
    SESSIONS_TRUSTED = "sessions:trusted"
    MONITOR_READ = "monitor:read"
    AUDIT_READ = "audit:read"
    ADMIN = "admin"


ALL_SCOPES: Final = frozenset(Scope)


@dataclass(frozen=True)
class ApiPrincipal:
    """An app backend or operator, authenticated by API key."""

    key_id: str
    name: str
    scopes: frozenset[str]

    def require(self, scope: Scope) -> None:
        """Raises ForbiddenError unless the key has ``scope`` (``admin`` implies every scope)."""
        if scope not in self.scopes and Scope.ADMIN not in self.scopes:
            raise ForbiddenError("insufficient_scope", f"this API key lacks the '{scope}' scope")


@dataclass(frozen=True)
class BrowserPrincipal:
    """A browser holding one session's client secret."""

    session_id: str
    token_id: str
    expires_at: int


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer …`` header.

    Raises:
        UnauthorizedError: header missing or not a bearer token.
    """
    if not authorization:
        raise UnauthorizedError(
            "missing_credentials", "an Authorization: Bearer header is required"
        )
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise UnauthorizedError("invalid_authorization", "the Authorization header must be Bearer")
    return token


def is_admin_key(candidate: str, admin_key: Secret | None) -> bool:
    return admin_key is not None and hmac.compare_digest(
        candidate.encode(), admin_key.reveal().encode()
    )


def mint_client_secret(
    session_id: str, signing_key: Secret, ttl: int, now: float | None = None
) -> tuple[str, int]:
    """A client secret for ``session_id``; returns ``(token, expires_at)`` (unix seconds)."""
    issued = int(now if now is not None else time.time())
    expires_at = issued + ttl
    claims: dict[str, Any] = {
        "iss": CLIENT_SECRET_ISSUER,
        "aud": CLIENT_SECRET_AUDIENCE,
        "sub": session_id,
        "iat": issued,
        "nbf": issued,
        "exp": expires_at,
        "jti": secrets.token_hex(16),
    }
    token: str = jwt.encode(claims, signing_key.reveal(), algorithm=_ALGORITHM)
    return token, expires_at


def verify_client_secret(token: str, signing_key: Secret, session_id: str) -> BrowserPrincipal:
    """Check a client secret for ``session_id``.

    Only HS256 is accepted, so ``alg: none`` and algorithm-confusion tokens fail the signature.

    Raises:
        UnauthorizedError: ``token_expired``, ``token_invalid`` (bad signature, malformed,
            wrong algorithm) or ``token_wrong_audience``.
        ForbiddenError: ``token_session_mismatch``: valid, but for another session.
    """
    try:
        claims = jwt.decode(
            token,
            signing_key.reveal(),
            algorithms=[_ALGORITHM],
            audience=CLIENT_SECRET_AUDIENCE,
            issuer=CLIENT_SECRET_ISSUER,
            # python-jose skips the audience check for a token with no `aud` at all.
            options={
                "require_exp": True,
                "require_sub": True,
                "require_jti": True,
                "require_aud": True,
                "require_iss": True,
            },
        )
    except ExpiredSignatureError:
        raise UnauthorizedError("token_expired", "the client secret has expired") from None
    except JWTClaimsError:
        raise UnauthorizedError(
            "token_wrong_audience", "the token is not a browser client secret"
        ) from None
    except JWTError:
        raise UnauthorizedError("token_invalid", "the client secret is not valid") from None
    if claims.get("sub") != session_id:
        raise ForbiddenError("token_session_mismatch", "the client secret is for another session")
    return BrowserPrincipal(
        session_id=session_id, token_id=str(claims["jti"]), expires_at=int(claims["exp"])
    )
