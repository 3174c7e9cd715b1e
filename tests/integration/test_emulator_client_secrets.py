"""Ephemeral client secrets (docs/protocol.md §1.2): issuing them, starting calls, expiry.

Also the emulator's command lines, which take the standard key from the environment.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from openai import AsyncOpenAI
from openai.types.realtime import ClientSecretCreateResponse
from openai.types.realtime.realtime_session_create_response import RealtimeSessionCreateResponse
from pydantic import TypeAdapter
from websockets.exceptions import InvalidStatus

import broker.cli
from broker.settings import Secret
from emulator import EmulatorSettings
from emulator import __main__ as emulator_main
from tests.support.broker_server import PROVIDER_KEY
from tests.support.browser import FakeBrowser
from tests.support.conformance import validate_server_event
from tests.support.servers import (
    LOOKUP_ORDER,
    FakeClock,
    RunningEmulator,
    SidebandProbe,
    connect_call,
    create_client_secret,
    post_offer,
    request_json,
    start_emulator,
)

KEY = PROVIDER_KEY  # the shared `emulator` fixture (tests/conftest.py) uses it
CLIENT_SECRET_RESPONSE: TypeAdapter[ClientSecretCreateResponse] = TypeAdapter(
    ClientSecretCreateResponse
)
SECRET_SESSION = {
    "type": "realtime",
    "instructions": "You are a pirate.",
    "tools": [LOOKUP_ORDER],
    "audio": {"output": {"voice": "cedar"}},
}
# Fields a call refreshes when it starts from a secret's session template.
PER_CALL_FIELDS = {"id", "expires_at"}


def check_client_secret_shape(body: dict[str, Any]) -> None:
    """The body parses strictly as the SDK's response, with no field the SDK does not know."""
    parsed = CLIENT_SECRET_RESPONSE.validate_python(body, strict=True)
    assert isinstance(parsed.session, RealtimeSessionCreateResponse)
    assert set(body) == {"value", "expires_at", "session"}
    assert set(body["session"]) <= set(RealtimeSessionCreateResponse.model_fields)


def without(session: dict[str, Any], keys: set[str]) -> dict[str, Any]:
    return {k: v for k, v in session.items() if k not in keys}


