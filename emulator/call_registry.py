"""The registry of every call the app created: live calls and the newest ended ones."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

from ._ids import new_call_id
from .calls import Call
from .faults import Faults
from .settings import EmulatorSettings

logger = logging.getLogger(__name__)

MAX_ENDED_CALLS: Final = 1_000  # a long-running emulator forgets the oldest ended calls


class CallRegistry:
    """Every call the app created, keyed by call id.

    Live calls, and the newest ``MAX_ENDED_CALLS`` ended ones (so tests can inspect a
    call after it ended).
    """

    def __init__(self, settings: EmulatorSettings, faults: Faults | None = None) -> None:
        self._settings = settings
        self._faults = faults
        self._calls: dict[str, Call] = {}

    def get(self, call_id: str) -> Call | None:
        return self._calls.get(call_id)

    @property
    def calls(self) -> Mapping[str, Call]:
        """A read-only view of all calls ever created, in creation order."""
        return MappingProxyType(self._calls)

    async def create_call(
        self,
        offer_sdp: str,
        session: dict[str, Any],
        *,
        page_events: frozenset[str] | None = None,
    ) -> tuple[Call, str]:
        """Negotiate a new call; return it with the answer SDP.

        A call whose offer is rejected is closed and never registered. ``page_events``
        filters its data channel (see :class:`Call`).

        Raises:
            InvalidSdpError: the offer is unusable.
        """
        call = Call(
            new_call_id(self._settings.flavor),
            session,
            self._settings,
            self._faults,
            page_events=page_events,
        )
        try:
            answer = await call.start(offer_sdp)
        except BaseException:
            await call.end("setup_failed")
            raise
        self._calls[call.call_id] = call
        self._forget_old_calls()
        logger.info("call %s created model=%s", call.call_id, session.get("model"))
        return call, answer

    def add(self, call: Call) -> None:
        """Register a call this registry did not negotiate (a WebSocket session).

        It is inspected and forgotten like the others.
        """
        self._calls[call.call_id] = call
        self._forget_old_calls()

    def _forget_old_calls(self) -> None:
        ended = [call_id for call_id, call in self._calls.items() if call.ended]
        for call_id in ended[: max(0, len(ended) - MAX_ENDED_CALLS)]:
            del self._calls[call_id]

    def close_sidebands(self, code: int) -> None:
        """Ask every sideband of every call to close with ``code``."""
        for call in self._calls.values():
            call.close_sidebands(code)

    async def close(self) -> None:
        """End every live call (reason ``shutdown``); idempotent."""
        await asyncio.gather(*(call.end("shutdown") for call in self._calls.values()))
