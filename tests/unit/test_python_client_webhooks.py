"""broker_client's verifier agrees with the Standard Webhooks reference library
(``standardwebhooks``): what the library signs verifies here, for a ``whsec_`` secret and
for a plain one (its UTF-8 bytes are the key), several signatures in one header included."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from broker_client.webhooks import WebhookVerificationError, verify, verify_tool_call
from standardwebhooks import Webhook

BODY = b'{"id":"wh_1","type":"session.ended","created_at":"2026-12-04T00:00:00+00:00","data":{}}'
WHSEC = "whsec_" + base64.b64encode(b"k" * 32).decode()
PLAIN = "plain-secret-" + "p" * 30


def _headers(library: Webhook, msg_id: str, at: datetime) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": library.sign(msg_id, at, BODY.decode()),
    }


@pytest.mark.parametrize(
    ("secret", "library"),
    [(WHSEC, Webhook(WHSEC)), (PLAIN, Webhook(PLAIN.encode()))],
    ids=["whsec", "plain"],
)
def test_what_the_reference_library_signs_verifies(secret: str, library: Webhook) -> None:
    now = datetime.now(UTC)
    headers = _headers(library, "wh_1", now)
    assert verify(secret, headers, BODY)["id"] == "wh_1"
    verify_tool_call(secret, headers, BODY)
    # The library verifies the same request: the two agree on what is valid.
    assert library.verify(BODY, headers)["id"] == "wh_1"
    rotated = headers | {"webhook-signature": "v1,b3RoZXI= " + headers["webhook-signature"]}
    assert verify(secret, rotated, BODY)["id"] == "wh_1"
    with pytest.raises(WebhookVerificationError):
        verify(secret, headers | {"webhook-id": "wh_2"}, BODY)
    with pytest.raises(WebhookVerificationError):
        verify("other-" + secret, headers, BODY)
