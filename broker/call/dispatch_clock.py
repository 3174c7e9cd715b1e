"""Times each function call from the sideband seeing it to its output going out.

Read off the wire, the way an operator would measure it: *seen* is the first server event
naming the call (``response.function_call_arguments.done``, or the item's ``done`` when the
arguments event was missed), *sent* is the broker's own ``conversation.item.create`` carrying
its ``function_call_output``. Calls are keyed by ``call_id``; outputs for calls this clock
never saw (a resync after a restart) are not timed.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from sideband.events import (
    ConversationItemCreate,
    ConversationItemDone,
    FunctionCallArgumentsDone,
    ResponseOutputItemDone,
    ServerEvent,
)

MAX_PENDING: Final = 256
"""Calls seen and not yet answered that are remembered; the model can leave a call
unanswered (a cancelled response), and such entries must not accumulate for hours."""


class DispatchClock:
    """One per supervised call; fed the wire events it watches, in order."""

    WATCHES: Final = frozenset(
        {
            "response.function_call_arguments.done",
            "response.output_item.done",
            "conversation.item.done",
        }
    )
    """The server events :meth:`saw` reads; it is handed no others."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._pending: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def saw(self, event: ServerEvent) -> None:
        """Note a server event; the first one naming a function call starts its clock."""
        call_id: str | None
        name: str | None
        if isinstance(event, FunctionCallArgumentsDone):
            call_id, name = event.call_id, event.name
        elif isinstance(event, ResponseOutputItemDone | ConversationItemDone):
            if event.item.type != "function_call":
                return
            call_id, name = event.item.call_id, event.item.name
        else:
            return
        if call_id is None or call_id in self._pending:
            return
        self._pending[call_id] = (name or "", self._clock())
        while len(self._pending) > MAX_PENDING:
            self._pending.popitem(last=False)

    def sent(self, event: ConversationItemCreate) -> tuple[str, float] | None:
        """For the broker's own output of a timed call: ``(tool, seconds since seen)``."""
        item = event.item
        if item.type != "function_call_output" or item.call_id is None:
            return None
        started = self._pending.pop(item.call_id, None)
        if started is None:
            return None
        tool, seen_at = started
        return tool, max(0.0, self._clock() - seen_at)
