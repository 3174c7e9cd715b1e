"""Client secrets over HTTP: each way a token is wrong has its own status and code, the offer
spends the token once, and the token that made the offer keeps the bridge open while the call
is live (even past its `exp`), and only then.

Every hand-made token is registered with the security suite's leak watch: none may show up in
a reply, a log record or a stored row.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from jose import jwt
from sqlalchemy import select

from broker import Secret, app_state
from broker.auth.principals import mint_client_secret
from broker.db.models import UsedClientSecret
from tests.conftest import BrokerFactory
from tests.security.leak_watch import LeakWatch
from tests.support.broker_server import Reply, RunningBroker
from tests.support.browser import FakeBrowser
from tests.support.flow import LOOKUP_42_OUTPUT, wait_sideband
from tests.support.tool_backend import ToolBackend

LOOKUP_42 = {"order_id": "42"}


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(session_id: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": "sideband-broker",
        "aud": "browser",
        "sub": session_id,
        "iat": now,
        "nbf": now,
        "exp": now + 60,
        "jti": secrets.token_hex(16),
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _signed(key: Secret, session_id: str, **overrides: Any) -> str:
    return jwt.encode(_claims(session_id, **overrides), key.reveal(), algorithm="HS256")


def _tampered(key: Secret, session_id: str) -> str:
    header, payload, signature = mint_client_secret(session_id, key, ttl=60)[0].split(".")
    # A longer `exp` in the payload, the original signature: it no longer matches.
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["exp"] += 3600
    return f"{header}.{_b64(claims)}.{signature}"


def _unsigned(key: Secret, session_id: str) -> str:
    # Built by hand: python-jose will not make an `alg: none` token, and must not accept one.
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims(session_id))}."


TokenMaker = Callable[[Secret, str], str]

REFUSALS: list[Any] = [
    pytest.param(
        lambda key, sid: mint_client_secret(sid, key, ttl=60, now=0)[0],
        401,
        "token_expired",
        id="expired",
    ),
    pytest.param(
        lambda key, sid: _signed(key, sid, aud="server"), 401, "token_wrong_audience", id="aud"
    ),
    pytest.param(
        lambda key, sid: _signed(key, sid, iss="elsewhere"), 401, "token_wrong_audience", id="iss"
    ),
    pytest.param(
        lambda key, sid: mint_client_secret("sess_" + "0" * 24, key, ttl=60)[0],
        403,
        "token_session_mismatch",
        id="other-session",
    ),
    pytest.param(_tampered, 401, "token_invalid", id="tampered"),
    pytest.param(
        lambda key, sid: mint_client_secret(sid, Secret("another-key-" + "y" * 32), 60)[0],
        401,
        "token_invalid",
        id="other-key",
    ),
    pytest.param(_unsigned, 401, "token_invalid", id="alg-none"),
    pytest.param(lambda key, sid: _signed(key, sid, jti=None), 401, "token_invalid", id="no-jti"),
    pytest.param(lambda key, sid: _signed(key, sid, sub=None), 401, "token_invalid", id="no-sub"),
    pytest.param(lambda key, sid: _signed(key, sid, exp=None), 401, "token_invalid", id="no-exp"),
]


@pytest.fixture
async def offer_sdp() -> AsyncIterator[str]:
    browser = FakeBrowser()
    yield await browser.create_offer()
    await browser.close()


async def _offer(broker: RunningBroker, session_id: str, token: str, sdp: str) -> Reply:
    return await broker.request(
        "POST",
        f"/api/v1/sessions/{session_id}/realtime-offer",
        token=token,
        data=sdp,
        content_type="application/sdp",
    )


async def _bridge(
    broker: RunningBroker, session_id: str, token: str, call_id: str = "call_1"
) -> Reply:
    return await broker.request(
        "POST",
        f"/api/v1/sessions/{session_id}/tools/lookup_order",
        token=token,
        json_body={"call_id": call_id, "arguments": LOOKUP_42},
    )


async def _connect(broker: RunningBroker, session: dict[str, Any], token: str) -> FakeBrowser:
    """Like ``connect_browser``, but the offer carries ``token``."""
    browser = FakeBrowser()
    try:
        reply = await _offer(broker, session["id"], token, await browser.create_offer())
        assert reply.status == 201, reply.text
        await browser.accept_answer(reply.text)
        await browser.wait_open()
        if session["sideband"]:
            await wait_sideband(broker, session["id"])
    except BaseException:
        await browser.close()
        raise
    return browser


def _short_lived(broker: RunningBroker, session_id: str, seconds: float = 1.5) -> tuple[str, int]:
    """A valid client secret for ``session_id`` that expires ``seconds`` from now."""
    now = time.time()
    return mint_client_secret(
        session_id, broker.settings.signing_key, ttl=60, now=now - 60 + seconds
    )


async def _until_expired(expires_at: int) -> None:
    # python-jose: expired once a whole second after `exp` has begun.
    async with asyncio.timeout(5):
        await asyncio.sleep(max(0.0, expires_at + 1 - time.time()) + 0.05)
    assert int(time.time()) > expires_at


# --- each refusal has its own code ---------------------------------------------------------


@pytest.mark.parametrize(("make", "status", "code"), REFUSALS)
async def test_offer_refusals(
    broker: RunningBroker,
    offer_sdp: str,
    leak_watch: LeakWatch,
    make: TokenMaker,
    status: int,
    code: str,
) -> None:
    session = await broker.create_session(sideband=False)
    token = make(broker.settings.signing_key, session["id"])
    leak_watch.add_secret(token, "a hand-made token")
    reply = await _offer(broker, session["id"], token, offer_sdp)
    assert (reply.status, reply.code) == (status, code), reply.text
    assert (await broker.get_session(session["id"]))["state"] == "created"


@pytest.mark.parametrize(("make", "status", "code"), REFUSALS)
async def test_bridge_refusals(
    broker: RunningBroker,
    tool_backend: ToolBackend,
    leak_watch: LeakWatch,
    make: TokenMaker,
    status: int,
    code: str,
) -> None:
    """The bridge skips python-jose's `exp` check to let the offer's token outlive it; every
    other check is the offer's, and an expired token that did not make the offer is refused."""
    session = await broker.create_session(sideband=False)
    token = make(broker.settings.signing_key, session["id"])
    leak_watch.add_secret(token, "a hand-made token")
    reply = await _bridge(broker, session["id"], token)
    assert (reply.status, reply.code) == (status, code), reply.text
    assert tool_backend.calls_to("lookup_order") == []


