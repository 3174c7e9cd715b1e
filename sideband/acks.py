"""Acknowledging long tool calls: the model tells the user it is on it, and nothing more.

When the broker's handler gives a call an :class:`~sideband.contracts.AckPlan` and the call is
still running ``after_s`` later, one **out-of-band** ``response.create`` goes out::

    {"type": "response.create", "response": {"conversation": "none", "instructions": …,
     "tool_choice": "none", "metadata": {"broker": "ack", "call_id": …}}}

``conversation: "none"`` keeps the acknowledgement out of the conversation (the model's later
answer does not read it as something it already said) and ``tool_choice: "none"`` keeps it
from calling tools. At most one per call; only while no response is under way (one that is
running is waited out, as long as the tool still runs: the provider refuses a second
response, and the user is hearing something anyway). It never swallows the real output:

* its ``response.created`` is recognised by the echoed metadata and kept out of the answer
  ledger (:mod:`sideband.answers`), so it never counts as the response that reads outputs,
  and out of the page policy (it is the broker's, never cancelled);
* while it runs, our ``response.create`` for the real output waits (the responder is
  blocked), so the provider does not refuse it as ``conversation_already_has_active_response``;
  its ``response.done`` asks again.

A refused acknowledgement is logged and not retried: it is a courtesy, never an error. One
the provider never starts (no ``response.created`` within :data:`ACK_START_TIMEOUT_S`) is given
up the same way, so it cannot hold the real answer back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

from sideband.answers import AnswerLedger
from sideband.contracts import Acknowledging, AckPlan, FunctionCall, Wiring
from sideband.events import Response, new_event_id

logger = logging.getLogger(__name__)

ACK_MARK: Final = "ack"
"""``metadata.broker`` of an acknowledgement response."""
ACK_START_TIMEOUT_S: Final = 5.0
"""How long a request of ours may go unanswered (no ``response.created``, no ``error``)
before it is given up: while it is pending the output's ``response.create`` waits."""


def ack_create(call_id: str, instructions: str, event_id: str | None = None) -> dict[str, Any]:
    """The out-of-band ``response.create`` that acknowledges ``call_id``."""
    return {
        "type": "response.create",
        "event_id": event_id or new_event_id(),
        "response": {
            "conversation": "none",
            "instructions": instructions,
            "tool_choice": "none",
            "metadata": {"broker": ACK_MARK, "call_id": call_id},
        },
    }


class Acks:
    """One call's acknowledgements: timers, requests under way, responses running.

    Args:
        wiring: what the controller lends it.
        answers: the answer ledger (whether a response is under way).
        handler: the broker's handler, if it acknowledges (``None``: never).
        stopping: whether the controller is stopping.
        respond: asks for the outputs' response once nothing of ours is in the way.
    """

    def __init__(
        self,
        wiring: Wiring,
        answers: AnswerLedger,
        handler: Acknowledging | None,
        *,
        stopping: Callable[[], bool],
        respond: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._call_id = wiring.call_id
        self._send = wiring.send
        self._spawn = wiring.spawn
        self._answers = answers
        self._handler = handler
        self._stopping = stopping
        self._respond = respond
        self._requested: dict[str, FunctionCall] = {}
        """Our acknowledgement requests by event id, not yet started or refused."""
        self._active: dict[str, FunctionCall] = {}
        """Acknowledgement responses running, by response id."""
        self._changed = asyncio.Event()
        """Set whenever a response ends or a call finishes: waiting timers look again."""

    @property
    def busy(self) -> bool:
        """An acknowledgement is asked for or running: our other requests wait."""
        return bool(self._requested or self._active)

    def arm(self, call: FunctionCall) -> Callable[[], None] | None:
        """Start ``call``'s timer if it has a plan; returns what to call once it finished."""
        plan = self._handler.ack_plan(call) if self._handler is not None else None
        if plan is None:
            return None
        finished = asyncio.Event()
        self._spawn(self._wait(call, plan, finished), f"tool-ack:{call.call_id}")

        def done() -> None:
            finished.set()
            self._changed.set()

        return done

    async def _wait(self, call: FunctionCall, plan: AckPlan, finished: asyncio.Event) -> None:
        try:
            async with asyncio.timeout(plan.after_s):
                await finished.wait()
            return  # finished in time: nothing to say
        except TimeoutError:
            pass
        # Bounded by the call: it ends by its tool's deadline, and that wakes this up.
        while not self._may_ack():
            if finished.is_set() or self._stopping():
                return
            self._changed.clear()
            await self._changed.wait()
        if finished.is_set() or self._stopping():
            return
        event = ack_create(call.call_id, plan.instructions)
        event_id = event["event_id"]
        self._requested[event_id] = call
        if not await self._send(event):
            self._requested.pop(event_id, None)
            self._changed.set()
            return
        await self._watch_start(event_id)

    async def _watch_start(self, event_id: str) -> None:
        """Give the request up if the provider neither starts nor refuses it in time."""
        try:
            async with asyncio.timeout(ACK_START_TIMEOUT_S):
                while event_id in self._requested:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            if self._requested.pop(event_id, None) is None:
                return
            logger.warning(
                "acknowledgement not started in %.0fs call_id=%s; given up",
                ACK_START_TIMEOUT_S,
                self._call_id,
            )
            self._changed.set()
            if self._respond is not None:
                await self._respond()

    def _may_ack(self) -> bool:
        return (
            self._answers.idle
            and self._answers.requested is None
            and self._answers.delivering == 0
            and not self.busy
        )

    def started(self, response: Response) -> bool:
        """``True`` if ``response`` is one of our acknowledgements (kept out of the books)."""
        meta = response.metadata or {}
        if meta.get("broker") != ACK_MARK:
            return False
        # Only one we asked for: a page marking its own response so is judged as any other.
        for event_id, call in self._requested.items():
            if call.call_id == meta.get("call_id"):
                del self._requested[event_id]
                self._active[response.id] = call
                self._changed.set()
                if self._handler is not None:
                    self._spawn(
                        self._handler.acknowledged(call, response.id), f"tool-acked:{call.call_id}"
                    )
                return True
        return False

    def done(self, response: Response) -> bool:
        """``True`` if ``response`` was one of our acknowledgements (it ended now)."""
        if self._active.pop(response.id, None) is None:
            self._changed.set()  # some other response ended: a waiting timer may go now
            return False
        self._changed.set()
        return True

    def refused(self, event_id: str, code: str | None) -> bool:
        """The provider's ``error`` for ``event_id``; ``True`` if it refused an acknowledgement."""
        call = self._requested.pop(event_id, None)
        if call is None:
            return False
        logger.info(
            "provider refused an acknowledgement call_id=%s code=%s (not retried)",
            self._call_id,
            code,
        )
        self._changed.set()
        return True

    def connection_lost(self) -> None:
        """Requests and responses of the lost socket are nobody's business any more."""
        self._requested.clear()
        self._active.clear()
        self._changed.set()
