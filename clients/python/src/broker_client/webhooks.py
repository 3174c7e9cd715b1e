"""Check that a request came from the broker: its webhooks, and its calls to HTTP tools.

Standard library only (no ``httpx`` either), so a receiver can import this module alone.

**Webhooks** (``session.ended``) follow `Standard Webhooks <https://www.standardwebhooks.com/>`_:
``Webhook-Id``, ``Webhook-Timestamp`` (Unix seconds) and ``Webhook-Signature: v1,<base64
HMAC-SHA256(key, "{id}.{timestamp}.{raw body}")>`` (space-separated when several). The key is
the secret's UTF-8 bytes, or for a ``whsec_<base64>`` secret the decoded bytes.

**Tool calls** carry the same three headers from brokers that sign them that way, and
``X-Broker-Timestamp`` with ``X-Broker-Signature: v1=<hex HMAC-SHA256(secret,
"{timestamp}.{raw body}")>`` (the older scheme, which such brokers still send for a release).
:func:`verify_tool_call` checks the Standard Webhooks signature when the request has one, and
the older one otherwise.

Either way: verify the **raw** body bytes, before parsing them; a timestamp outside the
tolerance is refused (a replay of an old, validly signed request).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

HEADER_ID: Final = "Webhook-Id"
HEADER_TIMESTAMP: Final = "Webhook-Timestamp"
HEADER_SIGNATURE: Final = "Webhook-Signature"
TOOL_TIMESTAMP_HEADER: Final = "X-Broker-Timestamp"
TOOL_SIGNATURE_HEADER: Final = "X-Broker-Signature"
DEFAULT_TOLERANCE_S: Final = 300.0
"""How far a request's timestamp may be from the receiver's clock, either way."""
SECRET_PREFIX: Final = "whsec_"


class WebhookVerificationError(ValueError):
    """The request is not authentic or not fresh.

    The message says which check failed, never the expected signature.
    """


@dataclass(frozen=True)
class WebhookEvent:
    """A verified webhook: ``type`` is ``session.ended`` today; ``data`` its fields."""

    id: str
    type: str
    created_at: str
    data: dict[str, Any]


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


def _lowered(headers: Mapping[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def _raw(body: bytes | str) -> bytes:
    return body.encode() if isinstance(body, str) else bytes(body)


def _fresh(raw_timestamp: str, tolerance_s: float, now: float | None) -> int:
    if not raw_timestamp.isascii() or not raw_timestamp.isdigit():
        raise WebhookVerificationError("malformed timestamp")
    timestamp = int(raw_timestamp)
    clock = time.time() if now is None else now
    if abs(clock - timestamp) > tolerance_s:
        raise WebhookVerificationError("timestamp outside the tolerance")
    return timestamp


def _check_standard(
    secret: str, lowered: Mapping[str, str], raw: bytes, tolerance_s: float, now: float | None
) -> None:
    msg_id = lowered.get(HEADER_ID.lower())
    raw_timestamp = lowered.get(HEADER_TIMESTAMP.lower())
    signatures = lowered.get(HEADER_SIGNATURE.lower())
    if not msg_id or not raw_timestamp or not signatures:
        raise WebhookVerificationError("missing webhook signature headers")
    timestamp = _fresh(raw_timestamp, tolerance_s, now)
    signed = f"{msg_id}.{timestamp}.".encode() + raw
    digest = hmac.new(signing_key(secret), signed, hashlib.sha256).digest()
    expected = b"v1," + base64.b64encode(digest)
    # Every entry is compared (no early exit), each in constant time.
    matches = [hmac.compare_digest(c.encode(), expected) for c in signatures.split()]
    if not any(matches):
        raise WebhookVerificationError("no matching signature")


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(raw)
    except ValueError:
        raise WebhookVerificationError("the body is not JSON") from None
    if not isinstance(payload, dict):
        raise WebhookVerificationError("the body is not a JSON object")
    return payload


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes | str,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    *,
    now: float | None = None,
) -> dict[str, Any]:
    """Check a webhook delivery and return its parsed JSON payload.

    Args:
        secret: the broker's ``BROKER_WEBHOOK_SECRET``.
        headers: the request's headers (any capitalisation).
        body: the raw request body, exactly as received.
        tolerance_s: the oldest (and furthest in the future) timestamp accepted, in seconds.
        now: the current Unix time (default: the clock).

    Raises:
        WebhookVerificationError: a header is missing or malformed, the timestamp is outside
            the tolerance, no signature matches, or the body is not a JSON object.
    """
    raw = _raw(body)
    _check_standard(secret, _lowered(headers), raw, tolerance_s, now)
    return _json_object(raw)


def verify_event(
    secret: str,
    headers: Mapping[str, str],
    body: bytes | str,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    *,
    now: float | None = None,
) -> WebhookEvent:
    """:func:`verify`, returning the event typed (its ``id`` is the same on every retry).

    Raises:
        WebhookVerificationError: as :func:`verify`, or the payload lacks the event fields.
    """
    payload = verify(secret, headers, body, tolerance_s, now=now)
    fields = (payload.get("id"), payload.get("type"), payload.get("created_at"))
    data = payload.get("data")
    if not all(isinstance(f, str) for f in fields) or not isinstance(data, dict):
        raise WebhookVerificationError("the body is not a webhook event")
    return WebhookEvent(
        id=payload["id"], type=payload["type"], created_at=payload["created_at"], data=data
    )


def verify_tool_call(
    secret: str,
    headers: Mapping[str, str],
    body: bytes | str,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    *,
    now: float | None = None,
) -> None:
    """Check that a request to an HTTP tool came from the broker.

    Args:
        secret: the tool's signing secret (``secret`` / ``secret_env`` in ``tools.toml``).
        headers: the request's headers (any capitalisation).
        body: the raw request body, exactly as received.
        tolerance_s: the oldest (and furthest in the future) timestamp accepted, in seconds.
        now: the current Unix time (default: the clock).

    Raises:
        WebhookVerificationError: unsigned, stale, or no signature matches. A request with
            Standard Webhooks headers is judged by them alone: stripping them to fall back
            to the older scheme would still need that scheme's valid signature.
    """
    lowered = _lowered(headers)
    raw = _raw(body)
    if HEADER_SIGNATURE.lower() in lowered:
        _check_standard(secret, lowered, raw, tolerance_s, now)
        return
    raw_timestamp = lowered.get(TOOL_TIMESTAMP_HEADER.lower())
    signature = lowered.get(TOOL_SIGNATURE_HEADER.lower())
    if not raw_timestamp or not signature:
        raise WebhookVerificationError("missing tool-call signature headers")
    _fresh(raw_timestamp, tolerance_s, now)
    message = raw_timestamp.encode() + b"." + raw
    expected = "v1=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(signature.encode(), expected.encode()):
        raise WebhookVerificationError("no matching signature")
