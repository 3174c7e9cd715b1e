"""The answer ledger: where each of our outputs is, and whether a response has read it. No I/O.

Every call of a completed response gets one ``function_call_output``; then one
``response.create`` is sent, never while another response is active (the provider rejects it
with ``conversation_already_has_active_response``). An output counts as *answered* once a
response is created after its echo (whoever asked for it: us, the browser or VAD), so a
refused or lost request is asked again only while some output is still unanswered: the model
never answers one output twice. Outputs are recognised by ``call_id`` and the exact text the
broker sent, never by the item id it chose: a provider may assign its own ids.

An output moves from *undelivered* (decided, not sent on this connection) to *unconfirmed*
(sent, no echo yet) to confirmed (echoed, or found by a resync), and from *unanswered* to
answered when a response is created after its echo. The controller sends; this only keeps
the books.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from sideband.contracts import Undelivered


class AnswerLedger:
    """One call's outputs by call id, and the responses under way that answer them."""

    def __init__(self) -> None:
        self.undelivered: dict[str, Undelivered] = {}
        """Outputs to look up and (re)send on the next connection."""
        self.unconfirmed: dict[str, Undelivered] = {}
        """Outputs sent on this connection whose echo has not come back yet: a send that
        succeeded locally may still be lost with a dying socket."""
        self.unanswered: set[str] = set()
        """Our outputs that no response has been created after (as far as we saw)."""
        self.echoed: set[str] = set()
        """Our outputs the provider echoed on this connection (a response now reads them)."""
        self.carried: set[str] = set()
        """Outputs unanswered when a connection was lost: the resync finds out whether a
        response read them while the sideband was away."""
        self.delivering = 0
        """Batches of outputs going out now: a response.create waits until they are all out."""
        self.provider_output_ids: dict[str, str] = {}
        """Call id → the id the provider's echo gave our output (may differ from ours)."""
        self.own_output_ids: set[str] = set()
        """Every id our outputs have, ours and the provider's: never the page's."""
        self.confirmed = asyncio.Event()
        """Set whenever an output is confirmed or answered (a drain waits on it)."""
        # Responses.
        self.active_response: str | None = None
        self.response_state_known = True
        """Whether ``active_response`` is known (not right after a late attach)."""
        self.requested: str | None = None
        """The event id of our ``response.create`` not yet followed by a ``response.created``
        or an error."""
        self.cancelled_by_us: set[str] = set()
        self.covering: dict[str, set[str]] = {}
        """Active responses → the outputs (call ids) they answer (restored if we cancel)."""

    # ---- outputs ---------------------------------------------------------------------------

    def pending(self, call_id: str) -> Undelivered | None:
        """Our output for ``call_id`` if it is not known to be in the conversation."""
        return self.unconfirmed.get(call_id) or self.undelivered.get(call_id)

    def pending_call_ids(self) -> set[str]:
        """Our outputs not known to be in the conversation (unsent, or sent and unechoed)."""
        return set(self.unconfirmed) | set(self.undelivered)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Outputs going out together: one response reads them all, so none is asked for yet."""
        self.delivering += 1
        try:
            yield
        finally:
            self.delivering -= 1

    def sending(self, output: Undelivered) -> None:
        """``output`` is about to be sent (its echo may come before the send returns)."""
        self.own_output_ids.add(output.item_id)
        self.unconfirmed[output.call.call_id] = output
        self.undelivered.pop(output.call.call_id, None)

    def sent(self, output: Undelivered) -> None:
        """``output`` went out on this connection: it needs an answer once echoed."""
        self.unanswered.add(output.call.call_id)

    def note_sent(self, item_id: str) -> None:
        """A note of ours (a system message) went out: the next response is to read it.

        Counted as echoed at once: the provider handles one socket's events in order, so the
        note is in the conversation before any ``response.create`` sent after it.
        """
        self.own_output_ids.add(item_id)
        self.unanswered.add(item_id)
        self.echoed.add(item_id)

    def unsent(self, output: Undelivered) -> None:
        """``output`` could not be sent: the next connection's resync has it."""
        self.unconfirmed.pop(output.call.call_id, None)
        self.undelivered[output.call.call_id] = output

    def echo(self, call_id: str, item_id: str | None) -> Undelivered | None:
        """The provider echoed our pending output for ``call_id`` as ``item_id``: confirmed."""
        pending = self.pending(call_id)
        if item_id is not None and pending is not None:
            self.own_output_ids.add(item_id)
            if item_id != pending.item_id:
                self.provider_output_ids[call_id] = item_id
        self.echoed.add(call_id)
        return self.confirm(call_id)

    def found(self, call_id: str, item_id: str) -> Undelivered | None:
        """A resync found our output at the provider: confirmed; whether it was read, not yet."""
        self.own_output_ids.add(item_id)
        output = self.confirm(call_id)
        # Answered or not: decided from the conversation's tail (or by the next resync).
        self.carried.add(call_id)
        return output

    def confirm(self, call_id: str) -> Undelivered | None:
        """The provider has our output for ``call_id``; returns it the first time."""
        output = self.unconfirmed.pop(call_id, None) or self.undelivered.pop(call_id, None)
        self.confirmed.set()
        return output

    def settle_carried(self, *, tail_is_ours: bool) -> None:
        """A resync's verdict on the outputs carried over a loss that are now in the call.

        They need an answer only if nothing came after them (our output is the tail): then no
        response read them. Anything after (the model's answer, or the user speaking, which
        starts a response of its own) means one did.
        """
        in_conversation = self.carried - self.pending_call_ids()
        self.carried.clear()
        if tail_is_ours:
            self.unanswered |= in_conversation
            self.echoed |= in_conversation

    @property
    def outstanding(self) -> bool:
        """Some output is unechoed or unanswered: the next broker process could not tell."""
        return bool(self.unconfirmed or self.unanswered)

    # ---- responses -------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """Nothing is being generated, as far as is known."""
        return self.active_response is None and self.response_state_known

    def lost_track(self) -> None:
        """No sideband watched for a while: which response is under way is unknown."""
        self.response_state_known = False

    def response_created(self, response_id: str) -> bool:
        """A response started; returns whether our pending ``response.create`` may be it."""
        self.active_response = response_id
        self.response_state_known = True
        # The provider does not say which client event started a response; ours (if any)
        # either is this one or was refused as "already active", so it is no longer pending.
        ours = self.requested is not None
        self.requested = None
        # Events on one socket are ordered: the outputs echoed before this are its input,
        # and so are outputs found in the conversation by a resync still under way.
        read = self.carried - self.pending_call_ids()
        self.carried -= read
        covered = (self.unanswered & self.echoed) | read
        self.unanswered -= covered
        self.echoed -= covered
        self.covering[response_id] = covered
        self.confirmed.set()  # a drain waits for outputs to be answered too
        return ours

    def cancelled(self, response_id: str) -> None:
        """We cancelled ``response_id``: what it would have answered is owed again."""
        self.cancelled_by_us.add(response_id)

    def response_done(self, response_id: str) -> None:
        if self.active_response == response_id:
            self.active_response = None
        self.response_state_known = True
        covered = self.covering.pop(response_id, set())
        if response_id in self.cancelled_by_us:
            # We cancelled the answer to these outputs: they still need one.
            self.cancelled_by_us.discard(response_id)
            self.unanswered |= covered
            self.echoed |= covered

    def wanted(self) -> bool:
        """Whether a ``response.create`` would answer something and nothing here blocks it.

        Only echoed outputs count (one the provider refused is never read), and not while
        outputs are going out (one response reads them all). In the way: an active
        response, or a request of ours still pending.
        """
        return bool(
            self.unanswered & self.echoed
            and self.delivering == 0
            and self.active_response is None
            and self.requested is None
        )

    def connection_lost(self) -> None:
        """Reset what only the lost connection could have settled; the resync asks the rest."""
        # Sent but never echoed: maybe delivered, maybe lost with the socket; the resync asks.
        self.undelivered.update(self.unconfirmed)
        self.unconfirmed.clear()
        self.requested = None
        # Whether our unanswered outputs got a response meanwhile is for the resync to find
        # out (from the conversation's tail). Responses under way are taken to complete, and
        # a response.create refused as "already active" is asked again after the next
        # response.done, so assuming none is active is safe.
        # Answers we cancelled (a forgery) are owed for certain: no tail check needed.
        owed = set().union(*(self.covering.get(r, set()) for r in self.cancelled_by_us))
        self.carried |= self.unanswered - owed
        self.unanswered = owed
        self.echoed = set(owed)
        self.covering.clear()
        self.cancelled_by_us.clear()
        self.active_response = None
