"""``/api/v1/approvals``: operators see and decide approval-gated tool calls.

``GET`` lists (``?status=pending|approved|denied|expired``, ``limit`` 1-200) and reads one
(``monitor:read`` or ``admin``); ``POST …/{id}/approve`` and ``…/deny`` (``admin``, optional
body ``{"reason"}``) decide one (:mod:`broker.session.approvals`). Tenant-scoped like sessions:
another tenant's approval is not found (404).
"""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import Row

from broker import app_state
from broker.api._auth import api_principal
from broker.api._bodies import read_json
from broker.api._times import iso
from broker.api.schemas import respond
from broker.auth.principals import Scope
from broker.db.models import ApprovalStatus
from broker.errors import BadRequestError

DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 200
_PARAMS: Final = frozenset({"status", "limit"})


class DecisionRequest(BaseModel):
    """Body of ``POST /api/v1/approvals/{id}/approve|deny`` (optional)."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, min_length=1, max_length=500)


class ApprovalRecord(BaseModel):
    """An approval-gated tool call and the decision on it."""

    model_config = ConfigDict(extra="forbid")

    id: str
    session_id: str
    tenant: str
    call_id: str
    tool: str
    status: str
    """``pending``, ``approved``, ``denied`` or ``expired``."""
    requested_at: str | None
    expires_at: str | None
    decided_at: str | None
    decided_by: str | None
    """The deciding operator's key id (``None``: undecided, or expired)."""
    reason: str | None


class ApprovalList(BaseModel):
    model_config = ConfigDict(extra="forbid")

    approvals: list[ApprovalRecord]


class ApprovalDecision(BaseModel):
    """What a decision did: recorded, carried out, and whether the model was told."""

    model_config = ConfigDict(extra="forbid")

    id: str
    status: str
    """``approved`` or ``denied``."""
    tool_status: str | None = None
    """The call's status after it: ``succeeded``/``failed`` (approved, it ran), ``denied``."""
    result: str | None = None
    """An approved call's tool output, as the audit trail shows it (redacted fields hashed)."""
    injected: bool
    """The decision went to the model on the call's sideband (a system message naming the
    call id, then ``response.create``); ``false``: the sideband is away (reconnecting) and the
    note waits for its next connection, or the call is ending."""


def _record(row: Row[Any]) -> ApprovalRecord:
    return ApprovalRecord(
        id=row.id,
        session_id=row.session_id,
        tenant=row.tenant_id,
        call_id=row.call_id,
        tool=row.tool,
        status=row.status,
        requested_at=iso(row.requested_at),
        expires_at=iso(row.expires_at),
        decided_at=iso(row.decided_at),
        decided_by=row.decided_by,
        reason=row.reason,
    )


async def list_approvals(request: web.Request) -> web.Response:
    principal = await api_principal(request)
    principal.require(Scope.MONITOR_READ)
    query = request.rel_url.query
    unknown = sorted(set(query) - _PARAMS)
    if unknown:
        raise BadRequestError("invalid_query", f"unknown parameter {unknown[0]}", param=unknown[0])
    status: ApprovalStatus | None = None
    if "status" in query:
        try:
            status = ApprovalStatus(query["status"])
        except ValueError:
            raise BadRequestError(
                "invalid_query",
                "status must be pending, approved, denied or expired",
                param="status",
            ) from None
    try:
        limit = int(query.get("limit", DEFAULT_LIMIT))
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequestError(
            "invalid_query", f"limit must be an integer from 1 to {MAX_LIMIT}", param="limit"
        )
    rows = await request.app[app_state.APPROVALS].list(principal, status, limit)
    return respond(ApprovalList(approvals=[_record(row) for row in rows]))


async def get_approval(request: web.Request) -> web.Response:
    principal = await api_principal(request)
    principal.require(Scope.MONITOR_READ)
    row = await request.app[app_state.APPROVALS].get(principal, request.match_info["approval_id"])
    return respond(_record(row))


async def _decide(request: web.Request, approve: bool) -> web.Response:
    principal = await api_principal(request)
    principal.require(Scope.ADMIN)
    body = await read_json(request, DecisionRequest) if request.body_exists else DecisionRequest()
    answer = await request.app[app_state.APPROVALS].decide(
        principal, request.match_info["approval_id"], approve, body.reason
    )
    return respond(ApprovalDecision.model_validate(answer))


async def approve(request: web.Request) -> web.Response:
    """Approve: the tool runs now and its result goes to the model."""
    return await _decide(request, True)


async def deny(request: web.Request) -> web.Response:
    """Deny: the call is denied and the model told so."""
    return await _decide(request, False)
