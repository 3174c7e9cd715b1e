"""Spend caps' rules on their own: what a caps object may hold, when each count starts over,
which cap a refusal names."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from broker.auth.quotas import (
    Quotas,
    QuotasError,
    Standing,
    day_start,
    next_month,
    refusal_of,
)
from broker.db.queries.quota_usage import Spent


def test_caps_parse_strictly_with_a_code_per_fault() -> None:
    assert Quotas.parse(b"null") is None
    assert Quotas.parse(b"{}") == Quotas()
    parsed = Quotas.parse(b'{"max_tokens_per_day": 5, "hard_cap": true}')
    assert parsed is not None and parsed.stored() == {"max_tokens_per_day": 5, "hard_cap": True}
    for raw in (
        b'{"max_live_calls": 0}',
        b'{"max_live_calls": -1}',
        b'{"max_live_calls": 1.5}',
        b'{"max_live_calls": "2"}',
        b'{"max_live_calls": false}',
        b'{"hard_cap": 1, "max_tokens_per_day": 5}',
        b'{"max_sessions": 2}',
        b"[]",
    ):
        with pytest.raises(QuotasError) as caught:
            Quotas.parse(raw)
        assert caught.value.code == "invalid_quotas" and caught.value.errors, raw
    with pytest.raises(QuotasError) as caught:
        Quotas.parse(b'{"hard_cap": true, "max_live_calls": 3}')
    assert caught.value.code == "hard_cap_without_token_cap"


def test_a_stored_value_that_no_longer_validates_is_no_caps() -> None:
    assert Quotas.of(None) is None
    assert Quotas.of({}) is None
    assert Quotas.of({"max_live_calls": "many"}) is None
    assert Quotas.of({"max_live_calls": 2}) == Quotas(max_live_calls=2)


@pytest.mark.parametrize(
    ("now", "day", "month"),
    [
        ("2026-12-05T01:30:00+00:00", "2026-12-05T00:00:00+00:00", "2027-01-01T00:00:00+00:00"),
        ("2026-01-31T23:59:59+00:00", "2026-01-31T00:00:00+00:00", "2026-02-01T00:00:00+00:00"),
        # Another zone's local time is the UTC day it falls in.
        ("2026-03-01T00:30:00+02:00", "2026-02-28T00:00:00+00:00", "2026-03-01T00:00:00+00:00"),
    ],
)
def test_days_and_months_are_utc(now: str, day: str, month: str) -> None:
    moment = datetime.fromisoformat(now)
    assert day_start(moment) == datetime.fromisoformat(day)
    assert next_month(moment) == datetime.fromisoformat(month)


def test_a_cap_is_reached_at_its_value_and_the_refusal_says_when_it_resets() -> None:
    now = datetime(2026, 12, 5, 23, 59, 30, tzinfo=UTC)
    quotas = Quotas(max_live_calls=2, max_tokens_per_day=100, max_tokens_per_month=1000)
    spent = Spent(live_calls=1, sessions_today=3, tokens_today=100, tokens_this_month=400)
    owner = Standing.of("tenant", "acme", quotas, spent, now)
    caps = {cap.limit: cap for cap in owner.caps}
    assert set(caps) == {"max_live_calls", "max_tokens_per_day", "max_tokens_per_month"}
    assert (caps["max_live_calls"].reached, caps["max_live_calls"].remaining) == (False, 1)
    assert (caps["max_tokens_per_day"].reached, caps["max_tokens_per_day"].remaining) == (True, 0)
    assert [cap.limit for cap in owner.tokens_reached] == ["max_tokens_per_day"]

    refusal = refusal_of(owner, caps["max_tokens_per_day"], now)
    assert (refusal.status, refusal.code, refusal.retry_after) == (429, "quota_exceeded", 30)
    assert refusal.extensions["resets_at"] == "2026-12-06T00:00:00Z"
    assert (refusal.extensions["cap"], refusal.extensions["limit"]) == (
        "tenant",
        "max_tokens_per_day",
    )
    assert refusal.headers == {"Retry-After": "30"}
    live = refusal_of(owner, caps["max_live_calls"], now)
    assert live.extensions["resets_at"] is None and live.retry_after > 0