async def test_client_secret_defaults_and_shape(
    emulator: RunningEmulator, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """An empty body gets a 600 s ek_ secret and the default session; expires_after and session
    are honoured; the answer is the SDK's shape and no secret reaches a log line."""
    caplog.set_level(logging.DEBUG, logger="emulator")
    before = time.time()
    body = await create_client_secret(http, emulator)
    check_client_secret_shape(body)
    assert re.fullmatch(r"ek_[0-9a-f]{32}", body["value"])
    assert before + 600 - 2 <= body["expires_at"] <= time.time() + 600
    assert body["session"]["model"] == "gpt-realtime"
    assert body["session"]["audio"]["output"]["voice"] == "alloy"

    shaped = await create_client_secret(
        http,
        emulator,
        {"expires_after": {"anchor": "created_at", "seconds": 10}, "session": SECRET_SESSION},
    )
    check_client_secret_shape(shaped)
    assert before + 10 - 2 <= shaped["expires_at"] <= time.time() + 10
    session = shaped["session"]
    assert (session["type"], session["object"]) == ("realtime", "realtime.session")
    assert session["id"].startswith("sess_")
    assert session["instructions"] == "You are a pirate."
    assert session["tools"] == [LOOKUP_ORDER]
    assert session["audio"]["output"]["voice"] == "cedar"
    assert session["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    longest = await create_client_secret(http, emulator, {"expires_after": {"seconds": 7200}})
    assert longest["expires_at"] >= int(before) + 7200

    assert len(emulator.client_secrets) == 3
    for value in (body["value"], shaped["value"], longest["value"], KEY):
        assert value not in caplog.text


async def test_client_secret_bad_bodies_are_400(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    """Malformed requests get 400 in the provider's envelope with a precise param."""
    cases: list[tuple[str, str, str | None]] = [
        ("{not json", "invalid_json", None),
        ("[1, 2]", "invalid_json", None),
        ('{"nope": 1}', "unknown_parameter", "nope"),
        ('{"expires_after": 600}', "invalid_type", "expires_after"),
        ('{"expires_after": {"seconds": 9}}', "invalid_value", "expires_after.seconds"),
        ('{"expires_after": {"seconds": 7201}}', "invalid_value", "expires_after.seconds"),
        ('{"expires_after": {"seconds": "600"}}', "invalid_type", "expires_after.seconds"),
        ('{"expires_after": {"seconds": true}}', "invalid_type", "expires_after.seconds"),
        ('{"expires_after": {"seconds": 60.5}}', "invalid_type", "expires_after.seconds"),
        (
            '{"expires_after": {"anchor": "now", "seconds": 60}}',
            "invalid_value",
            "expires_after.anchor",
        ),
        ('{"expires_after": {"seconds": 60, "x": 1}}', "unknown_parameter", "expires_after.x"),
        ('{"session": "realtime"}', "invalid_type", "session"),
        ('{"session": {"model": "gpt-realtime"}}', "missing_required_parameter", "session.type"),
        ('{"session": {"type": "transcription"}}', "invalid_value", "session.type"),
        ('{"session": {"type": "realtime", "voice": "x"}}', "unknown_parameter", "session.voice"),
        (
            '{"session": {"type": "realtime", "instructions": 5}}',
            "invalid_type",
            "session.instructions",
        ),
    ]
    for raw, code, param in cases:
        async with asyncio.timeout(5):
            response = await http.post(
                f"{emulator.base_url}/realtime/client_secrets",
                data=raw,
                headers={**emulator.auth(), "Content-Type": "application/json"},
            )
            body = await response.json()
        assert response.status == 400, raw
        error = body["error"]
        assert set(error) == {"message", "type", "code", "param"}
        assert (error["type"], error["code"], error["param"]) == (
            "invalid_request_error",
            code,
            param,
        ), raw
    assert len(emulator.client_secrets) == 0


async def test_client_secret_needs_the_standard_key(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    """No key, a wrong key, or a client secret: 401 invalid_api_key, nothing echoed."""
    secret = (await create_client_secret(http, emulator))["value"]
    for headers in (
        {},
        {"Authorization": "Bearer sk-wrong"},
        {"Authorization": f"Bearer {secret}"},
    ):
        status, body = await request_json(
            http, emulator, "POST", "/v1/realtime/client_secrets", {}, headers=headers
        )
        assert (status, body["error"]["code"]) == (401, "invalid_api_key")
        assert secret not in json.dumps(body) and KEY not in json.dumps(body)
    assert len(emulator.client_secrets) == 1


async def test_secret_starts_raw_sdp_calls_with_its_session(
    emulator: RunningEmulator, http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    """One secret starts several calls from a raw application/sdp offer; each call's session is
    the secret's with a fresh id and expires_at; ?model= does not override the secret's model."""
    secret = await create_client_secret(http, emulator, {"session": SECRET_SESSION})
    template = secret["session"]
    second = FakeBrowser()
    try:
        sessions: list[dict[str, Any]] = []
        for index, peer in enumerate((browser, second)):
            params = {"model": "gpt-other"} if index else None
            status, answer, location = await post_offer(
                http,
                emulator,
                await peer.create_offer(),
                bearer=secret["value"],
                raw=True,
                params=params,
            )
            assert status == 201, answer
            assert location is not None
            assert re.fullmatch(r"/v1/realtime/calls/rtc_u2_[0-9A-Za-z]{21}", location)
            created = await connect_call(peer, answer, timeout=5)
            validate_server_event(created)
            call = emulator.registry.get(location.rsplit("/", 1)[-1])
            assert call is not None
            assert created["session"] == call.session
            sessions.append(call.session)
        for session in sessions:
            assert without(session, PER_CALL_FIELDS) == without(template, PER_CALL_FIELDS)
            assert session["model"] == "gpt-realtime"
        ids = {template["id"], *(s["id"] for s in sessions)}
        assert len(ids) == 3
    finally:
        await second.close()


async def test_secret_session_is_overridden_by_posted_session(
    emulator: RunningEmulator, http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    """Multipart with a client secret: the posted session merges over the secret's."""
    secret = await create_client_secret(http, emulator, {"session": SECRET_SESSION})
    offer = await browser.create_offer()
    bad = {"type": "realtime", "voice": "x"}
    status, body, _ = await post_offer(http, emulator, offer, bearer=secret["value"], session=bad)
    assert (status, json.loads(body)["error"]["param"]) == (400, "session.voice")

    posted = {
        "type": "realtime",
        "model": "gpt-other",
        "instructions": "You are a parrot.",
        "audio": {"output": {"speed": 1.2}},
    }
    status, answer, location = await post_offer(
        http, emulator, offer, bearer=secret["value"], session=posted
    )
    assert status == 201, answer
    assert location is not None
    created = await connect_call(browser, answer, timeout=5)
    validate_server_event(created)
    session = created["session"]
    assert session["instructions"] == "You are a parrot."
    assert session["audio"]["output"]["speed"] == 1.2
    assert session["audio"]["output"]["voice"] == "cedar"  # kept from the secret
    assert session["tools"] == [LOOKUP_ORDER]
    assert session["model"] == "gpt-realtime"  # the secret fixed it, like session.update


async def test_client_secret_is_refused_beyond_calls(
    emulator: RunningEmulator, http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    """A client secret creates calls and nothing else: its sideband gets the 404
    call_id_not_found the real service was seen answering; hangup and admin routes get 401
    invalid_api_key, without echoing it; the call is unaffected."""
    value = (await create_client_secret(http, emulator))["value"]
    status, answer, location = await post_offer(
        http, emulator, await browser.create_offer(), bearer=value, raw=True
    )
    assert status == 201
    assert location is not None
    call_id = location.rsplit("/", 1)[-1]
    await connect_call(browser, answer, timeout=5)
    ephemeral = {"Authorization": f"Bearer {value}"}
    async with asyncio.timeout(5):
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(f"{emulator.ws_url}?call_id={call_id}", headers=ephemeral)
    assert info.value.status == 404
    status, body = await request_json(
        http, emulator, "GET", f"/v1/realtime?call_id={call_id}", {}, headers=ephemeral
    )
    assert (status, body["error"]["code"]) == (404, "call_id_not_found")
    for method, path in (
        ("POST", f"/v1/realtime/calls/{call_id}/hangup"),
        ("GET", f"/_emulator/calls/{call_id}"),
        ("GET", "/_emulator/faults"),
        ("POST", f"/_emulator/calls/{call_id}/end"),
    ):
        status, body = await request_json(http, emulator, method, path, {}, headers=ephemeral)
        assert (status, body["error"]["code"]) == (401, "invalid_api_key"), path
        assert "Ephemeral" in body["error"]["message"]
        assert value not in json.dumps(body)
    call = emulator.registry.get(call_id)
    assert call is not None
    assert not call.ended and call.sideband_attaches == []


async def test_a_client_secret_sideband_is_refused_only_after_a_while(
    http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    """The real service was seen answering an ephemeral-key sideband only after a while: the
    404 call_id_not_found comes no sooner than ``ephemeral_sideband_delay``."""
    delay = 0.3
    emulator = await start_emulator(EmulatorSettings(api_key=KEY, ephemeral_sideband_delay=delay))
    try:
        value = (await create_client_secret(http, emulator))["value"]
        status, answer, location = await post_offer(
            http, emulator, await browser.create_offer(), bearer=value, raw=True
        )
        assert status == 201 and location is not None
        call_id = location.rsplit("/", 1)[-1]
        loop = asyncio.get_running_loop()
        started = loop.time()
        status, body = await request_json(
            http,
            emulator,
            "GET",
            f"/v1/realtime?call_id={call_id}",
            None,
            headers={"Authorization": f"Bearer {value}"},
        )
        waited = loop.time() - started
        assert (status, body["error"]["code"]) == (404, "call_id_not_found")
        assert waited >= delay  # a lower bound only: the server sleeps at least this long
    finally:
        await emulator.close()


async def test_expired_secret_cannot_start_calls_but_its_calls_go_on(
    emulator: RunningEmulator, http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    """Expiry limits starting calls, not their duration: after expires_at /calls is 401
    invalid_api_key (as for an unknown secret), and a call started before keeps working."""
    clock = FakeClock()
    emulator.client_secrets.clock = clock
    secret = await create_client_secret(http, emulator, {"expires_after": {"seconds": 10}})
    assert secret["expires_at"] == int(clock.now) + 10
    status, answer, location = await post_offer(
        http, emulator, await browser.create_offer(), bearer=secret["value"], raw=True
    )
    assert status == 201
    assert location is not None
    call_id = location.rsplit("/", 1)[-1]
    await connect_call(browser, answer, timeout=5)

    late = FakeBrowser()
    try:
        offer = await late.create_offer()
        clock.advance(9)
        assert emulator.client_secrets.lookup(secret["value"]) is not None
        clock.advance(2)
        for bearer in (secret["value"], "ek_" + "0" * 32):
            status, body, _ = await post_offer(http, emulator, offer, bearer=bearer, raw=True)
            error = json.loads(body)["error"]
            assert (status, error["code"], error["param"]) == (401, "invalid_api_key", None)
            assert "expired" in error["message"]
            assert secret["value"] not in body
    finally:
        await late.close()
    assert len(emulator.registry.calls) == 1

    # The call started before expiry still works end to end.
    sideband = await SidebandProbe.connect(http, emulator, call_id)
    try:
        browser.send_user_text("still here")
        added = await sideband.wait_for("conversation.item.added")
        assert added["item"]["content"][0]["text"] == "still here"
    finally:
        await sideband.close()
    # Issuing a new secret forgets the expired one.
    await create_client_secret(http, emulator)
    assert len(emulator.client_secrets) == 1


async def test_sdk_client_secret_and_ephemeral_call(
    emulator: RunningEmulator, browser: FakeBrowser, caplog: pytest.LogCaptureFixture
) -> None:
    """The official SDK: client_secrets.create → ClientSecretCreateResponse; an AsyncOpenAI
    built on the ek value creates a call (raw application/sdp) → 201 + Location; its sideband
    is refused; once expired, calls.create raises AuthenticationError (401)."""
    caplog.set_level(logging.DEBUG, logger="emulator")
    clock = FakeClock()
    emulator.client_secrets.clock = clock
    session: Any = {"type": "realtime", "instructions": "Be brief.", "tools": [LOOKUP_ORDER]}
    async with AsyncOpenAI(api_key=KEY, base_url=emulator.base_url, max_retries=0) as sdk:
        async with asyncio.timeout(5):
            secret = await sdk.realtime.client_secrets.create(
                expires_after={"anchor": "created_at", "seconds": 60}, session=session
            )
    assert isinstance(secret, ClientSecretCreateResponse)
    assert secret.value.startswith("ek_")
    assert secret.expires_at == int(clock.now) + 60
    assert isinstance(secret.session, RealtimeSessionCreateResponse)
    assert secret.session.instructions == "Be brief."

    later = FakeBrowser()
    try:
        async with AsyncOpenAI(
            api_key=secret.value, base_url=emulator.base_url, max_retries=0
        ) as ephemeral:
            async with asyncio.timeout(5):
                raw = await ephemeral.realtime.calls.with_raw_response.create(
                    sdp=await browser.create_offer()
                )
            assert raw.status_code == 201
            location = raw.headers["location"]
            assert re.fullmatch(r"/v1/realtime/calls/rtc_u2_[0-9A-Za-z]{21}", location)
            created = await connect_call(browser, raw.text, timeout=5)
            assert created["session"]["instructions"] == "Be brief."
            assert created["session"]["tools"] == [LOOKUP_ORDER]

            with pytest.raises(InvalidStatus) as refused:
                async with asyncio.timeout(5):
                    await ephemeral.realtime.connect(call_id=location.rsplit("/", 1)[-1]).enter()
            # As the real service was seen answering (docs/protocol.md §2.5 item 1).
            assert refused.value.response.status_code == 404

            clock.advance(61)
            with pytest.raises(openai.AuthenticationError) as expired:
                async with asyncio.timeout(5):
                    await ephemeral.realtime.calls.create(sdp=await later.create_offer())
            assert expired.value.status_code == 401
            assert expired.value.code == "invalid_api_key"
    finally:
        await later.close()
    assert secret.value not in caplog.text


# ---- command lines -------------------------------------------------------------------


def test_broker_emulator_help_names_the_environment_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`broker emulator --help` documents EMULATOR_API_KEY and why a flag is worse."""
    with pytest.raises(SystemExit) as info:
        broker.cli.main(["emulator", "--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--api-key" in out and "EMULATOR_API_KEY" in out and "ps" in out


def test_broker_emulator_key_from_environment_or_flag(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The key comes from --api-key, else EMULATOR_API_KEY, else parsing fails; it is
    registered for log redaction; --flavor azure picks the Azure flavour. Nothing is started
    (the server runner is replaced)."""
    started: list[tuple[str, int, str, str]] = []
    redacted: list[list[str]] = []

    def fake_logging(level: str, secrets: list[Secret | None], **_: object) -> None:
        redacted.append([s.reveal() for s in secrets if s is not None])

    monkeypatch.setattr(broker.cli, "_emulator", lambda *args: started.append(args))
    monkeypatch.setattr(broker.cli, "configure_logging", fake_logging)
    monkeypatch.setenv("EMULATOR_API_KEY", "sk-from-env")
    assert broker.cli.main(["emulator", "--port", "0"]) == 0
    assert broker.cli.main(["emulator", "--host", "::1", "--api-key", "sk-from-flag"]) == 0
    assert broker.cli.main(["emulator", "--flavor", "azure"]) == 0
    assert started == [
        ("127.0.0.1", 0, "sk-from-env", "openai"),
        ("::1", 8090, "sk-from-flag", "openai"),
        ("127.0.0.1", 8090, "sk-from-env", "azure"),
    ]
    assert "sk-from-env" in redacted[0] and "sk-from-flag" in redacted[1]

    monkeypatch.delenv("EMULATOR_API_KEY")
    with pytest.raises(SystemExit) as info:
        broker.cli.main(["emulator"])
    assert info.value.code == 2
    assert "EMULATOR_API_KEY" in capsys.readouterr().err
    assert len(started) == 3


def test_python_m_emulator_accepts_api_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m emulator` takes --api-key or EMULATOR_API_KEY; without either it exits 2;
    --flavor azure picks the Azure flavour."""
    served: list[tuple[str, str]] = []

    def fake_create_app(settings: EmulatorSettings) -> Any:
        served.append((settings.api_key, settings.flavor))
        return object()

    monkeypatch.setattr(emulator_main, "create_app", fake_create_app)
    monkeypatch.setattr(web, "run_app", lambda app, **kwargs: None)
    monkeypatch.setattr(logging, "basicConfig", lambda **kwargs: None)
    monkeypatch.delenv("EMULATOR_API_KEY", raising=False)
    with pytest.raises(SystemExit) as info:
        emulator_main.main([])
    assert info.value.code == 2
    assert "--api-key" in capsys.readouterr().err
    assert emulator_main.main(["--api-key", "sk-flag", "--port", "0"]) == 0
    monkeypatch.setenv("EMULATOR_API_KEY", "sk-env")
    assert emulator_main.main(["--port", "0"]) == 0
    assert emulator_main.main(["--port", "0", "--flavor", "azure"]) == 0
    assert served == [("sk-flag", "openai"), ("sk-env", "openai"), ("sk-env", "azure")]
