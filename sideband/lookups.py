"""The questions a resync asks the provider: is this item there, and which item is last.

The protocol has no way to list a conversation. An item is looked up with
``conversation.item.retrieve``; the conversation's tail is named by appending a probe item
(its ``conversation.item.added`` carries ``previous_item_id``) that is deleted right after. A
probe whose delete may have been lost with a socket is remembered as a leftover and deleted
before the next probe, or it would be taken for the tail.

A retrieve's answer carries the whole item, base64 audio included, so the answer for a long
user audio turn can be larger than a sideband frame may be: the socket then closes (1009)
before the answer is read. The item whose retrieve was outstanding is remembered as too large
to read and never asked for again, or every resync would retrieve it and lose the socket the
same way (docs/protocol.md §9.2).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

from sideband.contracts import Wiring
from sideband.events import (
    PROBE_ITEM_PREFIX,
    Item,
    is_probe_item_id,
    item_delete,
    item_retrieve,
    new_item_id,
    probe_item_create,
)

logger = logging.getLogger(__name__)

PROBE_ATTEMPTS: Final = 3
"""Probes per resync: one more for each leftover probe found as the tail."""
LOOKUP_TIMEOUT: Final = 5.0
"""Seconds to wait for the provider's answer to a retrieve or a probe during a resync."""
MAX_TOO_LARGE: Final = 256
"""Items remembered as too large to read, per call. Each one cost a lost socket, so a call
rarely has more; past this the oldest is forgotten (and costs one more lost socket if it
is asked for again)."""


class LookupFailed(Exception):
    """The provider did not answer a resync question (the sideband went away, or timeout)."""


class TooLargeToRead(Exception):
    """The provider's answer for this item is larger than a sideband frame may be.

    Raised instead of asking again: an earlier retrieve of it closed the socket (1009).
    """

    def __init__(self, item_id: str) -> None:
        self.item_id = item_id
        super().__init__(item_id)


