"""Asking the model to answer our outputs: one ``response.create`` at a time, when it may.

The answer ledger says whether an output is waiting for an answer and no response (of anyone's,
or a request of ours) is under way; the controller adds what else must not be in the
conversation when a response starts. With a config guard the session is probed before each
request, so a page's change is restored before the model answers under it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sideband.answers import AnswerLedger
from sideband.config_watch import ConfigWatch
from sideband.contracts import Wiring
from sideband.events import response_create

logger = logging.getLogger(__name__)


class Responder:
    """Sends our ``response.create`` once an output needs an answer and nothing is in the way.

    Args:
        wiring: what the controller lends it.
        answers: the answer ledger.
        blocked: whether something the ledger does not know of is in the way (a forged output
            or a page item still in the conversation).
        config: probes the session before each request; ``None``: no config guard.
        connection: the current sideband (a probe's answer on an older one decides nothing).
        stopping: whether the controller is stopping.
    """

    def __init__(
        self,
        wiring: Wiring,
        answers: AnswerLedger,
        *,
        blocked: Callable[[], bool],
        config: ConfigWatch | None,
        connection: Callable[[], object],
        stopping: Callable[[], bool],
    ) -> None:
        self._call_id = wiring.call_id
        self._send = wiring.send
        self._spawn = wiring.spawn
        self._answers = answers
        self._blocked = blocked
        self._config = config
        self._connection = connection
        self._stopping = stopping
        self._creating = False
        """A task is probing the session before sending our ``response.create``."""

    def wanted(self) -> bool:
        return self._answers.wanted() and not self._blocked()

    async def respond(self) -> None:
        """Ask for a response if an output is unanswered and nothing stands in the way."""
        if not self.wanted() or self._creating:
            return
        if self._config is None:
            await self._create()
            return
        self._creating = True
        self._spawn(self._probe_then_create(self._config), "response-create")

    def refused(self, event_id: str, code: str | None) -> bool:
        """The provider's ``error`` for ``event_id``; ``True`` if it refused our request."""
        if event_id != self._answers.requested:
            return False
        # "Already active": someone (VAD, the browser) started a response first. If it
        # started after our outputs it answers them; if not, they are still unanswered when
        # it ends, and its response.done asks again.
        self._answers.requested = None
        if code != "conversation_already_has_active_response":
            logger.warning(
                "provider refused our response.create call_id=%s code=%s", self._call_id, code
            )
        return True

    async def _probe_then_create(self, config: ConfigWatch) -> None:
        try:
            conn = self._connection()
            answered = await config.probe()
            if conn is not self._connection() or self._stopping():
                return  # that connection is gone: the next one's resync decides
            if not answered:
                # No view of the session: assert the config blind; the provider applies it
                # before the response we ask for next.
                await config.assert_blind()
            if self.wanted():
                await self._create()
        finally:
            self._creating = False

    async def _create(self) -> None:
        event = response_create()
        self._answers.requested = event["event_id"]
        if not await self._send(event):
            # Lost with the connection: the next connection's resync decides again.
            self._answers.requested = None
