"""What the page adds to its call behind the broker's back, and what the controller does about it.

A ``function_call_output`` the broker did not send is deleted; items only the model may add
(a ``function_call``; a ``system`` or ``assistant`` message under :attr:`PageItems.REFUSE`)
that no watched response produced are deleted; under :attr:`PageResponses.CANCEL` a response
nobody the broker trusts started is flagged for cancelling. Each is reported
(:mod:`sideband.tamper`).
"""

from __future__ import annotations

from typing import Any

from sideband.contracts import Wiring
from sideband.events import Item, item_delete
from sideband.tamper import (
    ForgedOutput,
    PageItem,
    PageItems,
    PagePolicy,
    PageResponses,
    cut,
)


def vad_responds(session: dict[str, Any]) -> bool:
    """Whether a session's turn detection starts a response by itself (``create_response``)."""
    audio = session.get("audio")
    audio_input = audio.get("input") if isinstance(audio, dict) else None
    if not isinstance(audio_input, dict) or "turn_detection" not in audio_input:
        return True  # not shown: the default (server VAD, create_response true)
    turn = audio_input["turn_detection"]
    return isinstance(turn, dict) and turn.get("create_response", True) is not False


class PageWatch:
    """One call's item origins and response origins: the model's, the user's, or the page's.

    Args:
        policy: what the page may add (items, responses).
        wiring: what the controller lends it.
    """

    def __init__(self, policy: PagePolicy, wiring: Wiring) -> None:
        self.policy = policy
        self._send = wiring.send
        self._report = wiring.report
        self._model_items: set[str] = set()
        self._suspects: dict[str, Item] = {}
        """Restricted items seen while a response was under way: judged at its end."""
        self._judged: set[str] = set()
        self.planted_pending: set[str] = set()
        """Page items deleted but not yet seen gone: a response now would read them."""
        self._delete_events: dict[str, str] = {}
        """Our deletes of page items by event id: an error answer means the item is gone."""
        self._audio_turn = False
        """The provider's voice detection committed a user turn that no ``response.created``
        has followed yet: the next response is the provider's answer to it."""
        self._speech_items: set[str] = set()
        """Items server VAD ended (``speech_stopped``): only their commits are audio turns."""
        self._vad_responds = True
        """The session's turn detection starts a response on its own (``create_response``),
        as last seen in the provider's session."""

    # ---- items -----------------------------------------------------------------------------

    def model_made(self, item_id: str) -> None:
        """A watched response produced ``item_id``: it is never the page's."""
        self._model_items.add(item_id)
        self._suspects.pop(item_id, None)

    def ours(self, item_id: str) -> None:
        """The broker itself adds ``item_id`` (a note, :mod:`sideband.notes`): never the page's."""
        self._model_items.add(item_id)

    async def judge(self, item: Item, *, idle: bool) -> None:
        """An item entered the conversation; ``idle``: no response is (known to be) under way."""
        if item.id is None or item.id in self._model_items or item.id in self._judged:
            return
        if not self._restricted(item):
            return
        if idle:
            # Nothing is being generated: no response of the model's can have made it.
            await self._planted(item)
        else:
            # The model's own items may be announced here before the response says so
            # (the order is unspecified): decided when this response ends or the next starts.
            self._suspects.setdefault(item.id, item)

    async def plant_suspects(self) -> None:
        """A response started or ended: the suspects it did not produce are the page's."""
        for item_id in list(self._suspects):
            await self._planted(self._suspects.pop(item_id))

    async def redelete(self) -> None:
        """On a new connection: deletes sent on a lost socket may never have arrived."""
        for item_id in sorted(self.planted_pending):
            await self._delete_planted(item_id)

    def deleted(self, item_id: str) -> bool:
        """An item left the conversation; ``True`` if it was a page item we deleted."""
        if item_id not in self.planted_pending:
            return False
        self.planted_pending.discard(item_id)
        for event_id in [e for e, i in self._delete_events.items() if i == item_id]:
            del self._delete_events[event_id]
        return True

    def refused(self, event_id: str) -> bool:
        """The provider's ``error`` for ``event_id``; ``True`` if it refused our delete."""
        if event_id not in self._delete_events:
            return False
        # Refused: the page item is not in the conversation (any more) either way.
        self.planted_pending.discard(self._delete_events.pop(event_id))
        return True

    async def forged(self, item: Item) -> None:
        """A ``function_call_output`` the broker did not send: deleted and reported."""
        deleted = item.id is not None and await self._send(item_delete(item.id))
        self._report(ForgedOutput(item_id=item.id, call_id=cut(item.call_id), deleted=deleted))

    def _restricted(self, item: Item) -> bool:
        """Whether only the model (or nobody) may add an item like this one."""
        if item.type == "function_call":
            return True
        return (
            item.type == "message"
            and item.role in ("system", "assistant")
            and self.policy.items is PageItems.REFUSE
        )

    async def _planted(self, item: Item) -> None:
        if item.id is None or item.id in self._model_items or item.id in self._judged:
            return
        self._judged.add(item.id)
        deleted = await self._delete_planted(item.id)
        self._report(
            PageItem(
                item_id=cut(item.id),
                item_type=item.type,
                role=item.role,
                call_id=cut(item.call_id),
                tool=cut(item.name),
                deleted=deleted,
            )
        )

    async def _delete_planted(self, item_id: str) -> bool:
        event = item_delete(item_id)
        self._delete_events[event["event_id"]] = item_id
        if await self._send(event):
            self.planted_pending.add(item_id)
            return True
        del self._delete_events[event["event_id"]]
        return False

    # ---- responses -------------------------------------------------------------------------

    def session_seen(self, session: dict[str, Any]) -> None:
        self._vad_responds = vad_responds(session)

    def speech_stopped(self, item_id: str | None) -> None:
        if item_id is not None:
            self._speech_items.add(item_id)

    def committed(self, item_id: str | None) -> None:
        # A page may commit the buffer itself and then start a response of its own: only a
        # turn the provider's voice detection ended, on a session whose turn detection
        # answers by itself, is an audio turn that starts a response.
        if item_id is not None and item_id in self._speech_items:
            self._speech_items.discard(item_id)
            self._audio_turn = self._vad_responds

    def response_started(self, *, ours: bool) -> bool:
        """A response started; ``True`` if it is the page's and the policy cancels those."""
        from_audio = not ours and self._audio_turn
        # One turn, one response: whatever starts next is not that turn's.
        self._audio_turn = False
        return not ours and not from_audio and self.policy.responses is PageResponses.CANCEL

    def connection_lost(self) -> None:
        """A turn the lost socket announced is no evidence about the next connection's."""
        self._audio_turn = False
        self._speech_items.clear()
