"""API keys (HTTP and CLI), the admin bootstrap key, the session-creation rate limit, CORS on
the browser endpoints, body limits on every route, and credentials kept out of replies."""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from broker import Settings, SettingsError
from broker import cli as broker_cli
from broker.api.routes import ROUTES
from broker.auth.principals import ALL_SCOPES, hash_api_key
from tests.conftest import BrokerFactory
from tests.security.leak_watch import LeakWatch
from tests.support.broker_server import ADMIN_KEY, RunningBroker

APP_ORIGIN = "https://app.example.com"

# --- API keys over HTTP ----------------------------------------------------------------------


async def _new_key(broker: RunningBroker, *scopes: str, name: str = "backend") -> dict[str, Any]:
    reply = await broker.request(
        "POST", "/api/v1/keys", json_body={"name": name, "scopes": list(scopes)}
    )
    assert reply.status == 201, reply.text
    assert reply.headers["Cache-Control"] == "no-store"
    return reply.json()


async def test_the_admin_bootstrap_key_has_every_scope(broker: RunningBroker) -> None:
    """BROKER_ADMIN_KEY: creates sessions, reads anyone's, manages keys."""
    backend = await _new_key(broker, "sessions:create")
    theirs = await broker.request(
        "POST", "/api/v1/sessions", token=backend["key"], json_body={"tools": []}
    )
    assert theirs.status == 201
    assert (await broker.get_session(theirs.json()["id"]))["id"] == theirs.json()["id"]
    listed = await broker.request("GET", "/api/v1/keys")
    assert listed.status == 200 and [k["id"] for k in listed.json()["keys"]] == [backend["id"]]
    admin_made = await _new_key(broker, *sorted(ALL_SCOPES), name="second admin")
    assert admin_made["scopes"] == sorted(ALL_SCOPES)


async def test_key_lifecycle_over_http(broker: RunningBroker) -> None:
    """Created once (the only reply with the key), listed without secrets, revoked at once."""
    created = await _new_key(broker, "sessions:create", "monitor:read")
    assert created["key"].startswith("bk_") and created["revoked_at"] is None
    assert created["scopes"] == ["monitor:read", "sessions:create"]
    key = created["key"]
    assert (
        await broker.request("POST", "/api/v1/sessions", token=key, json_body={"tools": []})
    ).status == 201

    listed = await broker.request("GET", "/api/v1/keys")
    [entry] = listed.json()["keys"]
    assert set(entry) == {"id", "name", "scopes", "tools", "tenant", "created_at", "revoked_at"}
    assert key not in listed.text and hash_api_key(key) not in listed.text

    revoked = await broker.request("DELETE", f"/api/v1/keys/{created['id']}")
    assert revoked.status == 200 and revoked.json()["revoked_at"] is not None
    refused = await broker.request("POST", "/api/v1/sessions", token=key, json_body={"tools": []})
    assert (refused.status, refused.code) == (401, "invalid_api_key")
    again = await broker.request("DELETE", f"/api/v1/keys/{created['id']}")
    assert again.status == 200 and again.json()["revoked_at"] == revoked.json()["revoked_at"]
    listed = await broker.request("GET", "/api/v1/keys")
    assert listed.json()["keys"][0]["revoked_at"] == revoked.json()["revoked_at"]


@pytest.mark.parametrize("key_id", ["key_0000000000000000", "admin"])
async def test_revoking_an_unknown_key_is_404(broker: RunningBroker, key_id: str) -> None:
    """The bootstrap key is configuration, not a stored key: it cannot be revoked here."""
    reply = await broker.request("DELETE", f"/api/v1/keys/{key_id}")
    assert (reply.status, reply.code) == (404, "key_not_found")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/v1/keys", None),
        ("POST", "/api/v1/keys", {"name": "x", "scopes": ["admin"]}),
        ("DELETE", "/api/v1/keys/key_0000000000000000", None),
    ],
)
async def test_key_management_needs_the_admin_scope(
    broker: RunningBroker, method: str, path: str, body: Any
) -> None:
    monitor = await _new_key(broker, "monitor:read", "sessions:create", "audit:read")
    reply = await broker.request(method, path, token=monitor["key"], json_body=body)
    assert (reply.status, reply.code) == (403, "insufficient_scope")
    anonymous = await broker.request(method, path, token=None, json_body=body)
    assert (anonymous.status, anonymous.code) == (401, "missing_credentials")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"name": "x", "scopes": ["root"]}, "unknown_scope"),
        ({"name": "x", "scopes": []}, "invalid_request"),
        ({"name": "", "scopes": ["admin"]}, "invalid_request"),
        ({"name": "x", "scopes": ["admin"], "key": "bk_mine"}, "invalid_request"),
    ],
)
async def test_bad_key_requests_are_422(broker: RunningBroker, body: Any, code: str) -> None:
    reply = await broker.request("POST", "/api/v1/keys", json_body=body)
    assert (reply.status, reply.code) == (422, code), reply.text
    assert "root" not in reply.text  # input is not echoed back


