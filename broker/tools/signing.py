"""Signatures on requests to HTTP tools, so a tool backend knows the broker sent them.

Every signed request carries two schemes, both over the raw body bytes as sent (verification
is described in ``docs/tool-webhooks.md``):

**Standard Webhooks** (https://www.standardwebhooks.com/), the same scheme as the broker's
``session.ended`` webhooks (:mod:`broker.webhooks.signature`), so one verifier (or the
``standardwebhooks`` libraries) serves both::

    Webhook-Id: <session_id>:<call_id>        the Idempotency-Key: the same on a re-send
    Webhook-Timestamp: <unix seconds>
    Webhook-Signature: v1,<base64 HMAC-SHA256(key, f"{id}.{timestamp}.{raw_body}")>

The key is derived from the tool's secret as for ``BROKER_WEBHOOK_SECRET``: a ``whsec_``
secret is the base64 of the key after the prefix, any other secret is its UTF-8 bytes.

**Legacy** ``v1``, deprecated: still sent by 0.1.x so that backends written against it keep
working while they move, and no longer sent from 0.2.0 (:data:`LEGACY_REMOVED_IN`)::

    X-Broker-Timestamp: <unix seconds>
    X-Broker-Signature: v1=<hex HMAC-SHA256(secret as UTF-8, f"{timestamp}.{raw_body}")>

Its key is always the secret's UTF-8 text, ``whsec_`` or not: what it was before.

The timestamp is signed with the body so a captured request cannot be replayed after the
backend's tolerance window (5 minutes recommended); both schemes share one timestamp.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Final

from broker.settings import Secret
from broker.webhooks.signature import signed_headers

TIMESTAMP_HEADER: Final = "X-Broker-Timestamp"
SIGNATURE_HEADER: Final = "X-Broker-Signature"
SCHEME: Final = "v1"
MIN_SECRET_CHARS: Final = 32
LEGACY_REMOVED_IN: Final = "0.2.0"
"""The release that stops sending ``X-Broker-Timestamp`` and ``X-Broker-Signature``."""


def signature(secret: Secret, timestamp: int, body: bytes) -> str:
    """The legacy ``X-Broker-Signature`` value for ``body`` sent at ``timestamp``: ``v1=<hex>``."""
    message = str(timestamp).encode("ascii") + b"." + body
    digest = hmac.new(secret.reveal().encode("utf-8"), message, hashlib.sha256).hexdigest()
    return f"{SCHEME}={digest}"


def signature_headers(
    secret: Secret, body: bytes, msg_id: str, now: float | None = None
) -> dict[str, str]:
    """Every signature header for a request about to be sent (``now`` defaults to the clock).

    Args:
        secret: the tool's secret.
        body: the exact bytes to be sent.
        msg_id: the ``Webhook-Id``: the call's ``Idempotency-Key``, so a re-sent call keeps it.
        now: the signing time (default: the clock).
    """
    timestamp = int(time.time() if now is None else now)
    return {
        **signed_headers(secret.reveal(), msg_id, body, timestamp),
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature(secret, timestamp, body),
    }
