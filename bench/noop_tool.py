"""The benchmarks' tool: does nothing, so a call's latency is the broker's own."""

from __future__ import annotations

from typing import Any

from broker.tools.executors import ToolContext


async def noop(arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
    """Answer ``{}`` at once."""
    return {}
