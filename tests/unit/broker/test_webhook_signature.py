"""Webhook signatures (broker/webhooks/signature.py): the Standard Webhooks scheme."""

from __future__ import annotations

import base64
import json

import pytest

from broker.webhooks.signature import (
    WebhookVerificationError,
    sign,
    signed_headers,
    signing_key,
    verify,
)

# The Standard Webhooks specification's published example: computed by their reference
# implementation, not ours.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

SECRET = "a-webhook-secret-of-at-least-32-characters"
BODY = json.dumps({"id": "wh_1", "type": "session.ended", "data": {"n": 1}}).encode()
NOW = 1_700_000_000


def test_a_whsec_secret_signs_as_the_standard_webhooks_reference_does() -> None:
    assert sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE
    headers = {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TIMESTAMP),
        "webhook-signature": VECTOR_SIGNATURE,
    }
    assert verify(VECTOR_SECRET, headers, VECTOR_BODY, now=VECTOR_TIMESTAMP + 10) == {
        "test": 2432232314
    }


def test_key_derivation() -> None:
    assert signing_key(SECRET) == SECRET.encode()
    assert signing_key("whsec_" + base64.b64encode(b"k" * 24).decode()) == b"k" * 24
    with pytest.raises(ValueError):
        signing_key("whsec_not base64!")


def test_round_trip_with_any_header_capitalisation() -> None:
    headers = signed_headers(SECRET, "wh_1", BODY, timestamp=NOW)
    assert set(headers) == {"Webhook-Id", "Webhook-Timestamp", "Webhook-Signature"}
    assert headers["Webhook-Signature"].startswith("v1,")
    payload = verify(SECRET, headers, BODY, now=NOW)
    assert payload["type"] == "session.ended"
    lowered = {k.lower(): v for k, v in headers.items()}
    assert verify(SECRET, lowered, BODY.decode(), now=NOW) == payload


def test_one_matching_signature_of_several_is_enough() -> None:
    headers = signed_headers(SECRET, "wh_1", BODY, timestamp=NOW)
    headers["Webhook-Signature"] = "v1,b3RoZXI= " + headers["Webhook-Signature"]
    verify(SECRET, headers, BODY, now=NOW)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("body", "no matching"),
        ("id", "no matching"),
        ("timestamp", "no matching"),
        ("secret", "no matching"),
        ("version", "no matching"),
    ],
)
def test_anything_changed_is_refused(change: str, message: str) -> None:
    headers = signed_headers(SECRET, "wh_1", BODY, timestamp=NOW)
    body, secret = BODY, SECRET
    if change == "body":
        body = BODY.replace(b'"n": 1', b'"n": 2')
    elif change == "id":
        headers["Webhook-Id"] = "wh_2"
    elif change == "timestamp":
        headers["Webhook-Timestamp"] = str(NOW + 1)
    elif change == "secret":
        secret = SECRET + "x"
    else:
        headers["Webhook-Signature"] = headers["Webhook-Signature"].replace("v1,", "v2,")
    with pytest.raises(WebhookVerificationError, match=message):
        verify(secret, headers, body, now=NOW)


def test_an_old_or_future_timestamp_is_refused_even_when_signed() -> None:
    old = signed_headers(SECRET, "wh_1", BODY, timestamp=NOW - 301)
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify(SECRET, old, BODY, now=NOW)
    verify(SECRET, old, BODY, tolerance_s=600, now=NOW)
    future = signed_headers(SECRET, "wh_1", BODY, timestamp=NOW + 301)
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify(SECRET, future, BODY, now=NOW)


@pytest.mark.parametrize("drop", ["Webhook-Id", "Webhook-Timestamp", "Webhook-Signature"])
def test_missing_headers_are_refused(drop: str) -> None:
    headers = signed_headers(SECRET, "wh_1", BODY, timestamp=NOW)
    del headers[drop]
    with pytest.raises(WebhookVerificationError, match="missing"):
        verify(SECRET, headers, BODY, now=NOW)


def test_a_malformed_timestamp_or_a_body_that_is_no_object_is_refused() -> None:
    headers = signed_headers(SECRET, "wh_1", BODY, timestamp=NOW)
    headers["Webhook-Timestamp"] = "-1"
    with pytest.raises(WebhookVerificationError, match="malformed"):
        verify(SECRET, headers, BODY, now=NOW)
    listed = signed_headers(SECRET, "wh_1", b"[1]", timestamp=NOW)
    with pytest.raises(WebhookVerificationError, match="JSON object"):
        verify(SECRET, listed, b"[1]", now=NOW)


def test_the_error_never_carries_the_expected_signature() -> None:
    headers = signed_headers(SECRET, "wh_1", BODY, timestamp=NOW)
    expected = headers["Webhook-Signature"]
    headers["Webhook-Signature"] = "v1,AAAA"
    with pytest.raises(WebhookVerificationError) as caught:
        verify(SECRET, headers, BODY, now=NOW)
    assert expected.split(",", 1)[1] not in str(caught.value)
