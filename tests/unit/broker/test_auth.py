"""Client secrets: each way a token can be wrong is refused with its own code."""

from __future__ import annotations

import base64
import json
import time

import pytest
from jose import jwt

from broker import Secret
from broker.auth.principals import (
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


def _claims(**overrides: object) -> dict:
    now = int(time.time())
    claims: dict = {
        "iss": "sideband-broker",
        "aud": "browser",
        "sub": "sess_1",
        "iat": now,
        "nbf": now,
        "exp": now + 60,
        "jti": "j" * 32,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _signed(**overrides: object) -> str:
    return jwt.encode(_claims(**overrides), KEY.reveal(), algorithm="HS256")


@pytest.mark.parametrize("missing", ["jti", "sub", "exp", "iss", "aud"])
def test_a_missing_required_claim_is_invalid(missing: str) -> None:
    with pytest.raises(UnauthorizedError) as err:
        verify_client_secret(_signed(**{missing: None}), KEY, "sess_1")
    assert err.value.code == "token_invalid"


@pytest.mark.parametrize("missing", ["jti", "sub", "exp"])
def test_a_missing_claim_is_invalid_even_without_the_expiry_check(missing: str) -> None:
    """The bridge skips `exp` verification, never its presence."""
    with pytest.raises(UnauthorizedError) as err:
        verify_client_secret(_signed(**{missing: None}), KEY, "sess_1", check_expiry=False)
    assert err.value.code == "token_invalid"


@pytest.mark.parametrize(
    "overrides",
    [
        {"exp": "soon"},
        {"exp": 1.5e12},
        {"jti": ""},
        {"jti": "j" * 65},
        {"jti": 7},
        {"sub": 42},
        {"nbf": int(time.time()) + 3600},
        {"iat": "yesterday"},
    ],
)
def test_mistyped_or_not_yet_valid_claims_are_invalid(overrides: dict) -> None:
    """A claim error that is not about the audience is not reported as one (python-jose raises
    the same JWTClaimsError for an early `nbf` as for a wrong `aud`)."""
    for check_expiry in (True, False):
        with pytest.raises(UnauthorizedError) as err:
            verify_client_secret(_signed(**overrides), KEY, "sess_1", check_expiry=check_expiry)
        assert err.value.code == "token_invalid", overrides


@pytest.mark.parametrize(
    "overrides", [{"iss": "someone-else"}, {"aud": ["browser", "server"]}, {"aud": "server"}]
)
def test_wrong_issuer_or_audience(overrides: dict) -> None:
    with pytest.raises(UnauthorizedError) as err:
        verify_client_secret(_signed(**overrides), KEY, "sess_1")
    assert err.value.code == "token_wrong_audience"


def test_skipping_the_expiry_check_still_verifies_everything_else() -> None:
    expired, expires_at = mint_client_secret("sess_1", KEY, ttl=60, now=1000)
    principal = verify_client_secret(expired, KEY, "sess_1", check_expiry=False)
    assert principal.expires_at == expires_at == 1060 and principal.expired()
    with pytest.raises(UnauthorizedError) as err:
        verify_client_secret(expired, Secret("z" * 40), "sess_1", check_expiry=False)
    assert err.value.code == "token_invalid"
    with pytest.raises(ForbiddenError) as forbidden:
        verify_client_secret(expired, KEY, "sess_2", check_expiry=False)
    assert forbidden.value.code == "token_session_mismatch"
    wrong_aud = jwt.encode(_claims(aud="server", exp=1060), KEY.reveal(), algorithm="HS256")
    with pytest.raises(UnauthorizedError) as err:
        verify_client_secret(wrong_aud, KEY, "sess_1", check_expiry=False)
    assert err.value.code == "token_wrong_audience"


def test_expired_follows_python_jose_rule() -> None:
    """Expired once the whole second after `exp` has begun, as python-jose decides it."""
    token, expires_at = mint_client_secret("sess_1", KEY, ttl=60, now=1000)
    principal = verify_client_secret(token, KEY, "sess_1", check_expiry=False)
    assert not principal.expired(now=expires_at + 0.9)
    assert principal.expired(now=expires_at + 1)


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "HS512", "RS256"])
def test_only_hs256_is_accepted(alg: str) -> None:
    token = f"{_b64({'alg': alg, 'typ': 'JWT'})}.{_b64(_claims())}."
    for check_expiry in (True, False):
        with pytest.raises(UnauthorizedError) as err:
            verify_client_secret(token, KEY, "sess_1", check_expiry=check_expiry)
        assert err.value.code == "token_invalid"


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "a.b", "....", "eyJ." * 3])
def test_garbage_is_invalid(token: str) -> None:
    with pytest.raises(UnauthorizedError) as err:
        verify_client_secret(token, KEY, "sess_1")
    assert err.value.code == "token_invalid"
