"""Stored times as zone-aware UTC values."""

from __future__ import annotations

from datetime import UTC, datetime


def as_utc(value: datetime) -> datetime:
    """``value`` with its zone; a naive one is taken to be UTC.

    SQLite hands stored timestamps back without their zone (PostgreSQL keeps it), and every
    time the broker stores is UTC: comparing or formatting a stored time goes through this.
    An aware value is returned as it is.
    """
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
