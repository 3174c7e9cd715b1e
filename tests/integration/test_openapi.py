"""``GET /api/v1/openapi.json``: a valid OpenAPI 3.1 document that covers every route and error
code, and that a live broker keeps to (schemathesis, over real HTTP on loopback)."""

from __future__ import annotations

import ast
import asyncio
import os
import re
import sys
from pathlib import Path
from typing import Any, Final

import pytest
from openapi_spec_validator import validate

import broker
import broker.errors
from broker.api import openapi
from broker.tools.codes import ToolErrorCode
from tests.support.broker_server import ADMIN_KEY, RunningBroker

ROOT: Final = Path(broker.__file__).parent
README: Final = ROOT.parent / "README.md"
HOOKS: Final = Path(__file__).parents[1] / "support" / "schemathesis_hooks.py"

NOT_IN_SPEC: Final = {
    ("GET", "/ops"): "the ops dashboard's redirect: a page, not an API",
    ("GET", "/ops/"): "the ops dashboard page (HTML)",
    ("GET", "/ops/{name}"): "the ops dashboard's static assets",
}
"""Routes the document leaves out, and why. Whole kinds are left out too: ``HEAD`` (every
``GET`` answers it) and the trees under :data:`STATIC_PREFIXES`."""
STATIC_PREFIXES: Final = {
    "/demo": "the demo page and its backend (``--demo`` only), not an API",
    "/client/": "the browser package's files (JavaScript and its types)",
}

NON_LITERAL_CODES: Final = {
    # UpstreamError(self.code, …) in broker/session/offer_failure.py: its three codes.
    "provider_error",
    "provider_timeout",
    "provider_unreachable",
    # OverloadedError fixes its own code.
    "overloaded",
}
SERVER_ONLY: Final = {"internal_error"}
"""Codes a 500 carries: a bug, never documented as an answer."""


def _raised_codes() -> set[str]:
    """Every error code a ``BrokerError`` (or ``problem_response``) is built with in broker/."""
    errors = {
        name
        for name, value in vars(broker.errors).items()
        if isinstance(value, type) and issubclass(value, broker.errors.BrokerError)
    }
    codes = set(NON_LITERAL_CODES)
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            position = {
                "problem_response": 1,
                "RelayedError": 1,
                "_parse_seq": 1,
                "CallRejectedError": 0,
            }.get(str(name), 0 if name in errors - {"OverloadedError"} else None)
            if position is None or len(node.args) <= position:
                continue
            arg = node.args[position]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                codes.add(arg.value)
            elif (
                isinstance(arg, ast.Call)
                and isinstance(arg.args[0], ast.Attribute)
                and ast.unparse(arg.args[0].value) == "ToolErrorCode"
            ):
                codes.add(str(ToolErrorCode[arg.args[0].attr]))
    # aiohttp's own refusals (an unmatched route, a wrong method), as the middleware names them.
    codes |= set(broker.errors._HTTP_CODES.values())
    return codes - SERVER_ONLY


async def _spec(broker: RunningBroker) -> dict[str, Any]:
    reply = await broker.request("GET", openapi.OPENAPI_PATH, token=None)
    assert reply.status == 200, reply.text
    assert reply.headers["Content-Type"].startswith("application/json")
    spec: dict[str, Any] = reply.json()
    return spec


async def test_the_served_document_is_valid_openapi_3_1(broker: RunningBroker) -> None:
    """Must-show 3 (first half): served without a key, and valid OpenAPI 3.1."""
    spec = await _spec(broker)
    assert spec["openapi"].startswith("3.1.")
    validate(spec)
    # Built from the models: the create request's fields are the pydantic model's.
    create = spec["components"]["schemas"]["CreateSessionRequest"]
    assert {"model", "tools", "limits", "input_transcription"} <= set(create["properties"])
    assert create["additionalProperties"] is False


async def test_every_route_of_the_app_is_in_the_document_and_nothing_else(
    broker: RunningBroker,
) -> None:
    served: set[tuple[str, str]] = set()
    for route in broker.app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = str(info.get("formatter") or info.get("path") or info.get("prefix", ""))
        if route.method == "HEAD" or path.startswith(tuple(STATIC_PREFIXES)):
            continue
        served.add((route.method, path))
    spec = await _spec(broker)
    documented = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    assert served - documented == set(NOT_IN_SPEC)
    assert documented - served == set()
    assert set(NOT_IN_SPEC) <= served  # no stale exclusion


async def test_every_error_code_the_broker_raises_is_documented(broker: RunningBroker) -> None:
    spec = await _spec(broker)
    documented: set[str] = set()
    for ops in spec["paths"].values():
        for op in ops.values():
            for status, response in op["responses"].items():
                problem = response.get("content", {}).get("application/problem+json")
                if problem is not None:
                    assert int(status) >= 400
                    documented.update(problem["schema"]["allOf"][1]["properties"]["code"]["enum"])
    raised = _raised_codes()
    assert raised - documented == set(), "raised but not in the document"
    assert documented - raised == set(), "documented but never raised"
    # And the README's error table names each of them.
    readme = README.read_text()
    assert {c for c in documented if f"`{c}`" not in readme} == set()


