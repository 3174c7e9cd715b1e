"""The database helpers every query shares (broker/db/times.py, broker/db/dialect.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect

from broker.db.dialect import conflict_insert
from broker.db.models import WebhookDelivery
from broker.db.times import as_utc


def test_a_naive_time_is_taken_as_utc() -> None:
    stored = datetime(2026, 1, 2, 3, 4, 5)
    assert as_utc(stored) == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert as_utc(stored).isoformat() == "2026-01-02T03:04:05+00:00"


def test_an_aware_time_is_kept_as_it_is() -> None:
    plus_two = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    assert as_utc(plus_two) is plus_two


@pytest.mark.parametrize(
    ("name", "dialect"), [("postgresql", postgresql.dialect()), ("sqlite", sqlite.dialect())]
)
def test_the_conflict_insert_is_the_dialects_own(name: str, dialect: Dialect) -> None:
    statement = conflict_insert(WebhookDelivery, name).on_conflict_do_nothing(
        index_elements=["session_id", "type"]
    )
    sql = str(statement.compile(dialect=dialect))
    assert sql.startswith("INSERT INTO webhook_deliveries")
    assert "ON CONFLICT (session_id, type) DO NOTHING" in sql
