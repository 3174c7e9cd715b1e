"""What every table's queries share: the executor type, the row-count check, the tables."""

from __future__ import annotations

from typing import Any, Final, cast

from sqlalchemy import CursorResult, Table
from sqlalchemy.engine import Result

from broker.db.dialect import Executor
from broker.db.models import DisabledTool, SessionRow, ToolCall

__all__ = ["DISABLED_TOOLS", "SESSIONS", "TOOL_CALLS", "Executor", "changed"]

# Core tables for the statements built once at import (the tool-call hot path, the event-log
# counters): the ORM's per-statement work was most of the broker's time per call.
TOOL_CALLS: Final = cast(Table, ToolCall.__table__)
SESSIONS: Final = cast(Table, SessionRow.__table__)
DISABLED_TOOLS: Final = cast(Table, DisabledTool.__table__)


def changed(result: Result[Any]) -> bool:
    """Whether an UPDATE, DELETE or INSERT … ON CONFLICT DO NOTHING touched a row."""
    assert isinstance(result, CursorResult)
    return bool(result.rowcount)