# --- the offer spends the token once -------------------------------------------------------


async def test_the_offer_token_is_single_use(broker: RunningBroker, offer_sdp: str) -> None:
    """A second offer with the spent token is a replay (401), not a 409 for the live session."""
    session = await broker.create_session(sideband=False)
    token = session["client_secret"]["value"]
    browser = await _connect(broker, session, token)
    try:
        reply = await _offer(broker, session["id"], token, offer_sdp)
        assert (reply.status, reply.code) == (401, "token_replayed")
        assert reply.headers["WWW-Authenticate"] == "Bearer"
        assert (await broker.get_session(session["id"]))["state"] == "live"
    finally:
        await browser.close()


async def test_replay_is_checked_before_the_sessions_state(
    make_broker: BrokerFactory, offer_sdp: str
) -> None:
    """The provider refuses the call, the session fails: the token was still spent, and a
    retry with it is a replay whatever the session's state says."""
    broker = await make_broker(provider_api_key=Secret("sk-wrong-key-0000000000000000"))
    session = await broker.create_session()
    first = await broker.offer(session, offer_sdp)
    assert (first.status, first.code) == (502, "provider_error")
    again = await broker.offer(session, offer_sdp)
    assert (again.status, again.code) == (401, "token_replayed")


async def test_concurrent_offers_with_one_token_are_accepted_once(
    broker: RunningBroker,
) -> None:
    session = await broker.create_session(sideband=False)
    browsers = [FakeBrowser(), FakeBrowser()]
    try:
        sdps = [await b.create_offer() for b in browsers]
        async with asyncio.timeout(15):
            replies = await asyncio.gather(
                *(_offer(broker, session["id"], session["client_secret"]["value"], s) for s in sdps)
            )
        outcomes = sorted((r.status, r.code if r.status != 201 else None) for r in replies)
        assert outcomes == [(201, None), (401, "token_replayed")], [r.text for r in replies]
    finally:
        for browser in browsers:
            await browser.close()


async def test_a_refused_offer_does_not_spend_the_token(
    broker: RunningBroker, offer_sdp: str
) -> None:
    session = await broker.create_session(sideband=False)
    token = session["client_secret"]["value"]
    wrong_type = await broker.request(
        "POST",
        f"/api/v1/sessions/{session['id']}/realtime-offer",
        token=token,
        data=offer_sdp,
        content_type="text/plain",
    )
    assert (wrong_type.status, wrong_type.code) == (415, "unsupported_media_type")
    not_sdp = await _offer(broker, session["id"], token, "v=0\r\n")
    assert (not_sdp.status, not_sdp.code) == (400, "invalid_sdp")
    browser = await _connect(broker, session, token)
    await browser.close()


# --- the bridge: the offer's token while the call is live ----------------------------------