class Lookups:
    """One call's pending questions to the provider, and the probes it may have left behind.

    Args:
        wiring: what the controller lends it (only ``send`` is used).
    """

    def __init__(self, wiring: Wiring) -> None:
        self._call_id = wiring.call_id
        self._send = wiring.send
        self.known_items: set[str] = set()
        """Items the controller has seen in the call: a tail among them needs no retrieve,
        unless it is :attr:`unfinished_calls`."""
        self.unfinished_calls: set[str] = set()
        """Function-call items last seen still streaming: one may have finished while no
        sideband watched, so as the tail it is retrieved again."""
        self._pending: dict[str, asyncio.Future[Item | None]] = {}
        """Pending retrieves by item id; a probe waits here under its own key."""
        self._events: dict[str, str] = {}
        """The ``event_id`` of each pending retrieve or probe, to match the provider's error."""
        self._probe_keys: set[str] = set()
        self._leftovers: dict[str, str | None] = {}
        """Probes added (or maybe added) and not yet seen deleted → their provider id."""
        self._delete_events: dict[str, str] = {}
        """Our probe deletes' event ids → probe keys, to recognise their errors."""
        self.too_large: dict[str, None] = {}
        """Items whose retrieve lost the socket to an oversized frame, oldest first."""

    async def retrieve(self, item_id: str) -> Item | None:
        """``conversation.item.retrieve``; ``None`` if the provider has no such item.

        Raises:
            LookupFailed: no answer (the sideband went away, or the time ran out).
            TooLargeToRead: its answer lost an earlier socket (1009); not asked again.
        """
        if item_id in self.too_large:
            raise TooLargeToRead(item_id)
        return await self._ask(item_id, item_retrieve(item_id))

    def frame_too_large(self) -> list[str]:
        """The socket closed on a frame over the size limit; returns the items blamed.

        Only the frame's header was read, so it is taken for the answer to the retrieves
        outstanding now (a resync has one at a time; probes are answered by small events).
        Blaming the wrong item (the page made a huge frame of its own at that moment) can
        only keep that item from being read: a call under it is never run, an output under
        it counts as missing and is sent again. Call before :meth:`connection_lost`.
        """
        blamed = [key for key in self._pending if key not in self._probe_keys]
        for item_id in blamed:
            self.too_large.pop(item_id, None)
            self.too_large[item_id] = None
        while len(self.too_large) > MAX_TOO_LARGE:
            del self.too_large[next(iter(self.too_large))]
        return blamed

    async def tail(self) -> str | None:
        """The id of the conversation's last item (``None``: the conversation is empty).

        Raises:
            LookupFailed: no answer.
        """
        # A probe whose delete was lost with a socket is still in the conversation, and
        # would be taken for the tail: the provider applies these deletes before the create.
        for key, provider_id in sorted(self._leftovers.items()):
            await self._delete_probe(key, provider_id or key)
        for _ in range(PROBE_ATTEMPTS):
            key = new_item_id(PROBE_ITEM_PREFIX)
            self.known_items.add(key)
            self._probe_keys.add(key)
            self._leftovers[key] = None
            try:
                answer = await self._ask(key, probe_item_create(key))
            finally:
                # Also when unanswered: the note may have been added all the same.
                self._probe_keys.discard(key)
                await self._delete_probe(key, self._leftovers.get(key) or key)
            if answer is None or answer.id is None:
                return None
            if not self._is_probe(answer.id):
                return answer.id
            # A leftover probe (a dead broker process's, or one whose delete we lost).
            logger.warning(
                "resync: deleting a leftover probe item call_id=%s item_id=%s",
                self._call_id,
                answer.id,
            )
            await self._delete_probe(answer.id, answer.id)
        raise LookupFailed("tail")

    def seen(self, item: Item) -> None:
        """The controller saw ``item`` in the conversation (added, done or retrieved)."""
        if item.id is None:
            return
        self.known_items.add(item.id)
        if item.type == "function_call" and item.status == "in_progress":
            self.unfinished_calls.add(item.id)
        else:
            self.unfinished_calls.discard(item.id)

    def needs_retrieve(self, item_id: str) -> bool:
        """Whether the conversation's tail must be retrieved to know what it is now."""
        return item_id not in self.known_items or item_id in self.unfinished_calls

    def retrieved(self, item: Item) -> None:
        """``conversation.item.retrieved``: answers our retrieve of it, if we asked."""
        if item.id is not None:
            self.seen(item)
            self._resolve(item.id, item)

    async def probe_item(
        self, item: Item, key: str, previous_item_id: str | None, *, added: bool
    ) -> None:
        """A probe item (any broker's) entered the conversation under ``key``."""
        if not added or item.id is None:
            return
        if key in self._probe_keys or key in self._leftovers:
            if item.id != key:
                # The provider named our probe itself: deletes must use its id.
                self._leftovers[key] = item.id
            if key in self._probe_keys:
                # Our probe: the item before it is the conversation's tail.
                tail = Item(id=previous_item_id, type="") if previous_item_id else None
                self._resolve(key, tail)
            elif item.id != key:
                # A late echo of a probe already given up on: its delete used our id.
                await self._delete_probe(key, item.id)
        else:
            # Someone else's probe text (a dead broker's, or the page's imitation): it is no
            # conversation item of the user's or the model's.
            await self._send(item_delete(item.id))

    def deleted(self, item_id: str) -> None:
        """An item left the conversation; a probe of ours that did is no leftover any more."""
        if item_id in self._leftovers or item_id in self._leftovers.values():
            key = (
                item_id
                if item_id in self._leftovers
                else next(k for k, v in self._leftovers.items() if v == item_id)
            )
            del self._leftovers[key]
            for event_id in [e for e, k in self._delete_events.items() if k == key]:
                del self._delete_events[event_id]

    def refused(self, event_id: str) -> bool:
        """The provider's ``error`` for ``event_id``; ``True`` if it answered one of ours."""
        if event_id in self._events:
            # The provider refused our own look-up: whatever the code (it is undocumented;
            # item_not_found was our guess), the item is not there to retrieve.
            self._resolve(self._events[event_id], None)
            return True
        if event_id in self._delete_events:
            # Not found: that probe never arrived, so it is no leftover either.
            self._leftovers.pop(self._delete_events.pop(event_id), None)
            return True
        return False

    def connection_lost(self) -> None:
        """Nothing asked on the lost socket will be answered on it."""
        self.fail_all()
        self._delete_events.clear()

    def fail_all(self) -> None:
        """Every pending question fails (:class:`LookupFailed`) for whoever waits on it."""
        for key in list(self._pending):
            self._fail(key)

    def _is_probe(self, item_id: str) -> bool:
        return is_probe_item_id(item_id) or item_id in self._leftovers.values()

    async def _delete_probe(self, key: str, item_id: str) -> None:
        event = item_delete(item_id)
        # Its error (a probe that never arrived is not found) is expected, not a warning.
        self._delete_events[event["event_id"]] = key
        self._leftovers.setdefault(key, item_id if item_id != key else None)
        await self._send(event)

    async def _ask(self, key: str, event: dict[str, Any]) -> Item | None:
        future = self._pending.get(key)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._pending[key] = future
            self._events[event["event_id"]] = key
            if not await self._send(event):
                self._fail(key)
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT):
                return await asyncio.shield(future)
        except (TimeoutError, LookupFailed) as exc:
            self._fail(key)
            raise LookupFailed(key) from exc

    def _resolve(self, key: str, item: Item | None) -> None:
        future = self._pending.pop(key, None)
        self._forget_events(key)
        if future is not None and not future.done():
            future.set_result(item)

    def _fail(self, key: str) -> None:
        future = self._pending.pop(key, None)
        self._forget_events(key)
        if future is not None and not future.done():
            future.set_exception(LookupFailed(key))
            future.exception()  # retrieved here: nobody else may be waiting

    def _forget_events(self, key: str) -> None:
        for event_id in [e for e, k in self._events.items() if k == key]:
            del self._events[event_id]