# --- API keys on the command line ------------------------------------------------------------


@pytest.fixture
def cli_env(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_DATABASE_URL", db_url)
    monkeypatch.setenv("BROKER_SIGNING_KEY_FILE", str(tmp_path / "signing.key"))
    for name in ("BROKER_ADMIN_KEY", "BROKER_PROVIDER_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    # `main` installs its own root handler; the test's log capture and leak watch must stay.
    monkeypatch.setattr(broker_cli, "configure_logging", lambda level, secrets, **_: None)


async def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    async with asyncio.timeout(30):
        code = await asyncio.to_thread(broker_cli.main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.usefixtures("cli_env")
async def test_cli_keys_create_list_revoke_against_a_running_broker(
    broker: RunningBroker, capsys: pytest.CaptureFixture[str], leak_watch: LeakWatch
) -> None:
    """`broker keys revoke` on the shared database: the running broker refuses the key on its
    very next request (keys are looked up per request, never cached)."""
    code, out, _ = await _cli(
        capsys, "keys", "create", "--name", "billing", "--scopes", "sessions:create"
    )
    assert code == 0
    key_id = re.search(r"created (key_\w+)", out)
    key = out.strip().splitlines()[-1]
    assert key_id is not None and key.startswith("bk_")
    leak_watch.add_secret(key, "a CLI-made API key")
    ok = await broker.request("POST", "/api/v1/sessions", token=key, json_body={"tools": []})
    assert ok.status == 201

    code, out, _ = await _cli(capsys, "keys", "list")
    assert code == 0
    header, row = out.strip().splitlines()
    assert header.split() == ["ID", "NAME", "SCOPES", "TOOLS", "CREATED", "REVOKED"]
    assert row.split()[:3] == [key_id.group(1), "billing", "sessions:create"]
    assert row.split()[-1] == "-"
    assert key not in out and hash_api_key(key) not in out

    code, out, _ = await _cli(capsys, "keys", "revoke", key_id.group(1))
    assert code == 0 and f"revoked {key_id.group(1)}" in out
    refused = await broker.request("POST", "/api/v1/sessions", token=key, json_body={"tools": []})
    assert (refused.status, refused.code) == (401, "invalid_api_key")
    code, out, _ = await _cli(capsys, "keys", "list")
    assert out.strip().splitlines()[1].split()[-1] != "-"


@pytest.mark.usefixtures("cli_env")
async def test_cli_revoke_of_an_unknown_key_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = await _cli(capsys, "keys", "revoke", "key_nope")
    assert code == 2 and out == ""
    assert "no API key with id 'key_nope'" in err


@pytest.mark.usefixtures("cli_env")
async def test_cli_create_with_an_unknown_scope_exits_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = await _cli(capsys, "keys", "create", "--name", "x", "--scopes", "root")
    assert code == 2 and "bk_" not in out and "unknown scope" in err


# --- rate limit on session creation ----------------------------------------------------------


async def test_session_creation_is_rate_limited_per_key(make_broker: BrokerFactory) -> None:
    broker = await make_broker(session_create_rate=1, session_create_burst=2)
    for _ in range(2):
        assert (await broker.request("POST", "/api/v1/sessions", json_body={})).status == 201
    limited = await broker.request("POST", "/api/v1/sessions", json_body={})
    assert (limited.status, limited.code) == (429, "rate_limited")
    assert limited.headers["Content-Type"].startswith("application/problem+json")
    # One token per minute, none left: the next one is a minute away (whole seconds).
    assert limited.headers["Retry-After"].isdigit()
    assert 55 <= int(limited.headers["Retry-After"]) <= 60
    assert limited.json()["retry_after"] == int(limited.headers["Retry-After"])
    # Another key has its own bucket.
    other = await _new_key(broker, "sessions:create")
    reply = await broker.request(
        "POST", "/api/v1/sessions", token=other["key"], json_body={"tools": []}
    )
    assert reply.status == 201


async def test_a_refused_create_spends_nothing_and_scope_comes_first(
    make_broker: BrokerFactory,
) -> None:
    broker = await make_broker(session_create_rate=1, session_create_burst=1)
    monitor = await _new_key(broker, "monitor:read")
    for _ in range(3):
        reply = await broker.request("POST", "/api/v1/sessions", token=monitor["key"], json_body={})
        assert (reply.status, reply.code) == (403, "insufficient_scope")
    assert (await broker.request("POST", "/api/v1/sessions", json_body={})).status == 201


async def test_a_zero_rate_disables_the_limit(make_broker: BrokerFactory) -> None:
    broker = await make_broker(session_create_rate=0, session_create_burst=1)
    for _ in range(5):
        assert (await broker.request("POST", "/api/v1/sessions", json_body={})).status == 201


# --- CORS on the browser endpoints -----------------------------------------------------------


def _browser_paths(session_id: str = "sess_x") -> list[str]:
    return [
        f"/api/v1/sessions/{session_id}/realtime-offer",
        f"/api/v1/sessions/{session_id}/tools/lookup_order",
    ]


@pytest.fixture
async def cors_broker(make_broker: BrokerFactory) -> RunningBroker:
    return await make_broker(cors_origins=frozenset({APP_ORIGIN, "http://localhost:5173"}))


async def _preflight(broker: RunningBroker, path: str, origin: str | None) -> Any:
    headers = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    if origin is not None:
        headers["Origin"] = origin
    return await broker.request("OPTIONS", path, token=None, headers=headers)


@pytest.mark.parametrize("path", _browser_paths())
async def test_preflight_from_an_allowed_origin(cors_broker: RunningBroker, path: str) -> None:
    reply = await _preflight(cors_broker, path, APP_ORIGIN)
    assert reply.status == 204
    assert reply.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    assert "Origin" in reply.headers["Vary"]
    assert reply.headers["Access-Control-Allow-Methods"] == "POST"
    allowed = {h.strip().lower() for h in reply.headers["Access-Control-Allow-Headers"].split(",")}
    assert allowed == {"authorization", "content-type"}
    assert "Access-Control-Allow-Credentials" not in reply.headers


@pytest.mark.parametrize("path", _browser_paths())
@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "https://app.example.com.evil.example",
        "http://app.example.com",  # other scheme
        "https://app.example.com:8443",  # other port
        "null",
        None,
    ],
)
async def test_preflight_from_any_other_origin_is_403(
    cors_broker: RunningBroker, path: str, origin: str | None
) -> None:
    reply = await _preflight(cors_broker, path, origin)
    assert (reply.status, reply.code) == (403, "origin_not_allowed")
    assert not any(h.lower().startswith("access-control-") for h in reply.headers)
    assert "Origin" in reply.headers["Vary"]


async def test_no_origin_is_allowed_by_default(broker: RunningBroker) -> None:
    reply = await _preflight(broker, _browser_paths()[0], APP_ORIGIN)
    assert (reply.status, reply.code) == (403, "origin_not_allowed")


async def test_browser_endpoint_replies_carry_cors_headers_errors_included(
    cors_broker: RunningBroker,
) -> None:
    """A page must be able to read the problem body (401, 409…) of its own request."""
    session = await cors_broker.create_session(sideband=False)
    token = session["client_secret"]["value"]
    for path in _browser_paths(session["id"]):
        allowed = await cors_broker.request(
            "POST", path, token="not-a-token", data="x", headers={"Origin": APP_ORIGIN}
        )
        assert (allowed.status, allowed.code) == (401, "token_invalid")
        assert allowed.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
        other = await cors_broker.request(
            "POST", path, token=token, data="x", headers={"Origin": "https://evil.example"}
        )
        assert "Access-Control-Allow-Origin" not in other.headers


async def test_server_endpoints_never_carry_cors_headers(cors_broker: RunningBroker) -> None:
    created = await cors_broker.request(
        "POST", "/api/v1/sessions", json_body={}, headers={"Origin": APP_ORIGIN}
    )
    assert created.status == 201
    assert "Access-Control-Allow-Origin" not in created.headers
    assert created.headers["Cache-Control"] == "no-store"
    preflight = await _preflight(cors_broker, "/api/v1/sessions", APP_ORIGIN)
    assert (preflight.status, preflight.code) == (405, "method_not_allowed")
    assert "Access-Control-Allow-Origin" not in preflight.headers


# --- body limits on every route --------------------------------------------------------------


def _concrete(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: f"{m.group(1)}_x", path)


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
async def test_every_route_refuses_a_body_over_its_declared_limit(
    broker: RunningBroker, route: Any
) -> None:
    """Refused from the declared Content-Length before the handler (or auth) runs."""
    size = route.max_body + 1
    reply = await broker.request(
        route.method, _concrete(route.path), data=b"x" * size, content_type="application/json"
    )
    assert (reply.status, reply.code) == (413, "payload_too_large"), reply.text


async def test_every_registered_route_is_in_the_table(broker: RunningBroker) -> None:
    """Nothing reaches the router around ROUTES (and so around its body limit)."""
    declared = {(r.method, r.path) for r in ROUTES}
    for route in broker.app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if route.method in ("HEAD", "OPTIONS"):
            assert any(p == path for _, p in declared), path
        else:
            assert (route.method, path) in declared, (route.method, path)


async def test_a_chunked_body_is_counted_as_it_arrives(broker: RunningBroker) -> None:
    """No Content-Length to check up front: the bounded reader stops at the limit."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"tools": [], "instructions": "'
        for _ in range(40):
            yield b"x" * 8192
        yield b'"}'

    async with broker.http.post(
        broker.base_url + "/api/v1/sessions",
        data=chunks(),
        headers={"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"},
    ) as resp:
        body = await resp.json(content_type=None)
    assert (resp.status, body["code"]) == (413, "payload_too_large")


# --- credentials stay out of replies ---------------------------------------------------------


async def test_refusals_never_echo_the_credential(
    broker: RunningBroker, leak_watch: LeakWatch
) -> None:
    bogus_key = "bk_" + secrets.token_urlsafe(32)
    bogus_token = "eyJ" + secrets.token_urlsafe(40)
    leak_watch.add_secret(bogus_key, "a bogus API key")
    leak_watch.add_secret(bogus_token, "a bogus token")
    session = await broker.create_session(sideband=False)
    for token in (bogus_key, bogus_token):
        await broker.request("POST", "/api/v1/sessions", token=token, json_body={})
        await broker.request("GET", "/api/v1/keys", token=token)
        for path in _browser_paths(session["id"]):
            await broker.request("POST", path, token=token, data="v=0")
    # The leak watch (tests/security/conftest.py) checks every reply and log line above.


# --- settings --------------------------------------------------------------------------------


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"BROKER_SIGNING_KEY_FILE": str(tmp_path / "key"), **extra}


def test_new_settings_defaults_and_env(tmp_path: Path) -> None:
    default = Settings.from_env(_env(tmp_path))
    assert (default.session_create_rate, default.session_create_burst) == (60, 20)
    assert default.cors_origins == frozenset()
    settings = Settings.from_env(
        _env(
            tmp_path,
            BROKER_SESSION_CREATE_RATE="0",
            BROKER_SESSION_CREATE_BURST="5",
            BROKER_CORS_ORIGINS=" https://App.Example.com , http://localhost:5173,",
        )
    )
    assert (settings.session_create_rate, settings.session_create_burst) == (0, 5)
    assert settings.cors_origins == {"https://app.example.com", "http://localhost:5173"}


def test_admin_key_from_env(tmp_path: Path) -> None:
    settings = Settings.from_env(_env(tmp_path, BROKER_ADMIN_KEY="a-long-enough-admin-key"))
    assert settings.admin_key is not None
    assert settings.admin_key.reveal() == "a-long-enough-admin-key"
    assert "a-long-enough-admin-key" not in repr(settings)


@pytest.mark.parametrize(
    "origins",
    [
        "*",
        "https://*.example.com",
        "https://app.example.com/",
        "https://app.example.com/path",
        "app.example.com",
        "ftp://app.example.com",
        "https://user@app.example.com",
        "https://app.example.com:99999",
    ],
)
def test_cors_origins_must_be_exact(tmp_path: Path, origins: str) -> None:
    with pytest.raises(SettingsError, match="BROKER_CORS_ORIGINS"):
        Settings.from_env(_env(tmp_path, BROKER_CORS_ORIGINS=origins))


@pytest.mark.parametrize(
    "extra",
    [{"BROKER_SESSION_CREATE_RATE": "-1"}, {"BROKER_SESSION_CREATE_BURST": "0"}],
)
def test_rate_settings_are_bounded(tmp_path: Path, extra: dict[str, str]) -> None:
    with pytest.raises(SettingsError, match=next(iter(extra))):
        Settings.from_env(_env(tmp_path, **extra))
