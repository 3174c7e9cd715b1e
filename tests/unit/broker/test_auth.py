"""Client secrets: each way a token can be wrong is refused with its own code."""

from __future__ import annotations

import base64
import json
import time

import pytest
from jose import jwt

from broker import Secret
from broker.auth import (
    ApiPrincipal,
    Scope,
    bearer_token,
    hash_api_key,
    mint_client_secret,
    new_api_key,
    verify_client_secret,
)
from broker.errors import ForbiddenError, UnauthorizedError

KEY = Secret("k" * 40)


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_round_trip() -> None:
    token, expires_at = mint_client_secret("sess_1", KEY, ttl=300)
    principal = verify_client_secret(token, KEY, "sess_1")
    assert principal.session_id == "sess_1" and principal.expires_at == expires_at
    assert abs(expires_at - time.time() - 300) < 5


def test_each_token_has_a_unique_jti() -> None:
    ids = {
        verify_client_secret(mint_client_secret("s", KEY, 60)[0], KEY, "s").token_id
        for _ in range(20)
    }
    assert len(ids) == 20


def test_expired() -> None:
    token, _ = mint_client_secret("sess_1", KEY, ttl=60, now=1000)
    with pytest.raises(UnauthorizedError) as err:
        verify_client_secret(token, KEY, "sess_1")
    assert err.value.code == "token_expired"


def test_other_session_is_forbidden() -> None:
    token, _ = mint_client_secret("sess_1", KEY, ttl=60)
    with pytest.raises(ForbiddenError) as err:
        verify_client_secret(token, KEY, "sess_2")
    assert err.value.code == "token_session_mismatch"


def test_wrong_key_is_invalid() -> None:
    token, _ = mint_client_secret("sess_1", Secret("z" * 40), ttl=60)
    with pytest.raises(UnauthorizedError) as err:
        verify_client_secret(token, KEY, "sess_1")
    assert err.value.code == "token_invalid"


def test_alg_none_is_invalid() -> None:
    now = int(time.time())
    claims = {
        "iss": "sideband-broker",
        "aud": "browser",
        "sub": "sess_1",
        "iat": now,
        "exp": now + 60,
        "jti": "x",
    }
    token = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
    with pytest.raises(UnauthorizedError) as err:
        verify_client_secret(token, KEY, "sess_1")
    assert err.value.code == "token_invalid"


def test_wrong_audience() -> None:
    now = int(time.time())
    claims = {
        "iss": "sideband-broker",
        "aud": "server",
        "sub": "sess_1",
        "iat": now,
        "exp": now + 60,
        "jti": "x",
    }
    token = jwt.encode(claims, KEY.reveal(), algorithm="HS256")
    with pytest.raises(UnauthorizedError) as err:
        verify_client_secret(token, KEY, "sess_1")
    assert err.value.code == "token_wrong_audience"


def test_bearer_parsing() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    for bad in (None, "", "Basic abc", "Bearer", "Bearer "):
        with pytest.raises(UnauthorizedError):
            bearer_token(bad)


def test_api_keys_are_random_and_hashed() -> None:
    a, b = new_api_key(), new_api_key()
    assert a != b and a.startswith("bk_")
    assert hash_api_key(a) != a and len(hash_api_key(a)) == 64


def test_admin_scope_implies_all_and_missing_scope_is_403() -> None:
    ApiPrincipal("k", "n", frozenset({"admin"})).require(Scope.AUDIT_READ)
    with pytest.raises(ForbiddenError) as err:
        ApiPrincipal("k", "n", frozenset({"monitor:read"})).require(Scope.SESSIONS_CREATE)
    assert err.value.code == "insufficient_scope"


def test_token_without_audience_is_refused() -> None:
    """python-jose skips the audience check when `aud` is absent; we require it."""
    now = int(time.time())
    claims = {"iss": "sideband-broker", "sub": "sess_1", "iat": now, "exp": now + 60, "jti": "x"}
    token = jwt.encode(claims, KEY.reveal(), algorithm="HS256")
    with pytest.raises(UnauthorizedError) as err:
        verify_client_secret(token, KEY, "sess_1")
    assert err.value.code in ("token_wrong_audience", "token_invalid")
