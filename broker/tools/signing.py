"""HMAC signatures on requests to HTTP tools, so a tool backend knows the broker sent them.

Scheme ``v1`` (verification is described in ``docs/tool-webhooks.md``)::

    X-Broker-Timestamp: <unix seconds>
    X-Broker-Signature: v1=<hex HMAC-SHA256(secret, f"{timestamp}.{raw_body}")>

The body is signed byte for byte as sent; the timestamp is signed with it so a captured
request cannot be replayed after the backend's tolerance window (5 minutes recommended).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Final

from broker.settings import Secret

TIMESTAMP_HEADER: Final = "X-Broker-Timestamp"
SIGNATURE_HEADER: Final = "X-Broker-Signature"
SCHEME: Final = "v1"
MIN_SECRET_CHARS: Final = 32


def signature(secret: Secret, timestamp: int, body: bytes) -> str:
    """The ``X-Broker-Signature`` value for ``body`` sent at ``timestamp``: ``v1=<hex>``."""
    message = str(timestamp).encode("ascii") + b"." + body
    digest = hmac.new(secret.reveal().encode("utf-8"), message, hashlib.sha256).hexdigest()
    return f"{SCHEME}={digest}"


def signature_headers(secret: Secret, body: bytes, now: float | None = None) -> dict[str, str]:
    """Both signature headers for a request about to be sent (``now`` defaults to the clock)."""
    timestamp = int(time.time() if now is None else now)
    return {
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature(secret, timestamp, body),
    }
