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
from collections.abc import Callable, Mapping
from typing import Any, Final

MAX_PENDING: Final = 256
"""Calls seen and not yet answered that are remembered; the model can leave a call
unanswered (a cancelled response), and such entries must not accumulate for hours."""


class DispatchClock:
    """One per supervised call; fed every wire event in order."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._pending: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def saw(self, event: Mapping[str, Any]) -> None:
        """Note a server event; the first one naming a function call starts its clock."""
        kind = event.get("type")
        if kind == "response.function_call_arguments.done":
            call_id, name = event.get("call_id"), event.get("name")
        elif kind in ("response.output_item.done", "conversation.item.done"):
            item = event.get("item")
            if not isinstance(item, Mapping) or item.get("type") != "function_call":
                return
            call_id, name = item.get("call_id"), item.get("name")
        else:
            return
        if not isinstance(call_id, str) or call_id in self._pending:
            return
        self._pending[call_id] = (name if isinstance(name, str) else "", self._clock())
        while len(self._pending) > MAX_PENDING:
            self._pending.popitem(last=False)

    def sent(self, event: Mapping[str, Any]) -> tuple[str, float] | None:
        """For the broker's own output of a timed call: ``(tool, seconds since seen)``."""
        if event.get("type") != "conversation.item.create":
            return None
        item = event.get("item")
        if not isinstance(item, Mapping) or item.get("type") != "function_call_output":
            return None
        call_id = item.get("call_id")
        started = self._pending.pop(call_id, None) if isinstance(call_id, str) else None
        if started is None:
            return None
        tool, seen_at = started
        return tool, max(0.0, self._clock() - seen_at)
