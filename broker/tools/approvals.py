"""The approval gate's rows: a held call, its ``approvals`` row, and the decision on it.

A tool with ``approval = "required"`` never runs when the model calls it. Once the call passed
every check of :mod:`broker.tools.verdict` (its budget counted), the deciding transaction
holds it instead of running it: the ``tool_calls`` row goes ``running → held`` with a
*pending output* for the model (its one ``function_call_output``, delivered like any other so
the voice turn goes on), and an ``approvals`` row is created, audited ``approval.requested``
in the same transaction.

An operator's decision (:mod:`broker.session.approvals`) then moves both rows on, each move
conditional on the status it leaves, so one decision wins: approved (the call goes ``held →
running`` and runs through :func:`~broker.tools.execute.execute_granted`), denied, or expired
(both ``held → denied``). The row keeps the pending output as its ``output``: that is what
the model got for the call id, and what a resumed call's echo check must find; the tool's
result goes to the model as a system message naming the call id, and into the trail.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, cast

from sqlalchemy import Table, select, update
from sqlalchemy.engine import Row

from broker.audit.records import Actor, AuditEntry, AuditKind
from broker.db import queries
from broker.db.models import (
    CALL_RUNNING_STATES,
    Approval,
    ApprovalStatus,
    ToolCallStatus,
    ToolPath,
    utcnow,
)
from broker.db.queries._common import DISABLED_TOOLS, SESSIONS, TOOL_CALLS, changed
from broker.tools.budget import ALLOWED

DENIED_CODE: Final = "approval_denied"
EXPIRED_CODE: Final = "approval_expired"
APPROVALS: Final = cast(Table, Approval.__table__)
PENDING_STATUS: Final = "pending_approval"
PENDING_MESSAGE: Final = (
    "This action is waiting for an operator's approval; tell the user, and do not call it again."
)


def new_approval_id() -> str:
    return "apr_" + secrets.token_hex(12)


def pending_output(approval_id: str) -> str:
    """What the model gets at once for a held call (compact JSON)."""
    return json.dumps(
        {"status": PENDING_STATUS, "approval_id": approval_id, "message": PENDING_MESSAGE},
        separators=(",", ":"),
    )


def decision_note(call_id: str, tool: str, decision: str, detail: str) -> str:
    """The system message that tells the model the decision on an earlier call.

    Names the call id: the call already has its (pending) output, so this is a message, not a
    second ``function_call_output``.
    """
    return f"Approval decision for call {call_id} ({tool}): {decision}. {detail}"


def _entry(
    kind: AuditKind, actor: str, row: Approval | Row[Any], body: dict[str, Any]
) -> AuditEntry:
    return AuditEntry(
        kind,
        actor,
        {"approval_id": row.id, "call_id": row.call_id, "tool": row.tool, **body},
        session_id=row.session_id,
        tool=row.tool,
    )


def requested_entry(approval: Approval, path: ToolPath) -> AuditEntry:
    return _entry(
        AuditKind.APPROVAL_REQUESTED,
        Actor.PAGE if path is ToolPath.BRIDGE else Actor.SIDEBAND,
        approval,
        {"path": str(path), "expires_at": approval.expires_at.isoformat()},
    )


def decided_entry(
    approval: Approval | Row[Any], status: ApprovalStatus, by: str | None, reason: str | None
) -> AuditEntry:
    kind = {
        ApprovalStatus.APPROVED: AuditKind.APPROVAL_APPROVED,
        ApprovalStatus.DENIED: AuditKind.APPROVAL_DENIED,
        ApprovalStatus.EXPIRED: AuditKind.APPROVAL_EXPIRED,
    }[status]
    actor = Actor.key(by) if by is not None else Actor.BROKER
    return _entry(kind, actor, approval, {"reason": reason})


async def hold(
    s: queries.Executor,
    *,
    session_id: str,
    call_id: str,
    tool: str,
    path: ToolPath,
    wait_s: float,
    output_item_id: str | None,
) -> tuple[str, str, AuditEntry]:
    """Hold a call the deciding transaction ``s`` granted: ``(approval_id, output, record)``.

    The call is ``running`` in ``s`` (claimed and granted); it becomes ``held`` with its
    pending output, and its approval row is inserted. The caller adds the record in ``s``.
    """
    approval_id = new_approval_id()
    output = pending_output(approval_id)
    await queries.settle_tool_call_fast(
        s,
        session_id,
        call_id,
        status=ToolCallStatus.HELD,
        from_status=ToolCallStatus.RUNNING,
        output=output,
        error=None,
        decision=ALLOWED,
        output_item_id=output_item_id,
    )
    tenant = await s.scalar(select(SESSIONS.c.tenant_id).where(SESSIONS.c.id == session_id))
    now = utcnow()
    approval = Approval(
        id=approval_id,
        session_id=session_id,
        tenant_id=str(tenant),
        call_id=call_id,
        tool=tool,
        status=ApprovalStatus.PENDING,
        requested_at=now,
        expires_at=now + timedelta(seconds=wait_s),
    )
    await s.execute(
        APPROVALS.insert().values(
            id=approval.id,
            session_id=approval.session_id,
            tenant_id=approval.tenant_id,
            call_id=approval.call_id,
            tool=approval.tool,
            status=str(approval.status),
            requested_at=approval.requested_at,
            expires_at=approval.expires_at,
        )
    )
    return approval_id, output, requested_entry(approval, path)


@dataclass(frozen=True)
class Decided:
    """An approval this transaction moved from ``pending`` (its row as it now is)."""

    approval: Row[Any]


async def decide(
    s: queries.Executor,
    approval_id: str,
    status: ApprovalStatus,
    *,
    by: str | None,
    reason: str | None,
    now: datetime,
    overdue: bool = False,
) -> Row[Any] | None:
    """``pending → status`` once; the row if this moved it, else ``None`` (decided already).

    An approval or denial only before ``expires_at``; an expiry (``overdue``) at any time.
    A denial or an expiry denies the held call in ``s`` too.
    """
    conditions = [APPROVALS.c.id == approval_id, APPROVALS.c.status == str(ApprovalStatus.PENDING)]
    if not overdue:
        conditions.append(APPROVALS.c.expires_at > now)
    result = await s.execute(
        update(APPROVALS)
        .where(*conditions)
        .values(status=str(status), decided_at=now, decided_by=by, reason=reason)
        .returning(*APPROVALS.c)
    )
    row = result.first()
    if row is None or status is ApprovalStatus.APPROVED:
        return row
    await s.execute(
        update(TOOL_CALLS)
        .where(
            TOOL_CALLS.c.session_id == row.session_id,
            TOOL_CALLS.c.call_id == row.call_id,
            TOOL_CALLS.c.status == str(ToolCallStatus.HELD),
        )
        .values(
            status=str(ToolCallStatus.DENIED),
            finished_at=now,
            error=EXPIRED_CODE if status is ApprovalStatus.EXPIRED else DENIED_CODE,
        )
    )
    return row


async def release_held(s: queries.Executor, session_id: str, call_id: str) -> Row[Any] | None:
    """``held → running`` for the approved call, once.

    Returns ``(tool, arguments, arguments_sealed, path, disabled, allowlist)`` if this moved
    it (the kill switch and the session's allowlist as they are now, read with it), else
    ``None``.
    """
    result = await s.execute(
        update(TOOL_CALLS)
        .where(
            TOOL_CALLS.c.session_id == session_id,
            TOOL_CALLS.c.call_id == call_id,
            TOOL_CALLS.c.status == str(ToolCallStatus.HELD),
        )
        .values(status=str(ToolCallStatus.RUNNING), started_at=utcnow())
        .returning(
            TOOL_CALLS.c.tool,
            TOOL_CALLS.c.arguments,
            TOOL_CALLS.c.arguments_sealed,
            TOOL_CALLS.c.path,
            select(DISABLED_TOOLS.c.tool)
            .where(DISABLED_TOOLS.c.tool == TOOL_CALLS.c.tool)
            .exists()
            .label("disabled"),
            # A reconfiguration may have taken the tool off the session while it was held.
            select(SESSIONS.c.tools)
            .where(SESSIONS.c.id == TOOL_CALLS.c.session_id)
            .scalar_subquery()
            .label("allowlist"),
            # For the per-tenant metrics only.
            select(SESSIONS.c.tenant_id)
            .where(SESSIONS.c.id == TOOL_CALLS.c.session_id)
            .scalar_subquery()
            .label("tenant_id"),
        )
    )
    return result.first()


async def finish_approved(
    s: queries.Executor,
    session_id: str,
    call_id: str,
    status: ToolCallStatus,
    error: str | None,
) -> bool:
    """``running → status`` for an approved call that ran; its pending output stays."""
    result = await s.execute(
        update(TOOL_CALLS)
        .where(
            TOOL_CALLS.c.session_id == session_id,
            TOOL_CALLS.c.call_id == call_id,
            TOOL_CALLS.c.status == str(ToolCallStatus.RUNNING),
        )
        .values(status=str(status), finished_at=utcnow(), error=error)
    )
    return changed(result)


async def get_approval(s: queries.Executor, approval_id: str) -> Row[Any] | None:
    result = await s.execute(select(APPROVALS).where(APPROVALS.c.id == approval_id))
    return result.first()


async def list_approvals(
    s: queries.Executor, tenant_id: str | None, status: ApprovalStatus | None, limit: int
) -> list[Row[Any]]:
    """Newest first; ``tenant_id`` ``None``: every tenant's."""
    query = select(APPROVALS).order_by(APPROVALS.c.requested_at.desc()).limit(limit)
    if tenant_id is not None:
        query = query.where(APPROVALS.c.tenant_id == tenant_id)
    if status is not None:
        query = query.where(APPROVALS.c.status == str(status))
    result = await s.execute(query)
    return list(result.all())


async def overdue(s: queries.Executor, now: datetime, limit: int) -> list[Row[Any]]:
    """Pending approvals past ``expires_at``, or whose session's call is over."""
    result = await s.execute(
        select(APPROVALS)
        .join(SESSIONS, SESSIONS.c.id == APPROVALS.c.session_id)
        .where(
            APPROVALS.c.status == str(ApprovalStatus.PENDING),
            (APPROVALS.c.expires_at <= now)
            | SESSIONS.c.state.not_in([str(x) for x in CALL_RUNNING_STATES]),
        )
        .order_by(APPROVALS.c.expires_at)
        .limit(limit)
    )
    return list(result.all())
