"""What an HTTP tool's 2xx answer must be, the Idempotency-Key it is sent, the ``idempotent``
key of the tools file, and the circuit-breaker settings."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from broker.settings import Secret, Settings, SettingsError
from broker.tools.executors import HttpExecutor, ToolContext, ToolExecutionError
from broker.tools.registry import ToolConfigError, load_registry
from broker.tools.signing import signature
from broker.webhooks.signature import verify

SECRET = "unit-test-tool-secret-0123456789abcdef"
CONTEXT = ToolContext("sess_1", "call_1", "x")
JSON = {"Content-Type": "application/json"}


async def _answer(response: httpx.Response) -> str:
    async with httpx.AsyncClient(transport=httpx.MockTransport(lambda r: response)) as http:
        return await HttpExecutor("http://tools.test/x", http, Secret(SECRET), 5.0)({}, CONTEXT)


@pytest.mark.parametrize(
    ("response", "output"),
    [
        (httpx.Response(200, content=b'{"ok":true}', headers=JSON), '{"ok":true}'),
        (httpx.Response(200, text="shipped"), "shipped"),
        (httpx.Response(201, content=b"no content type"), "no content type"),
        (
            httpx.Response(
                200,
                content="caf\u00e9".encode("latin-1"),
                headers={"Content-Type": "text/plain; charset=latin-1"},
            ),
            "caf\u00e9",
        ),
        (
            httpx.Response(
                200, content=b'{"a":1}', headers={"Content-Type": "application/problem+json"}
            ),
            '{"a":1}',
        ),
        (
            httpx.Response(200, content=b"   [1]", headers={"Content-Type": "application/json"}),
            "   [1]",
        ),
    ],
)
async def test_answers_within_the_contract_are_the_output_verbatim(
    response: httpx.Response, output: str
) -> None:
    assert await _answer(response) == output


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (httpx.Response(200), "the tool backend answered with an empty body"),
        (httpx.Response(204), "the tool backend answered with an empty body"),
        (httpx.Response(200, text=" \r\n\t"), "the tool backend answered with an empty body"),
        (
            httpx.Response(200, content=b"\xff\xfe\x00binary"),
            "the tool backend's answer is not valid text in its charset",
        ),
        (
            httpx.Response(
                200, content=b'{"status":', headers={"Content-Type": "application/json"}
            ),
            "the tool backend's answer is not valid JSON, though its Content-Type says JSON",
        ),
        (
            httpx.Response(
                200, content=b'{"x": NaN}', headers={"Content-Type": "application/json"}
            ),
            "the tool backend's answer is not valid JSON, though its Content-Type says JSON",
        ),
        (
            httpx.Response(
                200, content=b"<html>oops</html>", headers={"Content-Type": "application/json"}
            ),
            "the tool backend's answer is not valid JSON, though its Content-Type says JSON",
        ),
    ],
)
async def test_answers_breaking_the_contract_fail_tool_bad_response(
    response: httpx.Response, message: str
) -> None:
    with pytest.raises(ToolExecutionError) as err:
        await _answer(response)
    assert (err.value.code, err.value.message, err.value.http_status) == (
        "tool_bad_response",
        message,
        None,
    )


@pytest.mark.parametrize("status", [400, 404, 500, 503])
async def test_a_failed_status_is_kept_for_the_breaker(status: int) -> None:
    with pytest.raises(ToolExecutionError) as err:
        await _answer(httpx.Response(status, text="no"))
    assert (err.value.code, err.value.http_status) == ("tool_http_error", status)


async def test_every_request_carries_its_idempotency_key_signed_as_the_webhook_id() -> None:
    """The key names the call; the Standard Webhooks signature covers it (as ``Webhook-Id``),
    the legacy one only the timestamp and body."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, text="ok")

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        executor = HttpExecutor("http://tools.test/x", http, Secret(SECRET), 5.0)
        await executor({"a": 1}, CONTEXT)
    [request] = seen
    assert request.headers["Idempotency-Key"] == "sess_1:call_1"
    timestamp = int(request.headers["X-Broker-Timestamp"])
    assert request.headers["X-Broker-Signature"] == signature(
        Secret(SECRET), timestamp, request.content
    )
    assert request.headers["Webhook-Id"] == "sess_1:call_1"
    assert request.headers["Webhook-Timestamp"] == str(timestamp)
    assert verify(SECRET, request.headers, request.content, now=timestamp) == {"a": 1}


def _tools_file(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "tools.toml"
    path.write_text(
        f"""
[tools.t]
python = "broker.tools.demo:get_time"
{extra}
"""
    )
    return path


@pytest.mark.parametrize(("extra", "idempotent"), [("", False), ("idempotent = true", True)])
async def test_the_idempotent_key_defaults_to_false(
    tmp_path: Path, extra: str, idempotent: bool
) -> None:
    async with httpx.AsyncClient() as http:
        registry = load_registry(_tools_file(tmp_path, extra), http)
    assert registry["t"].idempotent is idempotent


@pytest.mark.parametrize("value", ['"yes"', "1"])
async def test_the_idempotent_key_must_be_a_boolean(tmp_path: Path, value: str) -> None:
    async with httpx.AsyncClient() as http:
        with pytest.raises(ToolConfigError, match="idempotent must be true or false"):
            load_registry(_tools_file(tmp_path, f"idempotent = {value}"), http)


ENV = {"BROKER_SIGNING_KEY": "k" * 32}


def test_breaker_settings_defaults_and_overrides() -> None:
    defaults = Settings.from_env(ENV)
    assert (defaults.tool_breaker_failures, defaults.tool_breaker_cooldown_s) == (5, 30.0)
    custom = Settings.from_env(
        {**ENV, "BROKER_TOOL_BREAKER_FAILURES": "0", "BROKER_TOOL_BREAKER_COOLDOWN_S": "2.5"}
    )
    assert (custom.tool_breaker_failures, custom.tool_breaker_cooldown_s) == (0, 2.5)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BROKER_TOOL_BREAKER_FAILURES", "-1"),
        ("BROKER_TOOL_BREAKER_FAILURES", "1001"),
        ("BROKER_TOOL_BREAKER_FAILURES", "many"),
        ("BROKER_TOOL_BREAKER_COOLDOWN_S", "0"),
        ("BROKER_TOOL_BREAKER_COOLDOWN_S", "nan"),
        ("BROKER_TOOL_BREAKER_COOLDOWN_S", "3601"),
    ],
)
def test_bad_breaker_settings_are_refused_by_name(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({**ENV, name: value})
