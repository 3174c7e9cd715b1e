"""HTTP tool requests are signed, and the documented verifier tells real from forged.

The tool backend verifies with the algorithm written in docs/tool-webhooks.md (its own copy,
not the broker's code) and refuses what does not verify with 401.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from pathlib import Path

import aiohttp
import pytest

from broker import Secret, app_state
from broker.tools.signing import signature
from tests.conftest import BrokerFactory
from tests.support.broker_server import RunningBroker
from tests.support.flow import ask, connect_browser, one_tool_call, says
from tests.support.tool_backend import TOOL_SECRET, ToolBackend, verify_signature

ENV_SECRET = "env-provided-tool-secret-9f8e7d6c5b4a39281706"


async def test_a_signed_request_verifies_and_carries_who_is_asking(
    broker: RunningBroker, tool_backend: ToolBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """The signature is HMAC-SHA256(secret, f"{timestamp}.{raw_body}") over the exact bytes
    sent; the secret shows up in no log line and no repr."""
    caplog.set_level(logging.DEBUG)
    request = await one_tool_call(broker, tool_backend)
    assert request.verified
    headers = request.headers
    timestamp = headers["X-Broker-Timestamp"]
    assert abs(time.time() - int(timestamp)) < 30
    expected = hmac.new(
        TOOL_SECRET.encode(), timestamp.encode() + b"." + request.body, hashlib.sha256
    ).hexdigest()
    assert headers["X-Broker-Signature"] == f"v1={expected}"
    assert request.body == b'{"order_id":"42"}'
    assert headers["X-Tool-Name"] == "lookup_order" and headers["X-Call-ID"]
    assert TOOL_SECRET not in caplog.text
    registry = broker.app[app_state.TOOLS]
    assert TOOL_SECRET not in repr(registry["lookup_order"])
    assert "signed=True" in repr(registry["lookup_order"].executor)


async def test_one_changed_byte_fails_verification(
    broker: RunningBroker, tool_backend: ToolBackend
) -> None:
    """Replaying a real signed request with one body byte changed (headers kept) is refused."""
    request = await one_tool_call(broker, tool_backend)
    tampered = request.body.replace(b"42", b"43")
    assert tampered != request.body and len(tampered) == len(request.body)
    assert verify_signature(TOOL_SECRET.encode(), request.headers, request.body)
    assert not verify_signature(TOOL_SECRET.encode(), request.headers, tampered)
    forwarded = {
        name: request.headers[name]
        for name in ("X-Broker-Timestamp", "X-Broker-Signature", "X-Call-ID", "X-Session-ID")
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{tool_backend.base_url}/tools/lookup_order", data=tampered, headers=forwarded
        ) as resp:
            assert resp.status == 401
    assert [r.verified for r in tool_backend.calls_to("lookup_order")] == [True, False]


async def test_a_stale_timestamp_is_rejected(tool_backend: ToolBackend) -> None:
    """A correctly signed request from more than 5 minutes ago (or ahead) does not verify."""
    body = b'{"order_id":"42"}'
    now = int(time.time())

    def signed(at: int) -> dict[str, str]:
        return {
            "X-Broker-Timestamp": str(at),
            "X-Broker-Signature": signature(Secret(TOOL_SECRET), at, body),
        }

    assert verify_signature(TOOL_SECRET.encode(), signed(now - 299), body, now=now)
    assert not verify_signature(TOOL_SECRET.encode(), signed(now - 301), body, now=now)
    assert not verify_signature(TOOL_SECRET.encode(), signed(now + 301), body, now=now)
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{tool_backend.base_url}/tools/lookup_order", data=body, headers=signed(now - 600)
        ) as resp:
            assert resp.status == 401
    [request] = tool_backend.requests
    assert not request.verified


def _tools_file(tmp_path: Path, tool_backend: ToolBackend, signing: str) -> Path:
    path = tmp_path / "env_tools.toml"
    path.write_text(
        f"""
[tools.lookup_order]
http = "{tool_backend.base_url}/tools/lookup_order"
{signing}
[tools.lookup_order.parameters]
type = "object"
required = ["order_id"]
properties.order_id = {{ type = "string" }}
"""
    )
    return path


async def test_secret_env_names_the_variable_holding_the_secret(
    make_broker: BrokerFactory,
    tool_backend: ToolBackend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``secret_env = "NAME"`` signs with that variable's value (read when the broker starts)."""
    monkeypatch.setenv("LOOKUP_ORDER_SECRET", ENV_SECRET)
    tool_backend.secret = ENV_SECRET
    broker = await make_broker(
        tools_config=_tools_file(tmp_path, tool_backend, 'secret_env = "LOOKUP_ORDER_SECRET"')
    )
    request = await one_tool_call(broker, tool_backend)
    assert request.verified


async def test_a_backend_with_another_secret_refuses_the_call(
    broker: RunningBroker, tool_backend: ToolBackend
) -> None:
    """The verifier really checks the key: the broker's signature fails under another secret,
    and the model is told the tool failed."""
    tool_backend.secret = ENV_SECRET
    session = await broker.create_session(tools=["lookup_order"])
    browser = await connect_browser(broker, session)
    try:
        ask(browser, "lookup_order 42")
        await browser.wait_for("response.done", says("tool_http_error"))
    finally:
        await browser.close()
    [request] = tool_backend.requests
    assert not request.verified


async def test_an_explicitly_unsigned_tool_sends_no_signature(
    make_broker: BrokerFactory, tool_backend: ToolBackend, tmp_path: Path
) -> None:
    """``unsigned = true`` is the only way to send unsigned, and then no signature is sent."""
    tool_backend.accept_unsigned.add("lookup_order")
    broker = await make_broker(tools_config=_tools_file(tmp_path, tool_backend, "unsigned = true"))
    request = await one_tool_call(broker, tool_backend)
    assert not request.verified
    assert "X-Broker-Signature" not in request.headers
    assert "X-Broker-Timestamp" not in request.headers
