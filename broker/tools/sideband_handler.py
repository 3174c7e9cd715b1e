"""The broker's :class:`sideband.ToolCallHandler` for the sideband's tool calls.

Each call goes through the dispatcher (record once, policy, execute, settle), with each
call's faults isolated from the others and from the sideband.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection

from broker.db.models import ToolCall, ToolPath
from broker.record.event_log import EventRecorder
from broker.tools.call_ids import is_valid_call_id, recorded_call_id
from broker.tools.dispatch import (
    BROKER_ERROR_OUTPUT,
    CallRejectedError,
    ToolDispatcher,
)
from broker.tools.policy import error_output
from broker.tools.server_tools import SessionTools
from sideband import AckPlan, Backlog, FunctionCall, ToolResult, Undelivered

logger = logging.getLogger(__name__)


class SessionToolHandler:
    """The broker's :class:`sideband.ToolCallHandler` for one session.

    ``on_settled`` is told after each call the dispatcher decided, with whether the session's
    tool budget is now spent when the dispatcher knows it (``None``: the leash counts).
    ``session_tools``: a trusted session's tools (its server tools over the registry).
    """

    def __init__(
        self,
        dispatcher: ToolDispatcher,
        session_id: str,
        allowed_tools: Collection[str],
        recorder: EventRecorder,
        on_settled: Callable[[bool | None], None] | None = None,
        session_tools: SessionTools | None = None,
    ) -> None:
        self._session_tools = session_tools
        self._dispatcher = dispatcher
        self._session_id = session_id
        self._allowed = frozenset(allowed_tools)
        self._recorder = recorder
        self._on_settled = on_settled

    def allow(self, tools: Collection[str]) -> None:
        """The session's allowlist changed mid-call (a reconfiguration).

        Calls from now on are judged by ``tools`` (the dispatcher still intersects them with
        the stored row's).
        """
        self._allowed = frozenset(tools)

    async def call_seen(self, call: FunctionCall) -> None:
        # Recording early only lets the bridge find the call sooner (and a restarted broker
        # ask after it); execute() records it if this failed, so a failure here is logged,
        # not fatal. One INSERT: the row is not read back.
        if not is_valid_call_id(call.call_id):
            # Never recorded as seen (a restarted broker would look it up and run it);
            # execute() records it under a stand-in id and denies it.
            return
        try:
            await self._dispatcher.record_seen(
                self._session_id,
                call.call_id,
                call.name,
                call.arguments,
                ToolPath.SIDEBAND,
                call.response_id or None,
                call.item_id,
            )
        except Exception:
            logger.exception(
                "could not record function call session_id=%s call_id=%s",
                self._session_id,
                recorded_call_id(call.call_id),
            )

    async def call_abandoned(self, call: FunctionCall, response_status: str) -> None:
        try:
            await self._dispatcher.abandon(self._session_id, call.call_id, response_status)
        except Exception:
            logger.exception("could not record abandoned call session_id=%s", self._session_id)

    async def execute(self, call: FunctionCall) -> ToolResult:
        """Run through the once-only pipeline; every failure becomes one output for the model.

        One bad call (absurd ids, a database error) must cost that call, not the sideband and
        the other calls of the response. A call whose id is invalid is denied
        ``call_id_invalid`` and answered (under its own id, which only goes to the provider,
        JSON-encoded); the broker's records and logs name it by its safe stand-in.
        """
        # The response that made this call is stored, its usage with it, before the tool
        # can act: an instance that dies while tools run loses no billed response.
        await self._recorder.persist()
        try:
            outcome = await self._dispatcher.run(
                self._session_id,
                self._allowed,
                call.call_id,
                call.name,
                call.arguments,
                ToolPath.SIDEBAND,
                call.response_id or None,
                item_id=call.item_id,
                session_tools=self._session_tools,
            )
        except CallRejectedError as exc:
            logger.warning(
                "function call rejected session_id=%s code=%s", self._session_id, exc.code
            )
            return ToolResult(output=error_output(exc.code, exc.message))
        except Exception:
            logger.exception(
                "function call failed in the broker session_id=%s call_id=%s",
                self._session_id,
                recorded_call_id(call.call_id),
            )
            return ToolResult(output=BROKER_ERROR_OUTPUT)
        self._recorder.record(
            "broker",
            {
                "type": "broker.tool_call",
                # The recorded id: the stand-in for an invalid one (never raw control bytes).
                "call_id": outcome.call_id,
                "tool": outcome.tool,
                "status": outcome.status.value,
                "handled_by": outcome.handled_by.value if outcome.handled_by else None,
            },
        )
        if self._on_settled is not None:
            self._on_settled(outcome.budget_spent)
        # Only the request that ran the call answers the model: not a bridge winner (its
        # browser answers) and not a duplicate report of a call this sideband already ran.
        return ToolResult(
            output=outcome.output or "",
            inject=outcome.executed_now,
            item_id=outcome.output_item_id,
        )

    async def backlog(self) -> Backlog:
        seen, undelivered = await self._dispatcher.unfinished(self._session_id)
        # As the model made and is to get them: a redacting tool's opened from their sealed
        # copies (the resync matches the provider's calls, and re-sends outputs, with these).
        return Backlog(
            seen=[self._call(row) for row in seen],
            undelivered=[
                Undelivered(
                    self._call(row), self._dispatcher.raw_output(row) or "", row.output_item_id
                )
                for row in undelivered
                if row.output_item_id is not None
            ],
        )

    def _call(self, row: ToolCall) -> FunctionCall:
        return FunctionCall(
            call_id=row.call_id,
            name=row.tool,
            arguments=self._dispatcher.raw_arguments(row),
            response_id=row.response_id or "",
            item_id=row.item_id,
        )

    async def output_sent(self, call: FunctionCall) -> None:
        try:
            await self._dispatcher.mark_injected(self._session_id, call.call_id)
        except Exception:
            logger.exception("could not mark output sent session_id=%s", self._session_id)

    def ack_plan(self, call: FunctionCall) -> AckPlan | None:
        """From the registry: a tool with ``ack_after_ms`` is acknowledged when it runs long.

        (A provider without out-of-band responses has every ``ack_after_ms`` off at load.)
        """
        spec = self._dispatcher.spec(call.name)
        if spec is None or spec.ack_after_ms is None:
            return None
        return AckPlan(after_s=spec.ack_after_ms / 1000, instructions=spec.ack_instructions)

    async def acknowledged(self, call: FunctionCall, response_id: str | None) -> None:
        call_id = recorded_call_id(call.call_id)
        self._recorder.record(
            "broker",
            {
                "type": "broker.tool_acknowledged",
                "call_id": call_id,
                "tool": call.name,
                "response_id": response_id,
            },
        )
        try:
            await self._dispatcher.acknowledged(self._session_id, call_id, call.name, response_id)
        except Exception:
            logger.exception("could not audit an acknowledgement session_id=%s", self._session_id)
