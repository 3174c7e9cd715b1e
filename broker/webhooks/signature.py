"""Sign and verify the broker's webhooks and tool calls: the Standard Webhooks scheme.

Standard Webhooks (https://www.standardwebhooks.com/) is an open specification with
verifier libraries for many languages (``standardwebhooks`` on PyPI and npm). It is not
Stripe's scheme: Stripe sends one ``Stripe-Signature: t=<timestamp>,v1=<hex>`` header over
``"{timestamp}.{body}"``; here the message id is signed too and the digest is base64.

Every delivery carries three headers:

- ``Webhook-Id``: the message's id, the same on every retry (a ``session.ended`` event's
  ``id``; a tool call's ``Idempotency-Key``): a receiver that already handled it should
  answer 2xx and do nothing;
- ``Webhook-Timestamp``: when this attempt was signed, in Unix seconds;
- ``Webhook-Signature``: ``v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>``, a
  space-separated list (today one entry; a key rotation would send two).

The key comes from ``BROKER_WEBHOOK_SECRET`` (a tool's own secret for its calls): a secret
that starts with ``whsec_`` is the base64 of the key after that prefix (the libraries take
it as it is: ``Webhook(secret)``); any other secret is used as its UTF-8 bytes (give the
libraries those bytes: ``Webhook(secret.encode())`` in Python, ``new Webhook(new
TextEncoder().encode(secret), {format: "raw"})`` in JavaScript).

A receiver checks the signature over the **raw** body bytes, before parsing them, and
refuses a timestamp outside its tolerance (a replay of an old, validly signed delivery)::

    from broker.webhooks.signature import WebhookVerificationError, verify

    try:
        event = verify(secret, request.headers, await request.read())
    except WebhookVerificationError:
        return web.Response(status=400)

This module uses the standard library only, so an app may also copy it as it is.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any, Final

HEADER_ID: Final = "Webhook-Id"
HEADER_TIMESTAMP: Final = "Webhook-Timestamp"
HEADER_SIGNATURE: Final = "Webhook-Signature"
SIGNATURE_VERSION: Final = "v1"
DEFAULT_TOLERANCE_S: Final = 300.0
"""How far a delivery's timestamp may be from the receiver's clock, either way."""
SECRET_PREFIX: Final = "whsec_"
MIN_KEY_BYTES: Final = 24
"""The shortest key a ``whsec_`` secret may hold (the Standard Webhooks minimum)."""


class WebhookVerificationError(ValueError):
    """The delivery is not authentic or not fresh.

    The message says which check failed, never the expected signature.
    """


def signing_key(secret: str) -> bytes:
    """The HMAC key of ``secret``: base64-decoded after ``whsec_``, else its UTF-8 bytes.

    Raises:
        ValueError: a ``whsec_`` secret whose rest is not base64.
    """
    if secret.startswith(SECRET_PREFIX):
        try:
            return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
        except binascii.Error:
            raise ValueError("a whsec_ secret must be base64 after the prefix") from None
    return secret.encode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``Webhook-Signature`` value (``v1,<base64>``) of one delivery attempt."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(signing_key(secret), signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def signed_headers(
    secret: str, msg_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """The three signature headers for ``body``, signed now (or at ``timestamp``)."""
    stamp = int(time.time()) if timestamp is None else timestamp
    return {
        HEADER_ID: msg_id,
        HEADER_TIMESTAMP: str(stamp),
        HEADER_SIGNATURE: sign(secret, msg_id, stamp, body),
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes | str,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    *,
    now: float | None = None,
) -> dict[str, Any]:
    """Check a delivery and return its parsed JSON payload.

    Args:
        secret: the shared ``BROKER_WEBHOOK_SECRET``.
        headers: the request's headers (any capitalisation).
        body: the raw request body, exactly as received.
        tolerance_s: the oldest (and furthest in the future) timestamp accepted, in seconds.
        now: the current Unix time (default: the clock).

    Raises:
        WebhookVerificationError: a header is missing or malformed, the timestamp is outside
            the tolerance, no signature matches, or the body is not a JSON object.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get(HEADER_ID.lower())
    raw_timestamp = lowered.get(HEADER_TIMESTAMP.lower())
    signatures = lowered.get(HEADER_SIGNATURE.lower())
    if not msg_id or not raw_timestamp or not signatures:
        raise WebhookVerificationError("missing webhook signature headers")
    if not raw_timestamp.isascii() or not raw_timestamp.isdigit():
        raise WebhookVerificationError("malformed webhook timestamp")
    timestamp = int(raw_timestamp)
    clock = time.time() if now is None else now
    if abs(clock - timestamp) > tolerance_s:
        raise WebhookVerificationError("webhook timestamp outside the tolerance")
    raw = body.encode() if isinstance(body, str) else bytes(body)
    expected = sign(secret, msg_id, timestamp, raw).encode()
    if not any(
        hmac.compare_digest(candidate.encode(), expected) for candidate in signatures.split()
    ):
        raise WebhookVerificationError("no matching webhook signature")
    try:
        payload = json.loads(raw)
    except ValueError:
        raise WebhookVerificationError("the webhook body is not JSON") from None
    if not isinstance(payload, dict):
        raise WebhookVerificationError("the webhook body is not a JSON object")
    return payload
