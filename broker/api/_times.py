"""Timestamps in API replies: ISO 8601, always with their zone (UTC)."""

from __future__ import annotations

from datetime import datetime

from broker.db.times import as_utc


def iso(value: datetime | None) -> str | None:
    """``value`` as ISO 8601 UTC; ``None`` stays ``None``."""
    if value is None:
        return None
    return as_utc(value).isoformat()
