"""Operators' decisions on approval-gated tool calls: list, approve, deny, expire.

The held call and its ``approvals`` row are :mod:`broker.tools.approvals`'. A decision is
recorded first (the approval's conditional ``pending →`` update and its audit record in one
transaction: one decision wins), then carried out on the live call by the instance that owns
it (a call command, :data:`APPROVAL_COMMAND`, when that is another instance): an approval runs
the tool (:meth:`~broker.tools.dispatch.ToolDispatcher.run_approved`), and the decision goes
to the model as a system message naming the call id, followed by ``response.create``
(:meth:`sideband.CallController.inject_note`), so the model's next answer tells the user.

Injecting needs a connected sideband (the provider's ``sideband`` capability): a session
without one (bridge-only, degraded) still records its approvals, but a decision on them is
refused (409 ``sideband_not_connected``) until it expires. An approval of a call that ended
expires (409 ``session_not_live``). :meth:`ApprovalService.sweep` (every
:data:`SWEEP_EVERY_S` seconds) expires overdue approvals: the held call is denied and, on a
live call this instance owns, the model is told.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Final

from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.audit import trail
from broker.auth.principals import ApiPrincipal
from broker.call.supervisor import SidebandSupervisor
from broker.db import queries
from broker.db.models import (
    CALL_RUNNING_STATES,
    ApprovalStatus,
    SessionRow,
    SidebandState,
    ToolCallStatus,
    utcnow,
)
from broker.db.times import as_utc
from broker.errors import ConflictError, NotFoundError
from broker.session.call_actions import APPROVAL_COMMAND, CallActions
from broker.session.sweeps import sweep_forever
from broker.tools import approvals
from broker.tools.dispatch import ToolDispatcher
from sideband import Provider

logger = logging.getLogger(__name__)

SWEEP_EVERY_S: Final = 5.0
SWEEP_BATCH: Final = 100


class ApprovalService:
    """The approvals API's work and the expiry sweep (one per app)."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        dispatcher: ToolDispatcher,
        supervisor: SidebandSupervisor,
        calls: CallActions,
        provider: Provider,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._dispatcher = dispatcher
        self._supervisor = supervisor
        self._calls = calls
        self._provider = provider
        calls.approvals = self.decide_here

    # ---- reading ---------------------------------------------------------------------------

    async def list(
        self, principal: ApiPrincipal, status: ApprovalStatus | None, limit: int
    ) -> Sequence[Row[Any]]:
        """The key's tenant's approvals (every tenant's for a cross-tenant key), newest first."""
        async with self._sessionmaker() as s:
            return await approvals.list_approvals(s, principal.tenant_id, status, limit)

    async def get(self, principal: ApiPrincipal, approval_id: str) -> Row[Any]:
        """Raises NotFoundError ``approval_not_found``: unknown, or another tenant's."""
        async with self._sessionmaker() as s:
            row = await approvals.get_approval(s, approval_id)
        if row is None or not principal.sees_tenant(row.tenant_id):
            raise NotFoundError("approval_not_found", "no such approval")
        return row

    # ---- deciding --------------------------------------------------------------------------

    async def decide(
        self, principal: ApiPrincipal, approval_id: str, approve: bool, reason: str | None
    ) -> dict[str, Any]:
        """An operator's decision (the caller checked ``admin``); what the API answers.

        Raises:
            NotFoundError: ``approval_not_found``.
            ConflictError: ``approval_decided`` (not pending, or expired),
                ``session_not_live`` (the call ended: the approval expires),
                ``sideband_not_connected`` (nothing can tell the model).
            UnavailableError: ``owner_unavailable`` (another instance owns the call).
        """
        row = await self.get(principal, approval_id)
        if row.status != ApprovalStatus.PENDING or as_utc(row.expires_at) <= utcnow():
            raise ConflictError(
                "approval_decided",
                f"this approval is {row.status if row.status != 'pending' else 'expired'}",
                approval_status=row.status if row.status != "pending" else "expired",
            )
        async with self._sessionmaker() as s:
            session = await queries.get_session_row(s, row.session_id)
        if session is None or session.state not in CALL_RUNNING_STATES:
            await self._expire(row, inject=False)
            raise ConflictError("session_not_live", "the call has ended; the approval expired")
        if not self._sideband_connected(session):
            raise ConflictError(
                "sideband_not_connected",
                "the call has no connected sideband to tell the model the decision on",
            )
        payload = {"approval_id": approval_id, "approve": approve, "by": principal.key_id}
        payload["reason"] = reason
        owner = await self._calls.owner_elsewhere(session.id)
        if owner is not None:
            return await self._calls.ask_owner(session.id, owner, APPROVAL_COMMAND, payload)
        return await self.decide_here(payload)

    def _sideband_connected(self, session: SessionRow) -> bool:
        return (
            self._provider.capabilities.sideband
            and session.sideband_enabled
            and session.sideband_state == SidebandState.CONNECTED
        )

    async def decide_here(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Record and carry out a decision on a call this instance owns (or was asked to)."""
        approval_id, approve = str(payload["approval_id"]), bool(payload["approve"])
        by, reason = str(payload["by"]), payload.get("reason")
        async with self._sessionmaker() as s:
            row = await approvals.get_approval(s, approval_id)
        if row is None:
            raise NotFoundError("approval_not_found", "no such approval")
        if not self._supervisor.running(row.session_id):
            raise ConflictError(
                "sideband_not_connected",
                "the call has no connected sideband to tell the model the decision on",
            )
        status = ApprovalStatus.APPROVED if approve else ApprovalStatus.DENIED
        async with self._sessionmaker.begin() as s:
            decided = await approvals.decide(
                s, approval_id, status, by=by, reason=reason, now=utcnow()
            )
            if decided is not None:
                await trail.add(s, approvals.decided_entry(decided, status, by, reason))
        if decided is None:
            raise ConflictError("approval_decided", "this approval is no longer pending")
        logger.warning(
            "approval %s session_id=%s call_id=%s tool=%s by_key=%s",
            status,
            row.session_id,
            row.call_id,
            row.tool,
            by,
        )
        answer: dict[str, Any] = {"id": approval_id, "status": str(status)}
        stored: str | None = None
        if approve:
            outcome = await self._dispatcher.run_approved(row.session_id, row.call_id)
            if outcome is None:
                text = approvals.decision_note(
                    row.call_id, row.tool, "approved", "The call was no longer waiting to run."
                )
            else:
                # The model gets the result as a function_call_output would carry it; the
                # operator's answer and the event log get it as the trail shows it (a
                # redacting tool's fields as keyed hashes), as for any call's output.
                shown = self._dispatcher.shown_arguments(row.tool, outcome.output or "")
                text = approvals.decision_note(
                    row.call_id, row.tool, "approved", f"Result: {outcome.output or ''}"
                )
                stored = approvals.decision_note(
                    row.call_id, row.tool, "approved", f"Result: {shown}"
                )
                answer["tool_status"] = outcome.status.value
                answer["result"] = shown
        else:
            answer["tool_status"] = ToolCallStatus.DENIED.value
            text = approvals.decision_note(
                row.call_id,
                row.tool,
                "denied",
                f"Reason: {reason or 'none given'}. The action was not carried out.",
            )
        answer["injected"] = await self._inject(row.session_id, text, stored)
        return answer

    async def _inject(self, session_id: str, text: str, stored: str | None = None) -> bool:
        try:
            sent = await self._supervisor.inject_note(session_id, text, stored)
        except KeyError:
            sent = False
        if not sent:
            logger.warning("approval decision not injected session_id=%s", session_id)
        return sent

    async def _expire(self, row: Row[Any], *, inject: bool) -> bool:
        """Expire a pending approval (its call denied), audited; tell the model if ``inject``."""
        async with self._sessionmaker.begin() as s:
            decided = await approvals.decide(
                s,
                row.id,
                ApprovalStatus.EXPIRED,
                by=None,
                reason="no decision in time",
                now=utcnow(),
                overdue=True,
            )
            if decided is not None:
                await trail.add(
                    s,
                    approvals.decided_entry(
                        decided, ApprovalStatus.EXPIRED, None, "no decision in time"
                    ),
                )
        if decided is None:
            return False
        logger.warning(
            "approval expired session_id=%s call_id=%s tool=%s",
            row.session_id,
            row.call_id,
            row.tool,
        )
        if inject:
            text = approvals.decision_note(
                row.call_id,
                row.tool,
                "expired",
                "No operator decided in time. The action was not carried out.",
            )
            await self._inject(row.session_id, text)
        return True

    # ---- expiry ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Sweep every :data:`SWEEP_EVERY_S` seconds until cancelled."""
        await sweep_forever(self.sweep, SWEEP_EVERY_S, "approval")

    async def sweep(self) -> int:
        """Expire overdue approvals (and those of ended calls); returns how many this did.

        A live call another instance owns is left to that instance's sweep (only the owner
        can tell the model).
        """
        async with self._sessionmaker() as s:
            rows = await approvals.overdue(s, utcnow(), SWEEP_BATCH)
        expired = 0
        for row in rows:
            async with self._sessionmaker() as s:
                session = await queries.get_session_row(s, row.session_id)
            live = session is not None and session.state in CALL_RUNNING_STATES
            here = live and self._supervisor.running(row.session_id)
            if live and not here and await self._calls.owner_elsewhere(row.session_id):
                continue
            expired += await self._expire(row, inject=here)
        return expired
