"""What the tool pipeline hands its callers: a call's outcome, or why it cannot be recorded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from broker.db.models import ToolCall, ToolCallStatus, ToolPath
from broker.tools.policy import error_output, strict_json_loads

BROKER_ERROR: Final = "broker_error"
BROKER_ERROR_OUTPUT: Final = error_output(BROKER_ERROR, "the broker could not complete this call")
"""What the model is told for a call the broker itself failed (a database error, a bug)."""


class CallRejectedError(Exception):
    """A reported call cannot be recorded (e.g. an absurd call id); nothing runs."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class CallOutcome:
    """A settled (or still running) call as either path reports it.

    Attributes:
        handled_by: the path that ran (or denied) the call; ``None`` while nobody has.
        executed_now: this very request ran (or denied) it; only then may its caller answer
            the model, so a duplicate report of the same call never produces a second output.
    """

    call_id: str
    tool: str
    status: ToolCallStatus
    output: str | None
    handled_by: ToolPath | None
    executed_now: bool = False
    output_item_id: str | None = None
    """The item id the output is to be created with at the provider (sideband path)."""
    budget_spent: bool | None = None
    """Known by the request that decided the call under the session's tool lock: whether
    the session's tool budget is now spent (a call was denied for it, or more were started
    than it allows). ``None``: not known here (the call was decided before the budget was
    counted, or by another request); count the rows to know."""

    @property
    def answered(self) -> bool:
        """Settled, or held for approval: either way the output the model gets is final."""
        return self.status.settled or self.status is ToolCallStatus.HELD

    @classmethod
    def from_row(cls, row: ToolCall) -> CallOutcome:
        return cls(
            call_id=row.call_id,
            tool=row.tool,
            status=ToolCallStatus(row.status),
            output=row.output,
            handled_by=ToolPath(row.path) if row.path else None,
            output_item_id=row.output_item_id,
        )


def arguments_equal(a: str, b: str) -> bool:
    """Same JSON value (key order and whitespace do not matter)."""
    try:
        return bool(strict_json_loads(a or "{}") == strict_json_loads(b or "{}"))
    except (ValueError, RecursionError):
        return a == b
