"""Incoming phone calls: the provider's ``realtime.call.incoming`` webhook, and what follows.

:meth:`SipCalls.incoming` is the webhook's whole synchronous part, fast enough to answer
within a second: the Standard Webhooks signature is verified first (nothing is read or done
before), the body checked, the delivery recorded once by its ``webhook-id`` (a unique row in
``sip_deliveries``: a repeat, on this instance or another, is answered and nothing is done
again), the line picked by the dialled number. What the line says (accept, reject, refer) is
then done by a task of its own, bounded by ``BROKER_SIP_ACCEPT_TIMEOUT_S``: the provider's
accept can take seconds, and may answer ``404 call_id_not_found`` after them (docs/protocol.md,
"SIP"). A reject or refer is :mod:`broker.sip.actions`; an accept, with its stages and its
abort when the broker stops, is :mod:`broker.sip.accept`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

from sqlalchemy import CursorResult, delete
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.audit import trail as audit
from broker.audit.records import Actor, AuditEntry, AuditKind
from broker.audit.redaction import FieldRedactor
from broker.call.ownership import CallOwnership
from broker.call.supervisor import SidebandSupervisor
from broker.db.dialect import conflict_insert, dialect_name
from broker.db.models import SessionRow, SipDelivery, utcnow
from broker.db.shielded import ShieldedWrites
from broker.errors import BadRequestError, UnauthorizedError, UnavailableError
from broker.metrics import BrokerMetrics
from broker.session.service import SessionService
from broker.settings import Settings
from broker.sip.accept import CallAcceptor
from broker.sip.actions import LineActions
from broker.sip.delivery import Delivery, stored_caller
from broker.sip.lines import Line, LineAction, Lines, dialled_number
from broker.tools.registry import ToolRegistry
from broker.webhooks.signature import HEADER_ID, WebhookVerificationError, verify
from sideband import Provider

logger = logging.getLogger(__name__)

INCOMING_TYPE: Final = "realtime.call.incoming"
SIGNATURE_TOLERANCE_S: Final = 300.0
"""A delivery signed longer ago (or further ahead) than this is refused (Standard Webhooks)."""
MAX_WEBHOOK_BYTES: Final = 64 * 1024
"""The webhook body's bound (a call's SIP headers are a few kilobytes at most)."""
MAX_HEADERS: Final = 128
MAX_HEADER_CHARS: Final = 2048
CALL_ID: Final = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
MAX_WEBHOOK_ID_CHARS: Final = 128
DELIVERIES_KEPT: Final = timedelta(days=7)
"""How long a delivery's ``webhook-id`` is remembered: past the provider's retries (three
days for OpenAI's webhooks), a repeat is no longer possible."""
PRUNE_EVERY_S: Final = 300.0
"""Old deliveries are pruned at most this often per process, not on every webhook."""


@dataclass(frozen=True)
class Received:
    """What the webhook's answer says: ``taken``, ``duplicate`` or ``ignored``."""

    status: str
    action: str | None = None
    line: str | None = None

    def body(self) -> dict[str, Any]:
        return {k: v for k, v in {"status": self.status, "action": self.action}.items() if v}


class SipCalls:
    """Phone calls: the webhook, and the supervised tasks that answer calls.

    One per app, when ``BROKER_SIP_WEBHOOK_SECRET`` and ``BROKER_SIP_LINES`` are set.
    """

    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        provider: Provider,
        registry: ToolRegistry,
        supervisor: SidebandSupervisor,
        sessions: SessionService,
        metrics: BrokerMetrics,
        ownership: CallOwnership,
        redactor: FieldRedactor,
        lines: Lines,
    ) -> None:
        assert settings.sip_webhook_secret is not None
        self._secret = settings.sip_webhook_secret
        self._sessionmaker = sessionmaker
        self._supervisor = supervisor
        self._redactor = redactor
        self.lines = lines
        self._tasks: set[asyncio.Task[None]] = set()
        # Shared with the acceptor: its aborts run here, and close() drains them.
        self._writes = ShieldedWrites()
        self._closing = False
        self._pruned_at = float("-inf")
        self._actions = LineActions(provider, sessionmaker, settings.sip_accept_timeout_s)
        self._acceptor = CallAcceptor(
            settings,
            sessionmaker,
            provider,
            registry,
            supervisor,
            sessions,
            metrics,
            ownership,
            redactor,
            self._actions,
            self._writes,
            lambda: self._closing,
        )

    # ---- the webhook -------------------------------------------------------------------------

    def verified(self, headers: Mapping[str, str], body: bytes) -> Delivery | None:
        """The delivery, once its signature is verified; ``None``: another event type.

        Raises:
            UnauthorizedError: ``invalid_signature``: unsigned, a bad signature, or a
                timestamp more than 300 s off (stale or ahead).
            BadRequestError: ``invalid_webhook``: a ``realtime.call.incoming`` without a
                usable ``data.call_id`` / ``data.sip_headers``, or an over-long ``webhook-id``.
        """
        try:
            payload = verify(
                self._secret.reveal(), headers, body, tolerance_s=SIGNATURE_TOLERANCE_S
            )
        except WebhookVerificationError as exc:
            # The reason is safe to log (never the expected signature); the answer says less.
            logger.warning("sip webhook refused: %s", exc)
            raise UnauthorizedError(
                "invalid_signature", "the webhook signature is missing, wrong or stale"
            ) from None
        if payload.get("type") != INCOMING_TYPE:
            return None
        webhook_id = {k.lower(): v for k, v in headers.items()}[HEADER_ID.lower()]
        if len(webhook_id) > MAX_WEBHOOK_ID_CHARS:
            raise BadRequestError("invalid_webhook", "webhook-id is too long")
        data = payload.get("data")
        if not isinstance(data, dict):
            raise BadRequestError("invalid_webhook", "data must be an object")
        call_id = data.get("call_id")
        if not isinstance(call_id, str) or not CALL_ID.match(call_id):
            raise BadRequestError("invalid_webhook", "data.call_id is missing or malformed")
        raw = data.get("sip_headers")
        if (
            not isinstance(raw, list)
            or len(raw) > MAX_HEADERS
            or not all(
                isinstance(h, dict)
                and isinstance(h.get("name"), str)
                and isinstance(h.get("value"), str)
                and len(h["name"]) + len(h["value"]) <= MAX_HEADER_CHARS
                for h in raw
            )
        ):
            raise BadRequestError(
                "invalid_webhook", "data.sip_headers must be a list of {name, value} strings"
            )
        headers_ = [{"name": h["name"], "value": h["value"]} for h in raw]
        return Delivery(webhook_id, call_id, headers_)

    async def incoming(self, headers: Mapping[str, str], body: bytes) -> Received:
        """Take one webhook delivery: verify, deduplicate, pick the line, start its task.

        Raises:
            UnauthorizedError, BadRequestError: as :meth:`verified` (nothing was done).
            UnavailableError: ``shutting_down`` (nothing was recorded: a retry may be taken).
        """
        started = time.perf_counter()
        delivery = self.verified(headers, body)
        if delivery is None:
            # Acknowledged so the provider does not retry; this route acts on calls only.
            return Received("ignored")
        if self._closing or self._supervisor.stopping:
            # Not recorded: the provider's retry may reach an instance that can answer it.
            raise UnavailableError("shutting_down", "this broker is shutting down; retry")
        dialled = dialled_number(delivery.sip_headers)
        line = self.lines.for_number(dialled)
        action = line.action.value if line is not None else "unknown"
        async with self._sessionmaker.begin() as s:
            inserted = await s.execute(
                conflict_insert(SipDelivery, dialect_name(s))
                .values(
                    webhook_id=delivery.webhook_id,
                    received_at=utcnow(),
                    call_id=delivery.call_id,
                    line=line.name if line is not None else None,
                    action=action,
                )
                .on_conflict_do_nothing(index_elements=["webhook_id"])
            )
            assert isinstance(inserted, CursorResult)
            first = bool(inserted.rowcount)
            if first and time.monotonic() - self._pruned_at >= PRUNE_EVERY_S:
                self._pruned_at = time.monotonic()
                await s.execute(
                    delete(SipDelivery).where(SipDelivery.received_at < utcnow() - DELIVERIES_KEPT)
                )
            if first:
                await audit.add(
                    s,
                    AuditEntry(
                        AuditKind.SIP_INCOMING,
                        Actor.BROKER,
                        {
                            "webhook_id": delivery.webhook_id,
                            "call_id": delivery.call_id,
                            "dialled": dialled,
                            "caller": stored_caller(self._redactor, line, delivery.sip_headers),
                            "line": line.name if line is not None else None,
                            "action": action,
                        },
                    ),
                )
        if not first:
            logger.info(
                "sip webhook repeated webhook_id=%s call_id=%s: already taken",
                delivery.webhook_id,
                delivery.call_id,
            )
            return Received("duplicate", action, line.name if line is not None else None)
        logger.info(
            "incoming call call_id=%s line=%s action=%s took=%.3fs",
            delivery.call_id,
            line.name if line is not None else "-",
            action,
            time.perf_counter() - started,
        )
        self._spawn(delivery, line)
        return Received("taken", action, line.name if line is not None else None)

    def _spawn(self, delivery: Delivery, line: Line | None) -> None:
        task = asyncio.create_task(self._act(delivery, line), name=f"sip-call:{delivery.call_id}")
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("sip call task failed: %s", type(exc).__name__, exc_info=exc)

    async def close(self) -> None:
        """The broker stops: calls still being answered are cancelled; their sessions fail.

        Each such call is ended at the provider as far as its accept got
        (:mod:`broker.sip.accept`), a write drained here.
        """
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._writes.drain()

    def accept_config(self, row: SessionRow) -> dict[str, Any]:
        """The config a call is accepted with: the line's, but no turn detection yet."""
        return self._acceptor.accept_config(row)

    # ---- the line's action -------------------------------------------------------------------

    async def _act(self, delivery: Delivery, line: Line | None) -> None:
        """The call's task: what the line says, or the unknown number's reject."""
        if line is None:
            await self._actions.reject(delivery, None, self.lines.unknown_status)
        elif line.action is LineAction.REJECT:
            await self._actions.reject(delivery, line, line.reject_status)
        elif line.action is LineAction.REFER:
            assert line.refer_to is not None
            await self._actions.refer(delivery, line, line.refer_to)
        else:
            await self._acceptor.accept(delivery, line)
