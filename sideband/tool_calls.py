"""The model's function calls on one call: which were seen, taken up, answered or abandoned.

**Only the model's calls run.** A function call is one the model emitted in a response the
sideband watched (``response.output_item.*``, ``response.function_call_arguments.done``, or
the ``output`` of ``response.done``); it is *final* when that ``response.done`` has status
``completed`` (arguments-done also fires for cancelled responses). A ``function_call`` item
that merely appears in the conversation (``conversation.item.added``, a retrieve) may be the
page's: it is never run on that evidence. Found by a resync, it is answered with
:data:`UNVERIFIED_OUTPUT`, an error output the model can act on (a real call the broker missed
is made again, now watched), and reported (:class:`~sideband.tamper.UnprovenCall`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from sideband.acks import Acks
from sideband.answers import AnswerLedger
from sideband.contracts import (
    FunctionCall,
    ToolCallHandler,
    ToolResult,
    Undelivered,
    Wiring,
    call_of,
)
from sideband.events import Item, Response, function_call_output, new_item_id
from sideband.tamper import OutputLedger, UnprovenCall, cut

logger = logging.getLogger(__name__)

UNVERIFIED_OUTPUT: Final = json.dumps(
    {
        "error": {
            "code": "call_unverified",
            "message": (
                "This call was not run: the broker could not verify that you made it. "
                "If you meant to call this tool, call it again."
            ),
        }
    },
    separators=(",", ":"),
)
"""The output an unproven function call gets (the broker's ``error_output`` shape)."""


class ToolCalls:
    """Runs the model's final calls through the broker's handler, each once, and answers them.

    Args:
        wiring: what the controller lends it.
        tools: the broker's handler for function calls.
        outputs: recognises our outputs when the provider echoes them.
        answers: the answer ledger.
        respond: asks for a response if one is wanted.
        acks: acknowledges calls that run long (:mod:`sideband.acks`); ``None``: never.
    """

    def __init__(
        self,
        wiring: Wiring,
        tools: ToolCallHandler,
        *,
        outputs: OutputLedger,
        answers: AnswerLedger,
        respond: Callable[[], Awaitable[None]],
        acks: Acks | None = None,
    ) -> None:
        self._call_id = wiring.call_id
        self._acks = acks
        self._send = wiring.send
        self._spawn = wiring.spawn
        self._report = wiring.report
        self._tools = tools
        self._outputs = outputs
        self._answers = answers
        self._respond = respond
        self._seen: dict[str, asyncio.Task[None]] = {}
        self.handled: set[str] = set()
        """Calls this controller answered, is answering or abandoned: never taken up again."""
        self.call_items: dict[str, FunctionCall] = {}
        """Calls the model made in a watched response with their full arguments, by item id."""
        self.started_items: dict[str, FunctionCall] = {}
        """Calls the model began in a watched response (arguments may be partial), by item id."""
        self._unproven: set[str] = set()
        """Calls answered with :data:`UNVERIFIED_OUTPUT`: no record to mark injected."""
        self._in_flight = 0
        self.idle = asyncio.Event()
        """Set while no taken-up call is still being run or answered (a drain waits on it)."""
        self.idle.set()

    def arguments_done(self, item_id: str, call: FunctionCall) -> None:
        """The model finished streaming a call's arguments; the broker records it as seen."""
        self.call_items[item_id] = call
        if call.call_id not in self._seen:
            self._seen[call.call_id] = self._spawn(
                self._tools.call_seen(call), f"tool-seen:{call.call_id}"
            )

    def model_item(self, item: Item, response_id: str) -> None:
        """A watched response began or finished ``item`` (``response.output_item.*``)."""
        call = call_of(item, response_id)
        if call is None or item.id is None:
            return
        if item.status == "completed":
            self.call_items[item.id] = call
        else:
            self.started_items.setdefault(item.id, call)

    def response_done(self, response: Response, *, stopping: bool, draining: bool) -> None:
        """Take up the final calls of a response, or abandon (or leave) them."""
        calls = [call_of(item, response.id) for item in response.output]
        # A call is answered once even if its response.done is repeated.
        finals = [c for c in calls if c is not None and c.call_id not in self.handled]
        if finals and draining and not stopping:
            # Left recorded and unrun: the next broker process picks them up.
            logger.info(
                "draining: %d call(s) left for the next broker call_id=%s",
                len(finals),
                self._call_id,
            )
        elif finals and response.status == "completed" and not stopping:
            self.take_up(finals)
        elif finals:
            self.give_up(finals, "call_ending" if stopping else response.status, response.id)

    def take_up(self, calls: list[FunctionCall]) -> None:
        """Run and answer final calls, in one task (their outputs go out together)."""
        self.handled.update(call.call_id for call in calls)
        self._in_flight += 1
        self.idle.clear()
        self._spawn(self._answer(calls), f"tool-answer:{calls[0].response_id or 'resync'}")

    def give_up(self, calls: list[FunctionCall], status: str, source: str) -> None:
        """Record calls as abandoned, in their own task (recorded even if the socket goes)."""
        self.handled.update(call.call_id for call in calls)
        self._spawn(self._abandon(calls, status), f"tool-abandon:{source}")

    def answer_unproven(self, found: list[tuple[FunctionCall, str]]) -> None:
        """Answer calls no watched response proves with :data:`UNVERIFIED_OUTPUT`, once."""
        self._spawn(self._answer_unproven(found), "tool-unproven:resync")

    def injected(self, call_id: str, output: Undelivered | None) -> None:
        """The provider has our output for ``call_id`` (``output``: confirmed just now)."""
        if output is not None and call_id not in self._unproven:
            self._spawn(self._tools.output_sent(output.call), f"output-sent:{call_id}")

    async def deliver(self, output: Undelivered) -> bool:
        """Send one output; ``True`` if it went out (it counts once the provider echoes it).

        One that cannot be sent, or whose echo never comes, is looked up (and sent again if
        missing) by the next connection's resync.
        """
        self._answers.sending(output)
        event = function_call_output(output.call.call_id, output.output, item_id=output.item_id)
        if not await self._send(event):
            self._answers.unsent(output)
            return False
        self._answers.sent(output)
        return True

    async def _deliver_all(self, outputs: Sequence[Undelivered]) -> None:
        with self._answers.batch():
            for output in outputs:
                await self.deliver(output)
        await self._respond()

    async def _await_seen(self, call: FunctionCall) -> None:
        # The seen-record must exist before execution; a response.done may list a call whose
        # arguments-done we never saw (attached late), so record it now in that case.
        seen = self._seen.get(call.call_id)
        if seen is None:
            await self._tools.call_seen(call)
        else:
            await seen

    async def _abandon(self, calls: list[FunctionCall], status: str) -> None:
        for call in calls:
            await self._await_seen(call)
            await self._tools.call_abandoned(call, status)

    async def _answer(self, calls: list[FunctionCall]) -> None:
        try:
            for call in calls:
                await self._await_seen(call)
            async with asyncio.TaskGroup() as group:
                runs = [
                    group.create_task(self._execute(call), name=f"tool:{call.call_id}")
                    for call in calls
                ]
            due: list[Undelivered] = []
            for call, run in zip(calls, runs, strict=True):
                result = run.result()
                # Registered before sending: the provider's echo may arrive before send
                # returns. A call another path answered is expected from that path, with the
                # same output.
                self._outputs.expect(call.call_id, result.output)
                if result.inject:
                    due.append(Undelivered(call, result.output, result.item_id or new_item_id()))
            await self._deliver_all(due)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self.idle.set()

    async def _execute(self, call: FunctionCall) -> ToolResult:
        """Run one call, acknowledged if it runs long (its timer stops when it finishes)."""
        finished = self._acks.arm(call) if self._acks is not None else None
        try:
            return await self._tools.execute(call)
        finally:
            if finished is not None:
                finished()

    async def _answer_unproven(self, found: list[tuple[FunctionCall, str]]) -> None:
        due: list[Undelivered] = []
        for call, _reason in found:
            self.handled.add(call.call_id)
            self._unproven.add(call.call_id)
            self._outputs.expect(call.call_id, UNVERIFIED_OUTPUT)
            due.append(Undelivered(call, UNVERIFIED_OUTPUT, new_item_id()))
        logger.warning(
            "resync: %d finished call(s) the model was not seen making; not run call_id=%s",
            len(found),
            self._call_id,
        )
        await self._deliver_all(due)
        for (call, reason), output in zip(found, due, strict=True):
            self._report(
                UnprovenCall(
                    item_id=cut(call.item_id),
                    call_id=cut(call.call_id),
                    tool=cut(call.name),
                    reason=reason,
                    answered=output.call.call_id not in self._answers.undelivered,
                )
            )
