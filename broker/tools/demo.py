"""Demo tools, so the demo and a fresh ``make run`` work with no configuration."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from broker.tools.executors import ToolContext

_STATUSES = ("processing", "shipped", "delivered")


async def lookup_order(arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
    """A deterministic fake order: the status is derived from the id."""
    order_id = str(arguments["order_id"])
    status = _STATUSES[sum(order_id.encode()) % len(_STATUSES)]
    return {"order_id": order_id, "status": status}


async def get_time(arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
    """The broker's current UTC time."""
    return {"utc": datetime.now(UTC).isoformat(timespec="seconds")}
