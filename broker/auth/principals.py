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
from jose.exceptions import ExpiredSignatureError, JWTError

from broker.db.models import ALL_TOOLS, DEFAULT_TENANT
from broker.errors import ForbiddenError, UnauthorizedError
from broker.settings import Secret

CLIENT_SECRET_AUDIENCE: Final = "browser"
CONNECT_TOKEN_AUDIENCE: Final = "trusted-connect"
"""A trusted session's connect token: the client secret's machinery, another audience, so
neither is accepted where the other is expected."""
CLIENT_SECRET_ISSUER: Final = "sideband-broker"
_ALGORITHM: Final = "HS256"
_MAX_JTI_CHARS: Final = 64  # the width of used_client_secrets.jti and sessions.offer_jti
_REQUIRED_CLAIMS: Final = frozenset({"iss", "aud", "sub", "jti", "exp"})
API_KEY_PREFIX: Final = "bk_"
ADMIN_KEY_ID: Final = "admin"


class Scope(enum.StrEnum):
    """What an API key may do; ``admin`` implies every scope."""

    SESSIONS_CREATE = "sessions:create"
    SESSIONS_TRUSTED = "sessions:trusted"
    """Create trusted server sessions (``"connection_type": "trusted_server"``): a backend
    speaks the realtime events through the broker's WebSocket, no browser involved."""
    MONITOR_READ = "monitor:read"
    AUDIT_READ = "audit:read"
    """Read the audit trail: ``GET /api/v1/audit``, its keys and its signed head."""
    ADMIN = "admin"


ALL_SCOPES: Final = frozenset(Scope)
RESERVED_SCOPES: Final[frozenset[Scope]] = frozenset()
"""Scopes a key may hold that grant nothing yet (none today; kept so a scope can be named
before the feature it grants ships)."""


def describe_scopes() -> str:
    """The scopes for a help text or an error message, the reserved ones marked as such."""
    granting = ", ".join(sorted(ALL_SCOPES - RESERVED_SCOPES))
    reserved = ", ".join(sorted(RESERVED_SCOPES))
    if not reserved:
        return f"{granting} (admin implies all)"
    return f"{granting} (admin implies all); {reserved}: reserved, grants nothing yet"


@dataclass(frozen=True)
class ApiPrincipal:
    """An app backend or operator, authenticated by API key."""

    key_id: str
    name: str
    scopes: frozenset[str]
    tenant_id: str | None = DEFAULT_TENANT
    """The tenant whose sessions it sees and acts on; ``None``: every tenant's (the admin
    key, or a key made cross-tenant explicitly)."""
    tool_grants: frozenset[str] = frozenset({ALL_TOOLS})
    """The tools it may put in a session's allowlist (:data:`ALL_TOOLS`: any)."""

    @property
    def cross_tenant(self) -> bool:
        return self.tenant_id is None

    def sees_tenant(self, tenant_id: str) -> bool:
        """Whether a session of ``tenant_id`` exists for this key (else: 404, never 403)."""
        return self.tenant_id is None or self.tenant_id == tenant_id

    def may_grant(self, tool: str) -> bool:
        return ALL_TOOLS in self.tool_grants or tool in self.tool_grants

    def require(self, scope: Scope) -> None:
        """Raises ForbiddenError unless the key has ``scope`` (``admin`` implies every scope)."""
        if scope not in self.scopes and Scope.ADMIN not in self.scopes:
            raise ForbiddenError("insufficient_scope", f"this API key lacks the '{scope}' scope")


@dataclass(frozen=True)
class BrowserPrincipal:
    """A browser holding one session's client secret."""

    session_id: str
    token_id: str
    """The token's ``jti``: spent by the offer, then the key to the bridge while live."""
    expires_at: int

    def expired(self, now: float | None = None) -> bool:
        """Whether ``exp`` has passed (python-jose's rule: expired once ``now > exp``)."""
        return int(now if now is not None else time.time()) > self.expires_at


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
    session_id: str,
    signing_key: Secret,
    ttl: int,
    now: float | None = None,
    *,
    audience: str = CLIENT_SECRET_AUDIENCE,
) -> tuple[str, int]:
    """A client secret for ``session_id``; returns ``(token, expires_at)`` (unix seconds).

    ``audience``: :data:`CONNECT_TOKEN_AUDIENCE` for a trusted session's connect token.
    """
    issued = int(now if now is not None else time.time())
    expires_at = issued + ttl
    claims: dict[str, Any] = {
        "iss": CLIENT_SECRET_ISSUER,
        "aud": audience,
        "sub": session_id,
        "iat": issued,
        "nbf": issued,
        "exp": expires_at,
        "jti": secrets.token_hex(16),
    }
    token: str = jwt.encode(claims, signing_key.reveal(), algorithm=_ALGORITHM)
    return token, expires_at


def verify_client_secret(
    token: str,
    signing_key: Secret,
    session_id: str,
    *,
    check_expiry: bool = True,
    audience: str = CLIENT_SECRET_AUDIENCE,
) -> BrowserPrincipal:
    """Check a client secret for ``session_id``.

    Only HS256 is accepted, so ``alg: none`` and algorithm-confusion tokens fail the signature.
    ``iss``, ``aud``, ``sub``, ``jti`` and ``exp`` must all be present.

    Args:
        token: the bearer token.
        signing_key: the broker's client-secret key.
        session_id: the session the request is for.
        check_expiry: ``False`` only for the bridge, which still accepts the offer's token
            after ``exp`` while that call is live; the caller must then decide on
            :attr:`BrowserPrincipal.expires_at` itself (see ``SessionService.bridge_call``).
        audience: the token kind expected (a connect token: :data:`CONNECT_TOKEN_AUDIENCE`).

    Raises:
        UnauthorizedError: ``token_expired``, ``token_invalid`` (bad signature, malformed,
            wrong algorithm, a required claim missing or mistyped, not yet valid) or
            ``token_wrong_audience`` (audience or issuer is not this broker's browser secret).
        ForbiddenError: ``token_session_mismatch``: valid, but for another session.
    """
    try:
        claims = jwt.decode(
            token,
            signing_key.reveal(),
            algorithms=[_ALGORITHM],
            # Audience, issuer and presence are checked below: python-jose reports a wrong
            # audience like an early `nbf`, and its `require_exp` would force `verify_exp`.
            options={"verify_aud": False, "verify_iss": False, "verify_exp": check_expiry},
        )
    except ExpiredSignatureError:
        raise UnauthorizedError("token_expired", "the client secret has expired") from None
    except JWTError:
        # JWTClaimsError included: a mistyped claim or a token not valid yet.
        raise UnauthorizedError("token_invalid", "the client secret is not valid") from None
    if not _REQUIRED_CLAIMS <= claims.keys():
        raise UnauthorizedError("token_invalid", "the client secret is not valid")
    if claims["aud"] != audience or claims["iss"] != CLIENT_SECRET_ISSUER:
        raise UnauthorizedError(
            "token_wrong_audience", "the token is not a browser client secret of this broker"
        )
    jti, exp = claims["jti"], claims["exp"]
    # python-jose checks `exp` only when it verifies it, and `jti` only for being a string.
    if not isinstance(exp, int) or isinstance(exp, bool) or not 0 < len(jti) <= _MAX_JTI_CHARS:
        raise UnauthorizedError("token_invalid", "the client secret is not valid")
    if claims["sub"] != session_id:
        raise ForbiddenError("token_session_mismatch", "the client secret is for another session")
    return BrowserPrincipal(session_id=session_id, token_id=jti, expires_at=exp)
