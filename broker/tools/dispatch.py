"""The one pipeline every function call goes through, whichever path reports it.

``(session_id, call_id)`` is unique in ``tool_calls``; a call runs only after a conditional
``pending → running`` update that exactly one caller can win. Whoever loses (the sideband after
the bridge, or the reverse) waits for the winner's result and returns it, so a tool never runs
twice and the model never gets two outputs for one call.

Before a call runs, its call id is checked (:mod:`broker.tools.call_ids`; a call with an
invalid one is recorded under a safe stand-in id and denied, never run), then everything
:mod:`broker.tools.verdict` checks: the session's allowlist, the tool, its arguments, the kill
switch, the tool's breaker, the session's budget and concurrency. A denial settles the call
``denied`` with the code in ``error`` and an :func:`~broker.tools.policy.error_output` for the
model.

The pipeline's parts: :mod:`broker.tools.ledger` (the rows: record, settle, recover, read),
:mod:`broker.tools.verdict` (the deciding transaction's checks), :mod:`broker.tools.execute`
(running the tool), :mod:`broker.tools.waiters` (the losers of a claim wait for its winner),
:mod:`broker.tools.outcome` (what callers get back).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Collection
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker import tracing
from broker.audit import trail
from broker.audit.records import AuditEntry
from broker.audit.redaction import FieldRedactor, SealError
from broker.db import queries
from broker.db.models import ToolCallStatus, ToolPath
from broker.tools import approvals, audit
from broker.tools.breaker import CircuitBreakers, Refusal
from broker.tools.budget import DENIED
from broker.tools.call_ids import is_valid_call_id, printable, recorded_call_id
from broker.tools.codes import ToolErrorCode
from broker.tools.dtmf import DtmfDigits
from broker.tools.execute import execute_granted
from broker.tools.ledger import (
    CALL_ID_RULE,
    MAX_TOOL_NAME,
    CallLedger,
    checked_tool_name,
    record_call,
)
from broker.tools.outcome import (
    BROKER_ERROR_OUTPUT,
    CallOutcome,
    CallRejectedError,
    arguments_equal,
)
from broker.tools.policy import error_output, strict_json_loads
from broker.tools.registry import ToolRegistry
from broker.tools.server_tools import SessionTools
from broker.tools.verdict import Denied, Granted, Verdict, decide_call
from broker.tracing import SpanHandle
from sideband.events import new_item_id

__all__ = [
    "BROKER_ERROR_OUTPUT",
    "CallOutcome",
    "CallRejectedError",
    "ToolDispatcher",
    "arguments_equal",
]

logger = logging.getLogger(__name__)


class ToolDispatcher(CallLedger):
    """Records, authorizes and runs function calls exactly once.

    The rows' bookkeeping (recording a call seen, abandoning, recovering, reading and
    waiting) is :class:`~broker.tools.ledger.CallLedger`'s; this adds the pipeline that
    decides and runs a call.

    Every row change is audited in its transaction (:mod:`broker.tools.audit`); ``redactor``
    (:class:`~broker.tools.ledger.CallLedger`) is required by a registry with ``redact``
    fields.
    """

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        registry: ToolRegistry,
        breakers: CircuitBreakers | None = None,
        on_finished: Callable[[str, str, float, str | None], None] | None = None,
        redactor: FieldRedactor | None = None,
    ) -> None:
        super().__init__(sessionmaker, registry, redactor)
        # on_finished(tool, status, seconds, tenant) hears of every call this process settled
        # (ran, denied or cut off), e.g. for metrics; it must not block. The session's tenant
        # is None when the call was refused before its session was read (a bad call id).
        self._on_finished = on_finished
        # Per process: each broker process pauses a failing tool on its own evidence.
        self._breakers = CircuitBreakers() if breakers is None else breakers
        self.dtmf = DtmfDigits()
        """Each phone call's keys so far (:mod:`broker.tools.dtmf`), for ``dtmf`` tools."""

    async def run(
        self,
        session_id: str,
        allowed_tools: Collection[str],
        call_id: str,
        tool: str,
        arguments: str,
        path: ToolPath,
        response_id: str | None = None,
        *,
        item_id: str | None = None,
        loser_wait: float = 0.0,
        session_tools: SessionTools | None = None,
    ) -> CallOutcome:
        """Run the call if nobody has; otherwise return the other claimant's result.

        ``session_tools``: a trusted session's tools, its server tools over the registry
        (:mod:`broker.tools.server_tools`).

        If another request owns the call, this waits up to ``loser_wait`` seconds for its
        result (0: return the current state at once). A tool's failure or a denial is an
        outcome with an output, never an exception.

        ``allowed_tools`` is the caller's allowlist; a tool must also be in the session row's
        list (the two agree unless a caller is wrong, and then the narrower one wins).

        One transaction decides the call: it takes the session's tool lock (reading its
        limits and allowlist), records the call if it is new, claims it (``pending →
        running``, reading the kill switch), checks policy and grants the budget — or
        settles a denial. Its commit is what makes ``running`` durable before the tool runs;
        a second one settles the outcome with the output's item id, before it is sent.

        A call whose id is invalid (:func:`~broker.tools.call_ids.is_valid_call_id`) is
        recorded under :func:`~broker.tools.call_ids.recorded_call_id` and denied
        ``call_id_invalid`` before anything else: it never reaches policy, the breaker or
        the tool (its id could not go into the tool's headers), and the outcome carries the
        stand-in id (safe to log and store; the caller answers the model with the id it
        has). Its row has no output item id, so a restarted broker never re-sends it.

        Each run is a ``broker.tool_call`` span (:mod:`broker.tracing`): a child of the call's
        span on the sideband; on the bridge the root of its own trace, linked to the call's.
        An HTTP tool's request carries its ``traceparent``.

        Raises:
            CallRejectedError: the call cannot be recorded at all.
        """
        # Ids, names and outcomes only: never the arguments or the output.
        with tracing.span(
            "broker.tool_call",
            {
                "broker.session_id": session_id,
                "broker.call_id": call_id if is_valid_call_id(call_id) else None,
                "broker.tool": printable(tool, MAX_TOOL_NAME),
                "broker.tool_path": path.value,
            },
            links=(tracing.call_context(session_id),) if path is ToolPath.BRIDGE else (),
        ) as span:
            outcome = await self._run(
                session_id,
                allowed_tools,
                call_id,
                tool,
                arguments,
                path,
                response_id,
                item_id=item_id,
                loser_wait=loser_wait,
                span=span,
                session_tools=session_tools,
            )
            span.set("broker.call_id", outcome.call_id)
            span.set("broker.tool", outcome.tool)
            span.set("broker.outcome", outcome.status.value)
            # False: another request (a replay, or the other path) ran it; this one waited.
            span.set("broker.tool.executed_here", outcome.executed_now)
            return outcome

    async def _run(
        self,
        session_id: str,
        allowed_tools: Collection[str],
        call_id: str,
        tool: str,
        arguments: str,
        path: ToolPath,
        response_id: str | None,
        *,
        item_id: str | None,
        loser_wait: float,
        span: SpanHandle,
        session_tools: SessionTools | None = None,
    ) -> CallOutcome:
        """:meth:`run`, in its span."""
        if not is_valid_call_id(call_id):
            return await self._deny_invalid_id(
                session_id, call_id, tool, arguments, path, response_id, item_id, loser_wait
            )
        tool = checked_tool_name(call_id, tool)
        claimed_at = time.perf_counter()
        # Chosen now and stored with the outcome, before anything is sent: whoever delivers
        # the output later (this process or a restarted one) can ask the provider for it.
        output_item_id = new_item_id() if path is ToolPath.SIDEBAND else None
        verdict: Verdict | None = None
        held: tuple[str, str, AuditEntry] | None = None
        try:
            async with self._begin() as s:
                verdict = await decide_call(
                    s,
                    self._registry,
                    self._breakers,
                    self._redaction,
                    session_id=session_id,
                    allowed_tools=allowed_tools,
                    call_id=call_id,
                    tool=tool,
                    arguments=arguments,
                    path=path,
                    response_id=response_id,
                    item_id=item_id,
                    session_tools=session_tools,
                )
                if isinstance(verdict, Denied):
                    await queries.settle_tool_call_fast(
                        s,
                        session_id,
                        call_id,
                        status=ToolCallStatus.DENIED,
                        from_status=ToolCallStatus.RUNNING,
                        output=verdict.output,
                        error=str(verdict.code),
                        decision=DENIED,
                        output_item_id=output_item_id,
                    )
                    denial = audit.denied(
                        session_id,
                        call_id,
                        verdict.tool,
                        path,
                        verdict.code,
                        verdict.output,
                        verdict.allowlist,
                    )
                    await self._audit(s, verdict.requested, denial)
                elif verdict is not None and verdict.spec.approval:
                    # Held, never run now: the model gets its pending output at once.
                    held = await approvals.hold(
                        s,
                        session_id=session_id,
                        call_id=call_id,
                        tool=verdict.tool,
                        path=path,
                        wait_s=verdict.spec.approval_timeout,
                        output_item_id=output_item_id,
                    )
                    await self._audit(s, verdict.requested, held[2])
                elif verdict is not None:
                    await self._audit(s, verdict.requested)
        except BaseException as exc:
            if isinstance(verdict, Granted):
                verdict.permit.release()  # rolled back (or unknown): the tool never ran
            # A seal that does not open (the redaction key changed under a recorded call)
            # fails the same way every time: the call ends failed, as the database's does.
            if isinstance(exc, SQLAlchemyError | SealError):
                await self._writes.run(
                    self._fail_undecided(session_id, call_id, path, claimed_at),
                    name=f"tool-fail:{call_id}",
                )
            raise
        if verdict is None:
            settled = await self.wait_settled(session_id, call_id, within=loser_wait)
            assert settled is not None
            return settled
        if isinstance(verdict, Denied):
            # Policy at work, not a failure: the span says why, its status stays unset.
            span.set("broker.error", str(verdict.code))
            return self._denied(
                session_id,
                call_id,
                verdict.tool,
                verdict.output,
                path,
                claimed_at,
                output_item_id,
                verdict.budget_spent,
                verdict.tenant,
            )
        if held is not None:
            verdict.permit.release()  # the tool did not run; an approval admits it afresh
            self._waiters.notify(session_id, call_id)
            logger.info(
                "tool call held for approval session_id=%s call_id=%s tool=%s approval_id=%s",
                session_id,
                call_id,
                verdict.tool,
                held[0],
            )
            return CallOutcome(
                call_id,
                verdict.tool,
                ToolCallStatus.HELD,
                held[1],
                path,
                executed_now=True,
                output_item_id=output_item_id,
                budget_spent=verdict.budget_spent,
            )
        status: ToolCallStatus = ToolCallStatus.FAILED
        output: str | None = None
        error: str | None = None
        try:
            status, output, error = await execute_granted(
                session_id,
                call_id,
                verdict.tool,
                verdict.spec,
                verdict.arguments,
                verdict.permit,
                dtmf=self.dtmf.of(session_id) if verdict.spec.dtmf else None,
            )
        finally:
            if output is None:
                # Cancelled or crashed mid-run: the tool may or may not have acted, and it
                # must not run again, so the call settles as failed with that said.
                error = ToolErrorCode.OUTCOME_UNKNOWN
                output = error_output(error, "the broker stopped while running this tool")
            # Shielded: a cancelled request must still leave the row settled, never running.
            await self._writes.run(
                self._settle(
                    session_id,
                    call_id,
                    verdict.tool,
                    path,
                    status,
                    output,
                    error,
                    started=claimed_at,
                    allowlist=verdict.allowlist,
                    output_item_id=output_item_id,
                ),
                name=f"tool-settle:{call_id}",
            )
            if self._on_finished is not None:
                self._on_finished(
                    verdict.tool, status.value, time.perf_counter() - claimed_at, verdict.tenant
                )
        if error is not None:
            span.fail(str(error))
        return CallOutcome(
            call_id,
            verdict.tool,
            status,
            output,
            path,
            executed_now=True,
            output_item_id=output_item_id,
            budget_spent=verdict.budget_spent,
        )

    async def _deny_invalid_id(
        self,
        session_id: str,
        call_id: str,
        tool: str,
        arguments: str,
        path: ToolPath,
        response_id: str | None,
        item_id: str | None,
        loser_wait: float,
    ) -> CallOutcome:
        """Record and deny a call whose id is invalid; see :meth:`run`."""
        started = time.perf_counter()
        key = recorded_call_id(call_id)
        tool = tool[:MAX_TOOL_NAME]
        code = ToolErrorCode.CALL_ID_INVALID
        output = error_output(code, CALL_ID_RULE + "; this call was not run")
        async with self._begin() as s:
            requested = await record_call(
                s, self._redaction, session_id, key, tool, arguments, path, response_id, item_id
            )
            claimed = await queries.claim_tool_call_returning(s, session_id, key, path)
            if claimed is not None:
                await queries.settle_tool_call_fast(
                    s,
                    session_id,
                    key,
                    status=ToolCallStatus.DENIED,
                    from_status=ToolCallStatus.RUNNING,
                    output=output,
                    error=str(code),
                    decision=DENIED,
                )
                # Decided before any session or policy was read: no allowlist applied.
                denial = audit.denied(session_id, key, claimed.tool, path, code, output, None)
                await self._audit(s, requested, denial)
            else:
                await self._audit(s, requested)
        if claimed is None:
            # Reported before (a replay, or the other path): answered once, by the first.
            settled = await self.wait_settled(session_id, key, within=loser_wait)
            assert settled is not None
            return settled
        # The stand-in, never the raw id: it may hold line breaks forged for the log.
        logger.warning(
            "tool call denied session_id=%s call_id=%s tool=%s code=%s",
            session_id,
            key,
            printable(claimed.tool, MAX_TOOL_NAME),
            code,
        )
        # A fresh output item id for the one delivery; not stored (see run()).
        fresh = new_item_id() if path is ToolPath.SIDEBAND else None
        return self._denied(session_id, key, claimed.tool, output, path, started, fresh)

    @staticmethod
    async def _audit(s: queries.Executor, *entries: AuditEntry | None) -> None:
        """Add the transaction's records in one ``INSERT`` (none: no statement)."""
        present = [entry for entry in entries if entry is not None]
        if present:
            await trail.add(s, *present)

    def _denied(
        self,
        session_id: str,
        call_id: str,
        tool: str,
        output: str,
        path: ToolPath,
        started: float,
        output_item_id: str | None,
        budget_spent: bool | None = None,
        tenant: str | None = None,
    ) -> CallOutcome:
        """A denial this request decided: wake the waiters, report it, answer it."""
        self._waiters.notify(session_id, call_id)
        if self._on_finished is not None:
            self._on_finished(
                tool, ToolCallStatus.DENIED.value, time.perf_counter() - started, tenant
            )
        return CallOutcome(
            call_id,
            tool,
            ToolCallStatus.DENIED,
            output,
            path,
            executed_now=True,
            output_item_id=output_item_id,
            budget_spent=budget_spent,
        )

    async def run_approved(self, session_id: str, call_id: str) -> CallOutcome | None:
        """Run a held call an operator approved (:mod:`broker.tools.approvals`).

        ``held → running`` once (``None``: the call is not held, e.g. already run or denied),
        then the normal execution: the kill switch and the breaker as they are now, the
        tool's deadline, redaction, and ``tool.succeeded``/``tool.failed`` in the trail. The
        row keeps its pending output (the one the model got for this call id); the outcome
        carries the tool's output for the decision's note.
        """
        started = time.perf_counter()
        async with self._begin() as s:
            claimed = await approvals.release_held(s, session_id, call_id)
        if claimed is None:
            return None
        tool, path = str(claimed.tool), ToolPath(claimed.path or ToolPath.SIDEBAND)
        spec = self._registry.get(tool)
        status, output = ToolCallStatus.FAILED, ""
        error: str | None = None
        refusal: tuple[ToolErrorCode, str] | None = None
        if spec is None:
            refusal = (ToolErrorCode.TOOL_UNKNOWN, f"the {tool} tool is no longer configured")
        elif claimed.disabled:
            refusal = (
                ToolErrorCode.TOOL_DISABLED,
                f"the {tool} tool has been switched off by an operator; it cannot be used now",
            )
        elif tool not in _allowlist(claimed.allowlist):
            refusal = (
                ToolErrorCode.TOOL_NOT_ALLOWED,
                f"the {tool} tool was taken off this session while it waited for approval",
            )
        else:
            permit = self._breakers.admit(tool)
            if isinstance(permit, Refusal):
                refusal = (ToolErrorCode.TOOL_CIRCUIT_OPEN, permit.message)
        try:
            if refusal is not None:
                error, output = refusal[0], error_output(*refusal)
            else:
                assert spec is not None and not isinstance(permit, Refusal)
                arguments = self._redaction.opened(
                    session_id, call_id, claimed.arguments, claimed.arguments_sealed
                )
                status, output, error = await execute_granted(
                    session_id,
                    call_id,
                    tool,
                    spec,
                    strict_json_loads(arguments),
                    permit,
                    dtmf=self.dtmf.of(session_id) if spec.dtmf else None,
                )
        finally:
            if not output:
                error = ToolErrorCode.OUTCOME_UNKNOWN
                output = error_output(error, "the broker stopped while running this tool")
            await self._writes.run(
                self._finish_approved(session_id, call_id, tool, path, status, output, error),
                name=f"tool-settle:{call_id}",
            )
            if self._on_finished is not None:
                self._on_finished(
                    tool, status.value, time.perf_counter() - started, claimed.tenant_id
                )
        return CallOutcome(call_id, tool, status, output, path, executed_now=True)

    async def _finish_approved(
        self,
        session_id: str,
        call_id: str,
        tool: str,
        path: ToolPath,
        status: ToolCallStatus,
        output: str,
        error: str | None,
    ) -> None:
        shown, _sealed = self._redaction.stored(session_id, call_id, tool, output)
        async with self._begin() as s:
            if await approvals.finish_approved(
                s, session_id, call_id, status, None if error is None else str(error)
            ):
                await trail.add(
                    s, audit.settled(session_id, call_id, tool, path, status, shown, error, None)
                )
        self._waiters.notify(session_id, call_id)


def _allowlist(value: Any) -> frozenset[str]:
    """A session's ``tools`` column as read in a subquery (JSON text on some drivers)."""
    if isinstance(value, str):
        value = json.loads(value)
    return frozenset(str(name) for name in value or ())