async def test_the_offer_token_outlives_its_expiry_on_the_bridge_while_live(
    broker: RunningBroker, tool_backend: ToolBackend, leak_watch: LeakWatch
) -> None:
    """A call lasts longer than a client secret: the token that made the offer keeps working on
    this session's bridge after `exp`. Another expired token for the same session does not;
    an unexpired one does."""
    session = await broker.create_session(tools=["lookup_order"], sideband=False)
    token, expires_at = _short_lived(broker, session["id"])
    leak_watch.add_secret(token, "the offer token")
    browser = await _connect(broker, session, token)
    try:
        await _until_expired(expires_at)
        reply = await _bridge(broker, session["id"], token, "call_after_exp")
        assert reply.status == 200, reply.text
        assert reply.json()["status"] == "succeeded"
        assert reply.json()["output"] == LOOKUP_42_OUTPUT

        other, _ = mint_client_secret(session["id"], broker.settings.signing_key, 60, now=0)
        leak_watch.add_secret(other, "an expired token")
        refused = await _bridge(broker, session["id"], other, "call_other")
        assert (refused.status, refused.code) == (401, "token_expired")

        fresh, _ = mint_client_secret(session["id"], broker.settings.signing_key, ttl=60)
        leak_watch.add_secret(fresh, "a fresh token")
        allowed = await _bridge(broker, session["id"], fresh, "call_fresh")
        assert allowed.status == 200 and allowed.json()["status"] == "succeeded"
        assert len(tool_backend.calls_to("lookup_order")) == 2

        # Past `exp` the offer endpoint itself refuses it as expired, like any token.
        again = await _offer(broker, session["id"], token, "v=0\r\n")
        assert (again.status, again.code) == (401, "token_expired")
    finally:
        await browser.close()


async def test_the_offer_token_on_another_sessions_bridge_is_403(
    broker: RunningBroker, tool_backend: ToolBackend
) -> None:
    mine = await broker.create_session(sideband=False)
    theirs = await broker.create_session(sideband=False)
    browsers = [
        await _connect(broker, mine, mine["client_secret"]["value"]),
        await _connect(broker, theirs, theirs["client_secret"]["value"]),
    ]
    try:
        reply = await _bridge(broker, theirs["id"], mine["client_secret"]["value"])
        assert (reply.status, reply.code) == (403, "token_session_mismatch")
        assert tool_backend.calls_to("lookup_order") == []
    finally:
        for browser in browsers:
            await browser.close()


async def test_once_the_call_is_over_the_offer_token_is_refused(
    broker: RunningBroker, tool_backend: ToolBackend, leak_watch: LeakWatch
) -> None:
    """The browser leaves, the session ends: the offer's token loses its extension (401
    token_expired past `exp`); an unexpired token gets the state's answer (409)."""
    session = await broker.create_session(tools=["lookup_order"])
    token, expires_at = _short_lived(broker, session["id"], seconds=2.5)
    leak_watch.add_secret(token, "the offer token")
    browser = await _connect(broker, session, token)
    await browser.close()
    async with asyncio.timeout(15):
        while (await broker.get_session(session["id"]))["state"] == "live":  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    await _until_expired(expires_at)
    reply = await _bridge(broker, session["id"], token)
    assert (reply.status, reply.code) == (401, "token_expired")
    fresh, _ = mint_client_secret(session["id"], broker.settings.signing_key, ttl=60)
    leak_watch.add_secret(fresh, "a fresh token")
    reply = await _bridge(broker, session["id"], fresh)
    assert (reply.status, reply.code) == (409, "session_not_live")
    assert tool_backend.calls_to("lookup_order") == []


async def test_spent_secrets_are_pruned_only_well_past_their_expiry(
    broker: RunningBroker, offer_sdp: str
) -> None:
    """The spent-secret table stays small: rows a minute past `exp` go with an offer (the
    first, then one every 30 s); a row still inside python-jose's last second (or a clock's
    drift) stays."""
    old = await broker.create_session(sideband=False)
    recent = await broker.create_session(sideband=False)
    now = datetime.now(UTC)
    async with broker.app[app_state.SESSIONMAKER].begin() as s:
        s.add(
            UsedClientSecret(jti="old", session_id=old["id"], expires_at=now - timedelta(hours=1))
        )
        s.add(
            UsedClientSecret(
                jti="recent", session_id=recent["id"], expires_at=now - timedelta(seconds=1)
            )
        )
    session = await broker.create_session(sideband=False)
    browser = await _connect(broker, session, session["client_secret"]["value"])
    await browser.close()
    async with broker.app[app_state.SESSIONMAKER]() as s:
        left = set(await s.scalars(select(UsedClientSecret.jti)))
    assert "old" not in left and "recent" in left and len(left) == 2
