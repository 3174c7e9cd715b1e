"""Timestamps in API replies: ISO 8601, always with their zone (UTC)."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(value: datetime | None) -> str | None:
    """``value`` as ISO 8601 UTC; ``None`` stays ``None``."""
    if value is None:
        return None
    # SQLite hands timestamps back without their zone; every stored time is UTC.
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
