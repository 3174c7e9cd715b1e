"""After a (re)attach: finish what the sideband may have missed while no sideband watched.

The provider's conversation is compared with what the broker knows (its records, read
through :meth:`~sideband.contracts.ToolCallHandler.backlog`, and the calls this controller
watched the model make), with ``conversation.item.retrieve`` for every call that may have
finished unseen, and one appended-then-deleted probe item that names the conversation's tail
(:mod:`sideband.lookups`). Outputs decided while the sideband was away are looked up and sent
only if the provider does not have them. A resync belongs to its connection: a loss cancels
it, and what it had not settled is the next resync's work.

An item whose retrieve once lost the socket to an oversized frame (a long user audio turn,
or something the page built) is *too large to read*: the resync goes on past it. Nothing the
broker runs or sends can be that large (a watched call's arguments came in one frame, a tool's
output is at most 64 KiB), so such an item is never taken for a finished call of the model's
nor for one of our outputs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Container
from typing import Final, Literal

from sideband.answers import AnswerLedger
from sideband.contracts import FunctionCall, ToolCallHandler, Undelivered, Wiring, call_of
from sideband.events import Item, same_json
from sideband.lookups import LookupFailed, Lookups, TooLargeToRead
from sideband.tamper import OutputLedger
from sideband.tool_calls import ToolCalls

logger = logging.getLogger(__name__)

RESEND_GRACE: Final = 0.3
"""Seconds between the two lookups that must both miss before an output is sent again."""
TOO_LARGE_STATUS: Final = "item_too_large"
"""Why a call whose item became too large to read is abandoned (recorded as its error)."""

Finding = Literal["final", "abandoned", "partial", "replaced"]
"""What a resync makes of a call it retrieved: run it, abandon it, or answer it unproven
(``partial``: seen only starting; ``replaced``: its arguments are not what was streamed)."""


def judge_found(
    item: Item | None, known: FunctionCall, *, whole: bool, handled: Container[str]
) -> tuple[Finding, FunctionCall] | None:
    """Judge a call the broker knows of by the provider's item for it.

    Args:
        item: the retrieved item (``None``: the provider has none).
        known: the call as the broker saw the model make it.
        whole: the broker saw the call's full arguments, not only its start.
        handled: calls already answered or abandoned.

    Returns:
        The finding and the call it is about (the broker's for ``final`` and ``abandoned``,
        the provider's for an unproven one); ``None``: nothing to do now.
    """
    if item is None:
        # Deleted from the conversation: never final.
        return ("abandoned", known) if whole else None
    call = call_of(item, known.response_id)
    if call is None or call.call_id in handled:
        return None
    if item.status == "incomplete":
        return "abandoned", known
    if item.status != "completed":
        return None  # still streaming: its response.done will say
    if not whole:
        return "partial", call
    if call.call_id != known.call_id or not same_json(call.arguments, known.arguments):
        return "replaced", call
    return "final", known


class Resync:
    """The resync of the current connection: started on a (re)attach, cancelled by a loss.

    Args:
        wiring: what the controller lends it.
        tools: the broker's handler (its backlog).
        calls: the calls this controller watched and handled.
        answers: the answer ledger.
        outputs: recognises our outputs when they are found.
        lookups: asks the provider about items and the tail.
        output_found: handles a ``function_call_output`` found as the tail, as if echoed.
        respond: asks for a response if one is wanted.
        stopping: whether the controller is stopping (no call runs).
        draining: whether it is draining (no new call is taken up).
    """

    def __init__(
        self,
        wiring: Wiring,
        *,
        tools: ToolCallHandler,
        calls: ToolCalls,
        answers: AnswerLedger,
        outputs: OutputLedger,
        lookups: Lookups,
        output_found: Callable[[Item], Awaitable[None]],
        respond: Callable[[], Awaitable[None]],
        stopping: Callable[[], bool],
        draining: Callable[[], bool],
    ) -> None:
        self._call_id = wiring.call_id
        self._spawn = wiring.spawn
        self._tools = tools
        self._calls = calls
        self._answers = answers
        self._outputs = outputs
        self._lookups = lookups
        self._output_found = output_found
        self._respond = respond
        self._stopping = stopping
        self._draining = draining
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = self._spawn(self.run(), "resync")

    def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None

    def connection_lost(self) -> None:
        """A resync decides from what its connection answered; the next one asks again."""
        self.cancel()

    async def run(self) -> None:
        """Finish what the sideband may have missed while it was away.

        1. Outputs whose delivery is unconfirmed are looked up by the id we know.
        2. The conversation's tail is probed (and retrieved if unknown): our output found
           there is confirmed whatever id the provider gave it. Outputs still missing are
           sent again.
        3. Calls the broker saw the model make that may have finished unseen are retrieved:
           a completed one whose arguments are the ones the model streamed is run; an
           incomplete one abandoned. A finished call no watched response proves (the tail,
           one seen only starting, one whose arguments changed) is never run: it gets
           :data:`~sideband.tool_calls.UNVERIFIED_OUTPUT` and a report.
        A question the provider does not answer leaves its call for the next resync. An item
        too large to read is never asked about: as the tail it is skipped, a call under it is
        abandoned (:data:`TOO_LARGE_STATUS`), an output looked up under it counts as missing.
        """
        answers, calls = self._answers, self._calls
        backlog = await self._tools.backlog()
        # Into undelivered first: if this connection is lost (and this resync cancelled)
        # before an output is settled, the next resync still has it.
        for u in backlog.undelivered:
            if u.call.call_id not in calls.handled:
                answers.undelivered[u.call.call_id] = u
        outputs = dict(answers.undelivered)
        calls.handled.update(outputs)
        for output in outputs.values():
            self._outputs.expect(output.call.call_id, output.output)
        missing = await self._look_up_outputs(outputs)
        tail: str | None = None
        tail_item: Item | None = None
        unreadable: list[str] = []
        try:
            tail = await self._lookups.tail()
        except LookupFailed:
            logger.warning("resync: the conversation's tail is unknown call_id=%s", self._call_id)
        if tail is not None and self._lookups.needs_retrieve(tail):
            try:
                tail_item = await self._lookups.retrieve(tail)
            except LookupFailed:
                tail_item = None
            except TooLargeToRead:
                # Neither our output nor a call anyone could prove: nothing to do with it,
                # and a planted call under it stays unrun (and unanswered: its id is unread).
                unreadable.append(tail)
            if tail_item is not None and tail_item.type == "function_call_output":
                await self._output_found(tail_item)  # ours (confirmed), or forged
        # The tail was the last place a missing output could be found under an id of the
        # provider's own; still missing now, it is sent again (a duplicate output is better
        # than a model that waits for ever).
        resent = False
        due = [o for o in missing if o.call.call_id in answers.undelivered]
        if due:
            with answers.batch():
                for output in due:
                    resent = await calls.deliver(output) or resent
        candidates = {
            call.item_id: call
            for call in backlog.seen
            if call.item_id is not None and call.response_id and call.call_id not in calls.handled
        }
        candidates.update(
            (item_id, call)
            for item_id, call in calls.call_items.items()
            if call.call_id not in calls.handled
        )
        started = {
            item_id: call
            for item_id, call in calls.started_items.items()
            if item_id not in candidates and call.call_id not in calls.handled
        }
        finals: list[FunctionCall] = []
        abandoned: list[FunctionCall] = []
        too_large: list[FunctionCall] = []
        unproven: list[tuple[FunctionCall, str]] = []
        for item_id in [*candidates, *started]:
            whole = item_id in candidates
            known = candidates[item_id] if whole else started[item_id]
            try:
                item = await self._lookups.retrieve(item_id)
            except LookupFailed:
                continue
            except TooLargeToRead:
                # Not the call the model streamed (that came in one frame): whatever is
                # there now is never run, and without its id it cannot be answered.
                unreadable.append(item_id)
                too_large.append(known)
                continue
            finding = judge_found(item, known, whole=whole, handled=calls.handled)
            if finding is None:
                continue
            kind, call = finding
            if kind == "final":
                finals.append(call)
            elif kind == "abandoned":
                abandoned.append(call)
            else:
                unproven.append((call, kind))
        if tail_item is not None and tail_item.type == "function_call":
            call_found = call_of(tail_item, "")
            if (
                call_found is not None
                and call_found.call_id not in calls.handled
                and tail_item.status == "completed"
                and tail not in candidates
                and tail not in started
            ):
                unproven.append((call_found, "unseen"))
        if abandoned:
            calls.give_up(abandoned, "incomplete", "resync")
        if too_large:
            calls.give_up(too_large, TOO_LARGE_STATUS, "resync")
        if unreadable:
            logger.warning(
                "resync: item(s) too large to read skipped call_id=%s items=%s",
                self._call_id,
                ",".join(unreadable),
            )
        if finals and self._stopping():
            calls.give_up(finals, "call_ending", "resync")
        elif finals and not self._draining():
            logger.info(
                "resync: %d call(s) finished while the sideband was away call_id=%s",
                len(finals),
                self._call_id,
            )
            calls.take_up(finals)
        if unproven and not self._stopping():
            calls.answer_unproven(unproven)
        logger.info(
            "resync call_id=%s outputs=%d resent=%s candidates=%d tail=%s finals=%d"
            " abandoned=%d unproven=%d unreadable=%d",
            self._call_id,
            len(outputs),
            resent,
            len(candidates) + len(started),
            tail,
            len(finals),
            len(abandoned) + len(too_large),
            len(unproven),
            len(unreadable),
        )
        # Outputs resent just now are answered like any other. An unknown tail (the probe
        # went unanswered on a live socket) is taken as "ours": a second answer is better
        # than a model that waits for ever.
        answers.settle_carried(tail_is_ours=tail is None or tail in answers.own_output_ids)
        await self._respond()

    async def _look_up_outputs(self, outputs: dict[str, Undelivered]) -> list[Undelivered]:
        """Look up each unconfirmed output; confirm the ones found, return the missing ones.

        Missing under the id we know is not yet missing for sure: a provider that names
        items itself (we may not know it does) may hold it under another id, so the caller
        checks the conversation's tail before sending any of them again.
        """
        answers = self._answers
        missing: list[Undelivered] = []
        for call_id, output in outputs.items():
            if call_id not in answers.undelivered:
                continue  # confirmed meanwhile (echoed late)
            lookup_id = answers.provider_output_ids.get(call_id, output.item_id)
            try:
                existing = await self._lookups.retrieve(lookup_id)
                if existing is None and call_id in answers.undelivered:
                    # A create sent just before the old socket died may still be in the
                    # provider's queue for it: look once more before sending a second one.
                    await asyncio.sleep(RESEND_GRACE)
                    existing = await self._lookups.retrieve(lookup_id)
            except LookupFailed:
                continue
            except TooLargeToRead:
                # Our output is at most 64 KiB: what holds its id now is not it.
                existing = None
            if call_id not in answers.undelivered:
                continue
            if existing is None:
                missing.append(output)
            else:
                # It arrived before the sideband dropped; only the confirmation was lost.
                self._calls.injected(call_id, answers.found(call_id, lookup_id))
        return missing
