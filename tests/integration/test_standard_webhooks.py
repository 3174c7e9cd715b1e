"""Session webhooks and tool calls are Standard Webhooks that the reference library verifies.

The verifier here is the ``standardwebhooks`` package (what a receiver would install), given
the broker's real requests as the loopback test servers captured them: a ``session.ended``
delivery (tests/support/webhook_receiver.py) and a tool call (tests/support/tool_backend.py).
A tampered copy of each (body, id or timestamp changed) must be refused, and a tool call
still carries the deprecated ``X-Broker-Signature`` that today's backends check.
"""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path
from typing import Any

import pytest
import standardwebhooks

from broker import Secret
from broker.tools.signing import signature_headers
from broker.webhooks.signature import verify
from tests.conftest import BrokerFactory
from tests.support.flow import lookup_42_and_leave, one_tool_call, wait_session_ended
from tests.support.tool_backend import TOOL_SECRET, ToolBackend, verify_signature
from tests.support.webhook_receiver import Delivery, WebhookReceiver, quick_webhooks

WHSEC = "whsec_" + base64.b64encode(b"standard-webhooks-test-key-32-by").decode()
"""A secret in the Standard Webhooks form: the libraries take it as it is."""
PLAIN_SECRET = "plain-webhook-secret-" + "p" * 24
"""Any other secret: its UTF-8 bytes are the key, handed to the libraries as bytes."""
SIGNATURE = re.compile(r"v1,[A-Za-z0-9+/]{43}=")
"""One Standard Webhooks signature: version, comma, base64 of 32 bytes."""


def reference_verifier(secret: str) -> standardwebhooks.Webhook:
    """How the docs tell a receiver to build the library's verifier from a broker secret."""
    return standardwebhooks.Webhook(secret if secret.startswith("whsec_") else secret.encode())


def tampered_copies(
    headers: dict[str, str], body: bytes
) -> dict[str, tuple[dict[str, str], bytes]]:
    """The request changed in one signed part each: the body, the id, the timestamp."""
    lowered = {name.lower(): value for name, value in headers.items()}
    flipped = body.replace(b"4", b"5", 1) if b"4" in body else body[:-1] + b" }"
    assert flipped != body
    return {
        "body": (lowered, flipped),
        "id": (lowered | {"webhook-id": lowered["webhook-id"] + "x"}, body),
        "timestamp": (
            lowered | {"webhook-timestamp": str(int(lowered["webhook-timestamp"]) - 1)},
            body,
        ),
    }


def assert_standard_shape(headers: dict[str, str]) -> None:
    """The three headers the specification names, in its formats."""
    lowered = {name.lower(): value for name, value in headers.items()}
    assert lowered["webhook-id"]
    stamp = lowered["webhook-timestamp"]
    assert stamp.isdigit() and abs(int(stamp) - time.time()) < 30  # whole seconds, now
    assert all(SIGNATURE.fullmatch(part) for part in lowered["webhook-signature"].split(" "))


def assert_reference_refuses_tampering(
    webhook: standardwebhooks.Webhook, headers: dict[str, str], body: bytes
) -> None:
    for part, (bad_headers, bad_body) in tampered_copies(headers, body).items():
        with pytest.raises(standardwebhooks.WebhookVerificationError):
            webhook.verify(bad_body, bad_headers)
            pytest.fail(f"a changed {part} verified")


async def ended_delivery(
    make_broker: BrokerFactory, receiver: WebhookReceiver, secret: str
) -> tuple[dict[str, Any], Delivery]:
    broker = await make_broker(**quick_webhooks(receiver.url, secret))
    session = await broker.create_session(tools=["lookup_order"])
    await lookup_42_and_leave(broker, session)
    await wait_session_ended(broker, session["id"], timeout=15)
    [delivery] = await receiver.wait_deliveries(1)
    return session, delivery


@pytest.mark.parametrize("secret", [WHSEC, PLAIN_SECRET], ids=["whsec", "plain"])
async def test_a_real_session_ended_delivery_verifies_with_standardwebhooks(
    make_broker: BrokerFactory, receiver: WebhookReceiver, secret: str
) -> None:
    """``Webhook(secret).verify(body, headers)`` returns the event; a changed body, id or
    timestamp is refused; the broker's own verifier agrees."""
    session, delivery = await ended_delivery(make_broker, receiver, secret)
    assert_standard_shape(delivery.headers)
    webhook = reference_verifier(secret)
    event = webhook.verify(delivery.body, delivery.headers)
    assert (event["type"], event["data"]["session_id"]) == ("session.ended", session["id"])
    assert event["id"] == delivery.id
    assert verify(secret, delivery.headers, delivery.body) == event
    assert_reference_refuses_tampering(webhook, delivery.headers, delivery.body)


def whsec_tools(tool_backend: ToolBackend, tmp_path: Path) -> Path:
    tool_backend.secret = WHSEC
    path = tmp_path / "whsec-tools.toml"
    path.write_text(tool_backend.config_toml())
    return path


@pytest.mark.parametrize("secret", [WHSEC, TOOL_SECRET], ids=["whsec", "plain"])
async def test_a_real_tool_call_verifies_with_standardwebhooks_and_the_legacy_verifier(
    make_broker: BrokerFactory, tool_backend: ToolBackend, tmp_path: Path, secret: str
) -> None:
    """The same request carries both schemes at one timestamp: the reference library
    verifies the Standard Webhooks one (its id is the call's ``Idempotency-Key``), and the
    documented ``X-Broker-Signature`` check of today's backends still passes, keyed by the
    secret's text even when it is a ``whsec_`` secret."""
    overrides = {"tools_config": whsec_tools(tool_backend, tmp_path)} if secret == WHSEC else {}
    request = await one_tool_call(await make_broker(**overrides), tool_backend)
    headers, body = request.headers, request.body
    assert request.verified and request.standard_verified  # as the backend saw it, on arrival
    assert_standard_shape(headers)
    assert headers["Webhook-Id"] == headers["Idempotency-Key"]
    assert headers["Webhook-Timestamp"] == headers["X-Broker-Timestamp"]
    webhook = reference_verifier(secret)
    assert webhook.verify(body, headers) == {"order_id": "42"}
    assert verify_signature(secret.encode(), headers, body)
    assert_reference_refuses_tampering(webhook, headers, body)


def test_a_plain_secret_given_to_the_library_as_a_string_does_not_verify() -> None:
    """Why the docs say "as bytes": the library reads a string without ``whsec_`` as base64,
    a different key, so the broker's signature must not verify under it."""
    headers = signature_headers(Secret(TOOL_SECRET), b"{}", "sess_1:call_1")
    assert reference_verifier(TOOL_SECRET).verify(b"{}", headers) == {}
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(TOOL_SECRET).verify(b"{}", headers)
