"""The deciding transaction's checks: whether a claimed call may run, or why not.

The order of the checks: the session, its allowlist, the tool's existence, the session's
``max_argument_bytes``, strict JSON, the tool's schema (all in :mod:`broker.tools.policy`),
the kill switch, the tool's breaker, then the budget and concurrency (atomically, in
:mod:`broker.tools.budget`). The limits come from the session row, so both paths apply the
same ones without their callers passing them.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Any

from broker.audit.records import AuditEntry
from broker.db import queries
from broker.db.models import ToolPath
from broker.tools.breaker import CircuitBreakers, Permit, Refusal
from broker.tools.budget import ToolLimits, grant_locked
from broker.tools.call_ids import printable
from broker.tools.codes import ToolErrorCode
from broker.tools.ledger import MAX_TOOL_NAME, record_call
from broker.tools.policy import decide, error_output
from broker.tools.redaction import CallRedaction
from broker.tools.registry import ToolRegistry, ToolSpec
from broker.tools.server_tools import SessionTools

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Denied:
    tool: str
    code: ToolErrorCode
    output: str
    """The error output the model is told."""
    budget_spent: bool | None = None
    allowlist: frozenset[str] | None = None
    """The session's allowlist as applied (``None``: the session is gone)."""
    requested: AuditEntry | None = None
    """The call's ``tool.requested`` record when this transaction recorded it."""
    tenant: str | None = None
    """The session's tenant (``None``: the session is gone), for the per-tenant metrics."""


@dataclass(frozen=True)
class Granted:
    """The call is ``running`` and counted against the budget; its tool may run."""

    tool: str
    spec: ToolSpec
    arguments: dict[str, Any]
    permit: Permit
    """The breaker's admission: told how the call went, or released if it never ran."""
    budget_spent: bool
    allowlist: frozenset[str]
    """The session's allowlist as applied (the grant's policy, in its audit record)."""
    requested: AuditEntry | None = None
    """The call's ``tool.requested`` record when this transaction recorded it."""
    tenant: str | None = None
    """The session's tenant, for the per-tenant metrics."""


Verdict = Denied | Granted


async def decide_call(
    s: queries.Executor,
    registry: ToolRegistry,
    breakers: CircuitBreakers,
    redaction: CallRedaction,
    *,
    session_id: str,
    allowed_tools: Collection[str],
    call_id: str,
    tool: str,
    arguments: str,
    path: ToolPath,
    response_id: str | None,
    item_id: str | None,
    session_tools: SessionTools | None = None,
) -> Verdict | None:
    """Record, claim and decide the call in ``s``; ``None`` if another claimant has it.

    A :class:`Denied` call is still ``running`` in ``s``: the caller settles it in the same
    transaction, and adds the audit records there (:attr:`Denied.requested`, when this
    transaction recorded the call; a :class:`Granted` call's, likewise).

    ``session_tools``: a trusted session's registry (:mod:`broker.tools.server_tools`): its
    server tools join the session's allowlist and are run with their own breakers.
    """
    # First, so that every grant of the session serializes behind it (broker.tools.budget).
    session = await queries.lock_session_for_tools(s, session_id)
    requested: AuditEntry | None = None
    claimed = await queries.claim_tool_call_returning(s, session_id, call_id, path)
    if claimed is None:
        # New (the bridge's first report, or a sideband whose early record failed), or
        # someone else's: record it (a no-op if it exists) and try once more.
        requested = await record_call(
            s, redaction, session_id, call_id, tool, arguments, path, response_id, item_id
        )
        claimed = await queries.claim_tool_call_returning(s, session_id, call_id, path)
        if claimed is None:
            return None
    # The recorded tool and arguments run: a later reporter cannot swap them. A redacting
    # tool's arguments are opened from their sealed copy here, only to be checked and run.
    tool, disabled = claimed.tool, bool(claimed.disabled)
    arguments = redaction.opened(session_id, call_id, claimed.arguments, claimed.arguments_sealed)
    # Escaped: a name the policy is about to deny may hold anything the model (or a
    # page, on the bridge) sent, line breaks included.
    log_extra = f"session_id={session_id} call_id={call_id} tool={printable(tool, MAX_TOOL_NAME)}"
    if session is None:
        return _denial(
            log_extra, tool, ToolErrorCode.SESSION_NOT_FOUND, "the session is gone", requested
        )
    own = session_tools.own if session_tools is not None else frozenset()
    allowlist = (frozenset(session.tools) | own).intersection(allowed_tools)
    if session_tools is not None:
        registry = session_tools
        if tool in own:
            breakers = session_tools.breakers
    verdict = await _checked(
        s,
        registry,
        breakers,
        session_id=session_id,
        call_id=call_id,
        tool=tool,
        arguments=arguments,
        disabled=disabled,
        limits=ToolLimits(
            session.max_tool_calls, session.max_concurrent_tools, session.max_argument_bytes
        ),
        allowlist=allowlist,
        log_extra=log_extra,
    )
    return replace(verdict, allowlist=allowlist, requested=requested, tenant=session.tenant_id)


async def _checked(
    s: queries.Executor,
    registry: ToolRegistry,
    breakers: CircuitBreakers,
    *,
    session_id: str,
    call_id: str,
    tool: str,
    arguments: str,
    disabled: bool,
    limits: ToolLimits,
    allowlist: frozenset[str],
    log_extra: str,
) -> Verdict:
    """The checks after the claim, in their order (the module docstring)."""
    decision = decide(
        registry, allowlist, tool, arguments, max_argument_bytes=limits.max_argument_bytes
    )
    if not decision.allowed:
        assert decision.code is not None and decision.message is not None
        return _denial(log_extra, tool, decision.code, decision.message)
    if disabled:
        # Read with the claim, from the database: a switch takes effect at once, in
        # every process, for sessions already live.
        return _denial(
            log_extra,
            tool,
            ToolErrorCode.TOOL_DISABLED,
            f"the {tool} tool has been switched off by an operator; it cannot be used now",
        )
    # After policy (a refused call says nothing about the tool's health) and before the
    # budget, so a call the breaker refuses costs none of it. Every path below reports
    # to the permit: a half-open breaker waits for its one trial call's verdict.
    permit = breakers.admit(tool)
    if isinstance(permit, Refusal):
        return _denial(log_extra, tool, ToolErrorCode.TOOL_CIRCUIT_OPEN, permit.message)
    try:
        refused, started = await grant_locked(s, session_id, call_id, limits)
    except BaseException:
        permit.release()  # the tool never ran: no verdict
        raise
    if refused is not None:
        permit.release()
    if refused is ToolErrorCode.TOOL_BUDGET_EXHAUSTED:
        return _denial(
            log_extra,
            tool,
            refused,
            f"this session has used all {limits.max_tool_calls} of its tool calls",
            budget_spent=True,
        )
    if refused is not None:
        return _denial(
            log_extra,
            tool,
            refused,
            f"this session already runs {limits.max_concurrent_tools} tool call(s) at once;"
            " try again when one has finished",
            budget_spent=started > limits.max_tool_calls,
        )
    assert decision.tool is not None and decision.arguments is not None
    return Granted(
        tool,
        decision.tool,
        decision.arguments,
        permit,
        budget_spent=started > limits.max_tool_calls,
        allowlist=allowlist,
    )


def _denial(
    log_extra: str,
    tool: str,
    code: ToolErrorCode,
    message: str,
    requested: AuditEntry | None = None,
    *,
    budget_spent: bool | None = None,
) -> Denied:
    logger.warning("tool call denied %s code=%s", log_extra, code)
    return Denied(tool, code, error_output(code, message), budget_spent, requested=requested)