async def test_responses_of_a_real_session_conform_to_the_document(
    broker: RunningBroker,
) -> None:
    """Schemathesis mostly reaches refusals; this walks the successful answers with real data."""
    from broker.api import schemas

    session = await broker.create_session()
    schemas.SessionCreated.model_validate(session)
    schemas.SessionDetail.model_validate(await broker.get_session(session["id"]))
    listed = await broker.request("GET", "/api/v1/sessions")
    schemas.SessionPage.model_validate(listed.json())
    created = await broker.request(
        "POST", "/api/v1/keys", json_body={"name": "spec", "scopes": ["monitor:read"]}
    )
    schemas.KeyCreated.model_validate(created.json())
    keys = await broker.request("GET", "/api/v1/keys?include=usage")
    schemas.KeyList.model_validate(keys.json())
    tools = await broker.request("GET", "/api/v1/tools")
    assert tools.json()["tools"]
    schemas.ToolList.model_validate(tools.json())
    name = tools.json()["tools"][0]["name"]
    off = await broker.request("POST", f"/api/v1/tools/{name}/disable")
    schemas.ToolSwitch.model_validate(off.json())
    health = await broker.request("GET", "/healthz", token=None)
    schemas.Health.model_validate(health.json())


# The run's fuzzing is bounded by --max-time; the rest (coverage phase, start-up) is slower on a
# busy machine than the default timeout allows for.
@pytest.mark.timeout(300)
async def test_schemathesis_finds_no_server_error_and_no_nonconforming_response(
    broker: RunningBroker, tmp_path: Path
) -> None:
    """Must-show 3 (second half): schemathesis against the live broker, with the admin key."""
    # Real ids for the path parameters: without them nearly every call ends in a 404, and
    # the success answers (a session's detail, a tool's switch) would go unchecked.
    session = await broker.create_session(tools=["lookup_order"])
    config = tmp_path / "schemathesis.toml"
    # The browser routes take the session's client secret; the rest the admin key.
    secret = session["client_secret"]["value"]
    config.write_text(
        f'headers = {{ Authorization = "Bearer {ADMIN_KEY}" }}\n'
        f'[parameters]\n"path.session_id" = "{session["id"]}"\n"path.tool" = "lookup_order"\n'
        f'[[operations]]\ninclude-tag = "browser"\n'
        f'headers = {{ Authorization = "Bearer {secret}" }}\n'
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "run",
        broker.base_url + openapi.OPENAPI_PATH,
        "--checks",
        "all",
        # Not this one: a schema-valid body can still be refused for what a schema cannot say
        # (an SDP that is no offer, a limit above this deployment's ceiling, a name in use).
        "--exclude-checks",
        "positive_data_acceptance",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        "8",
        "--max-time",
        "45",
        "--request-timeout",
        "10",
        "--seed",
        "19",
        "--generation-deterministic",
        "--no-color",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS)},
    )
    out, _ = await process.communicate()
    text = out.decode(errors="replace")
    assert process.returncode == 0, text[-8000:]
    summary = re.search(
        r"(\d+) generated, (\d+) passed(?:, \d+ skipped)?\s*$", text, flags=re.MULTILINE
    )
    assert summary is not None, text[-8000:]
    generated, passed = map(int, summary.groups())
    assert generated == passed > 50, text[-8000:]


async def test_a_body_is_taken_only_as_the_document_types_it(broker: RunningBroker) -> None:
    """Found by schemathesis: `false` passed for an integer limit (as 0), `"true"` for a bool."""
    for body in ({"limits": {"max_tool_calls": False}}, {"sideband": "true"}, {"tools": "x"}):
        reply = await broker.request("POST", "/api/v1/sessions", json_body=body)
        assert (reply.status, reply.code) == (422, "invalid_request"), body
    fine = {"limits": {"max_tool_calls": 3, "on_tamper": "hangup"}, "metadata": {"n": 1.5}}
    assert (await broker.request("POST", "/api/v1/sessions", json_body=fine)).status == 201


async def test_a_nul_in_a_body_string_is_refused_not_a_server_error(broker: RunningBroker) -> None:
    """Found by schemathesis on PostgreSQL (its text cannot hold U+0000): a 500 at the insert."""
    bodies = (
        ("/api/v1/keys", {"name": "a\x00b", "scopes": ["admin"]}, "name"),
        ("/api/v1/sessions", {"metadata": {"k": "v\x00"}}, "metadata.k"),
        ("/api/v1/sessions", {"tools": ["lookup_order", "\x00"]}, "tools.1"),
    )
    for path, body, loc in bodies:
        reply = await broker.request("POST", path, json_body=body)
        assert (reply.status, reply.code) == (422, "invalid_request"), reply.text
        assert reply.json()["errors"] == [
            {"loc": loc, "msg": "a string may not contain U+0000 (NUL)"}
        ]


async def test_a_nul_in_the_url_is_refused_not_a_server_error(broker: RunningBroker) -> None:
    """The same on PostgreSQL for ids and filters: every route refuses it before its handler."""
    cursor = "WyIyMDI2LTAxLTAxVDAwOjAwOjAwKzAwOjAwIiwgImFcdTAwMDBiIl0"  # a NUL in its session id
    for method, path, code in (
        ("GET", "/api/v1/sessions/a%00b", "bad_request"),
        ("GET", "/api/v1/sessions?model=a%00b", "bad_request"),
        ("GET", "/api/v1/sessions?cursor=" + cursor, "invalid_query"),
        ("DELETE", "/api/v1/keys/a%00b", "bad_request"),
        ("GET", "/api/v1/sessions/a%00b/events", "bad_request"),
        ("POST", "/api/v1/sessions/a%00b/hangup", "bad_request"),
    ):
        reply = await broker.request(method, path)
        assert (reply.status, reply.code) == (400, code), (path, reply.text)
