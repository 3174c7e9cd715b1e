"""The browser bridge: a tool call the page relays, the fallback path into the dispatcher.

The sideband is the normal path (:mod:`broker.tools.sideband_handler`). A page whose session
has no sideband (bridge-only), or whose sideband failed or closed, relays the model's function
calls here instead; each runs through the same once-only pipeline. While the sideband owns
the session's calls, the bridge only waits for the sideband's result.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

from broker.auth.principals import BrowserPrincipal
from broker.db.models import CALL_RUNNING_STATES, SessionRow, SidebandState, ToolPath
from broker.errors import (
    ConflictError,
    ForbiddenError,
    NotFoundError,
    UnauthorizedError,
    ValidationFailedError,
)
from broker.tools.call_ids import CALL_ID_PATTERN
from broker.tools.dispatch import CallOutcome, CallRejectedError, ToolDispatcher, arguments_equal

logger = logging.getLogger(__name__)

_SIDEBAND_OWNS_CALLS: Final = frozenset(
    {
        SidebandState.PENDING,
        SidebandState.CONNECTING,
        SidebandState.CONNECTED,
        # Reconnecting, the sideband still owns the calls: its resync finds what it missed.
        SidebandState.RECONNECTING,
    }
)


class BridgeCallRequest(BaseModel):
    """Body of ``POST /api/v1/sessions/{id}/tools/{tool}``."""

    model_config = ConfigDict(extra="forbid")

    call_id: str = Field(pattern=CALL_ID_PATTERN)
    """The one call-id rule of both paths (:mod:`broker.tools.call_ids`)."""
    arguments: str | dict[str, Any] = "{}"
    """The JSON text the model produced (or the parsed object)."""


AtOwner = Callable[[SessionRow, str, str, str], Awaitable[CallOutcome | None]]
"""Runs a relayed call at the instance that owns its call; ``None``: this instance owns it."""


class Bridge:
    """Runs (or waits for) the tool calls pages relay.

    Args:
        dispatcher: the once-only pipeline both paths share.
        wait_timeout: how long a relayed call waits for the sideband's (or a racing
            request's) result.
        page_sees_function_calls: the provider's capability: without it (Azure's
            ``webrtcfilter=on``) a page never sees the model's calls, so none it relays is
            run.
    """

    def __init__(
        self,
        dispatcher: ToolDispatcher,
        wait_timeout: float,
        at_owner: AtOwner | None = None,
        *,
        page_sees_function_calls: bool = True,
    ) -> None:
        self._dispatcher = dispatcher
        self._wait_timeout = wait_timeout
        self._at_owner = at_owner
        self._page_sees_function_calls = page_sees_function_calls

    async def run_here(
        self, row: SessionRow, call_id: str, tool: str, arguments: str
    ) -> CallOutcome:
        """Run a relayed call in this instance (its owner), through the once-only pipeline.

        ``arguments`` may come sealed from the instance that received the call
        (:meth:`run_for_peer`): they are opened here.

        Raises:
            ValidationFailedError: the dispatcher rejected the call.
        """
        try:
            return await self._dispatcher.run(
                row.id,
                row.tools,
                call_id,
                tool,
                self._dispatcher.from_transit(row.id, call_id, arguments),
                ToolPath.BRIDGE,
                loser_wait=self._wait_timeout,
            )
        except CallRejectedError as exc:
            raise ValidationFailedError(exc.code, exc.message) from None

    async def run_for_peer(
        self, row: SessionRow, call_id: str, tool: str, arguments: str
    ) -> CallOutcome:
        """:meth:`run_here` for a call another instance relayed (through a command row).

        A redacting tool's output goes back sealed, as its arguments came.
        """
        outcome = await self.run_here(row, call_id, tool, arguments)
        if outcome.output is None:
            return outcome
        sealed = self._dispatcher.in_transit(row.id, call_id, outcome.tool, outcome.output)
        return replace(outcome, output=sealed)

    async def call(
        self, browser: BrowserPrincipal, row: SessionRow, tool: str, request: BridgeCallRequest
    ) -> CallOutcome:
        """A tool call relayed by the browser of session ``row``.

        While a session's sideband is starting or connected, the sideband is the only executor:
        the bridge waits (bounded) for its result and returns it, so a browser cannot run a call
        the model did not make. Only a bridge-only session, or one whose sideband failed or
        closed, has the bridge run the call, through the same once-only pipeline, and only
        on a provider whose page sees the model's function calls: elsewhere the page cannot
        have seen the call it relays, so the bridge refuses to be the executor.

        ``browser`` comes unchecked for expiry: the token that made the offer stays good here
        while its call is live (a call outlives a client secret's few minutes); any other
        token, or that one once the call is over, must be unexpired.

        Raises:
            UnauthorizedError (``token_expired``), NotFoundError (``call_not_found``),
            ConflictError (``session_not_live``, ``call_arguments_mismatch``),
            ForbiddenError (``tool_not_allowed``: not in the session's allowlist),
            ValidationFailedError (``provider_lacks_capability``: the bridge would run the
            call on a provider whose page sees no function calls; or the dispatcher
            rejected the call).
        """
        call_running = row.state in CALL_RUNNING_STATES
        offer_token_of_live_call = call_running and row.offer_jti == browser.token_id
        if browser.expired() and not offer_token_of_live_call:
            raise UnauthorizedError("token_expired", "the client secret has expired")
        if not call_running:
            raise ConflictError(
                "session_not_live", f"the session is {row.state}, not live", state=row.state
            )
        if tool not in row.tools:
            # The browser, not the model, asked for a tool the session was never given:
            # refused outright (the model's own out-of-allowlist calls get a denied record).
            logger.warning(
                "bridge refused a tool outside the allowlist session_id=%s tool=%.100s",
                row.id,
                tool,
            )
            raise ForbiddenError("tool_not_allowed", "this session may not use that tool")
        arguments = (
            request.arguments
            if isinstance(request.arguments, str)
            else json.dumps(request.arguments, separators=(",", ":"))
        )
        stored = await self._dispatcher.get_record(row.id, request.call_id)
        if stored is not None and (
            stored.tool != tool
            # The raw ones: a redacting tool's row shows its fields as keyed hashes.
            or not arguments_equal(self._dispatcher.raw_arguments(stored), arguments)
        ):
            raise ConflictError(
                "call_arguments_mismatch",
                "this call_id was recorded with another tool or other arguments",
            )
        if row.sideband_enabled and row.sideband_state in _SIDEBAND_OWNS_CALLS:
            outcome = await self._dispatcher.wait_settled(
                row.id, request.call_id, within=self._wait_timeout
            )
            if outcome is None:
                raise NotFoundError(
                    "call_not_found",
                    "the sideband has not seen this call from the model",
                )
            return outcome
        if not self._page_sees_function_calls:
            # Under Azure's webrtcfilter the model's function calls never reach the page, so
            # a call it relays cannot be one it saw the model make. A lost sideband's calls
            # wait for its re-attach (the resync finds them).
            logger.warning(
                "bridge refused: the page sees no function calls on this provider"
                " session_id=%s sideband=%s",
                row.id,
                row.sideband_state,
            )
            raise ValidationFailedError(
                "provider_lacks_capability",
                "this provider does not show the model's function calls to the page, so the"
                " bridge cannot run them; the sideband runs every tool call",
                capability="page_sees_function_calls",
            )
        if self._at_owner is not None:
            # A call another instance owns is run there, where its limits are kept. A
            # redacting tool's arguments and output cross (a command row) sealed.
            outcome = await self._at_owner(
                row,
                request.call_id,
                tool,
                self._dispatcher.in_transit(row.id, request.call_id, tool, arguments),
            )
            if outcome is not None:
                if outcome.output is None:
                    return outcome
                opened = self._dispatcher.from_transit(row.id, request.call_id, outcome.output)
                return replace(outcome, output=opened)
        return await self.run_here(row, request.call_id, tool, arguments)
