"""Webhook retry policy and settings (broker/webhooks/sender.py, broker/settings.py)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from broker import Secret, Settings, SettingsError
from broker.webhooks.sender import (
    AttemptResult,
    WebhookConfig,
    parse_retry_after,
    retry_delay,
)

SECRET = "s" * 32
BASE_ENV = {"BROKER_SIGNING_KEY": "k" * 32}


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (None, True),  # no answer: connection error or timeout
        (408, True),
        (429, True),
        (500, True),
        (503, True),
        (400, False),
        (401, False),
        (404, False),
        (410, False),
        (301, False),  # redirects are not followed
    ],
)
def test_what_is_retried(status: int | None, retryable: bool) -> None:
    assert AttemptResult(status).retryable is retryable


def test_2xx_is_delivered() -> None:
    assert AttemptResult(200).delivered and AttemptResult(204).delivered
    assert not AttemptResult(None, "timeout").delivered and not AttemptResult(302).delivered


def test_backoff_doubles_up_to_the_cap_with_jitter_down_to_half() -> None:
    config = WebhookConfig("http://127.0.0.1/", Secret(SECRET), backoff_s=1.0, backoff_max_s=10.0)
    no_answer = AttemptResult(None, "timeout")
    assert [retry_delay(config, n, no_answer, rand=lambda: 1.0) for n in range(1, 7)] == [
        1.0,
        2.0,
        4.0,
        8.0,
        10.0,
        10.0,
    ]
    assert retry_delay(config, 3, no_answer, rand=lambda: 0.0) == 2.0
    assert retry_delay(config, 10_000, no_answer, rand=lambda: 0.5) == 7.5  # no overflow


def test_retry_after_as_seconds_or_a_date() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30)), now) == 30.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30)), now) == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-5") is None


def test_retry_after_is_honoured_within_the_cap() -> None:
    config = WebhookConfig("http://127.0.0.1/", Secret(SECRET), backoff_s=1.0, backoff_max_s=60.0)
    half = lambda: 0.0  # noqa: E731 - the jitter pinned at its low end
    assert retry_delay(config, 1, AttemptResult(503), half) == 0.5
    assert retry_delay(config, 1, AttemptResult(429, retry_after_s=20.0), half) == 20.0
    assert retry_delay(config, 1, AttemptResult(429, retry_after_s=3600.0), half) == 60.0
    # A Retry-After shorter than the backoff does not make the broker retry sooner.
    assert retry_delay(config, 5, AttemptResult(503, retry_after_s=1.0), half) == 8.0


def test_webhook_settings_from_the_environment() -> None:
    assert Settings.from_env(BASE_ENV).webhook_url is None
    settings = Settings.from_env(
        BASE_ENV
        | {
            "BROKER_WEBHOOK_URL": "https://billing.example/hooks",
            "BROKER_WEBHOOK_SECRET": SECRET,
            "BROKER_WEBHOOK_MAX_ATTEMPTS": "3",
            "BROKER_WEBHOOK_BACKOFF_S": "0.5",
            "BROKER_WEBHOOK_BACKOFF_MAX_S": "5",
            "BROKER_WEBHOOK_TIMEOUT": "2",
        }
    )
    assert settings.webhook_secret == Secret(SECRET)
    assert SECRET not in repr(settings)
    config = WebhookConfig.from_settings(settings)
    assert config is not None
    assert (config.max_attempts, config.backoff_s, config.backoff_max_s, config.timeout_s) == (
        3,
        0.5,
        5.0,
        2.0,
    )
    assert config.host == "billing.example"
    assert SECRET not in repr(config)
    whsec = "whsec_" + base64.b64encode(b"k" * 24).decode()
    assert Settings.from_env(
        BASE_ENV | {"BROKER_WEBHOOK_URL": "http://127.0.0.1:9/x", "BROKER_WEBHOOK_SECRET": whsec}
    ).webhook_secret == Secret(whsec)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BROKER_WEBHOOK_URL": "https://h.example/"}, "BROKER_WEBHOOK_SECRET is not"),
        ({"BROKER_WEBHOOK_SECRET": SECRET}, "BROKER_WEBHOOK_URL is not"),
        ({"BROKER_WEBHOOK_URL": "ftp://h.example/", "BROKER_WEBHOOK_SECRET": SECRET}, "http"),
        (
            {"BROKER_WEBHOOK_URL": "https://u:p@h.example/", "BROKER_WEBHOOK_SECRET": SECRET},
            "credentials",
        ),
        ({"BROKER_WEBHOOK_URL": "https://h.example/", "BROKER_WEBHOOK_SECRET": "short"}, "32"),
        (
            {"BROKER_WEBHOOK_URL": "https://h.example/", "BROKER_WEBHOOK_SECRET": "whsec_!!"},
            "base64",
        ),
        (
            {
                "BROKER_WEBHOOK_URL": "https://h.example/",
                "BROKER_WEBHOOK_SECRET": "whsec_" + base64.b64encode(b"k" * 8).decode(),
            },
            "24 bytes",
        ),
        (
            {
                "BROKER_WEBHOOK_URL": "https://h.example/",
                "BROKER_WEBHOOK_SECRET": SECRET,
                "BROKER_WEBHOOK_MAX_ATTEMPTS": "0",
            },
            "MAX_ATTEMPTS",
        ),
        (
            {
                "BROKER_WEBHOOK_URL": "https://h.example/",
                "BROKER_WEBHOOK_SECRET": SECRET,
                "BROKER_WEBHOOK_BACKOFF_S": "10",
                "BROKER_WEBHOOK_BACKOFF_MAX_S": "5",
            },
            "BACKOFF_MAX_S",
        ),
    ],
)
def test_bad_webhook_settings_are_refused_without_echoing_the_secret(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError, match=message) as caught:
        Settings.from_env(BASE_ENV | env)
    secret = env.get("BROKER_WEBHOOK_SECRET")
    if secret and len(secret) > 8:
        assert secret not in str(caught.value)


def test_a_url_without_a_secret_is_refused_when_built_directly_too() -> None:
    with pytest.raises(SettingsError, match="BROKER_WEBHOOK_SECRET"):
        Settings(signing_key=Secret("k" * 32), webhook_url="https://h.example/")
