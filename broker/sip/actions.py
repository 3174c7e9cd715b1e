"""The line's actions on a call at the provider: reject, refer, each bounded and audited.

Every call-control request (the accept's too, :mod:`broker.sip.accept`) runs under
``BROKER_SIP_ACCEPT_TIMEOUT_S`` through :meth:`LineActions.at_provider`, which turns a failure
into a short reason rather than raising: the call's task has nobody to raise to, and the
reason goes into the action's audit record. Which action a call gets is the intake's choice
(:mod:`broker.sip.calls`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.audit import trail as audit
from broker.audit.records import Actor, AuditEntry, AuditKind
from broker.sip.delivery import Delivery
from broker.sip.lines import Line
from sideband import (
    CallNotFoundError,
    Provider,
    ProviderError,
    ProviderTimeoutError,
    ProviderUnreachableError,
)

logger = logging.getLogger(__name__)


class LineActions:
    """Call control at the provider for the calls a line takes, and its audit records.

    One per :class:`~broker.sip.calls.SipCalls`; stateless between calls.
    """

    def __init__(
        self,
        provider: Provider,
        sessionmaker: async_sessionmaker[AsyncSession],
        timeout_s: float,
    ) -> None:
        self._provider = provider
        self._sessionmaker = sessionmaker
        self._timeout = timeout_s

    async def reject(
        self, delivery: Delivery, line: Line | None, status: int, *, reason: str | None = None
    ) -> None:
        """Reject the call with a SIP status; a failure is logged and audited, not raised."""
        error = await self.at_provider(
            self._provider.reject_call(delivery.call_id, status), "reject", delivery.call_id
        )
        await self.audit(
            AuditKind.CALL_REJECTED,
            delivery,
            line,
            {"status_code": status, **({"reason": reason} if reason is not None else {})},
            error,
        )

    async def refer(self, delivery: Delivery, line: Line, target: str) -> None:
        """Refer the call to ``target``; a failure is logged and audited, not raised."""
        error = await self.at_provider(
            self._provider.refer_call(delivery.call_id, target), "refer", delivery.call_id
        )
        await self.audit(AuditKind.CALL_REFERRED, delivery, line, {"target_uri": target}, error)

    async def at_provider(self, action: Any, what: str, call_id: str) -> str | None:
        """Run one call-control request, bounded; ``None`` if it succeeded, else why not."""
        try:
            async with asyncio.timeout(self._timeout):
                await action
        except CallNotFoundError:
            error = "call_id_not_found"
        except (TimeoutError, ProviderTimeoutError):
            error = "timeout"
        except ProviderUnreachableError:
            error = "provider_unreachable"
        except ProviderError as exc:
            error = f"provider_error: {exc.status}" + (f" {exc.code}" if exc.code else "")
        else:
            return None
        logger.warning("sip %s failed call_id=%s: %s", what, call_id, error)
        return error

    async def audit(
        self,
        kind: AuditKind,
        delivery: Delivery,
        line: Line | None,
        body: Mapping[str, Any],
        error: str | None,
        session_id: str | None = None,
    ) -> None:
        """Write one action's audit record; a failed write is logged, never raised."""
        entry = AuditEntry(
            kind,
            Actor.BROKER,
            {
                "call_id": delivery.call_id,
                "line": line.name if line is not None else None,
                **body,
                "ok": error is None,
                **({"error": error} if error is not None else {}),
            },
            session_id=session_id,
        )
        try:
            await audit.append(self._sessionmaker, entry)
        except Exception as exc:
            logger.error("audit record not written kind=%s error=%s", kind, type(exc).__name__)
