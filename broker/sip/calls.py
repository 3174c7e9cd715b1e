"""Incoming phone calls: the provider's ``realtime.call.incoming`` webhook, and what follows.

:meth:`SipCalls.incoming` is the webhook's whole synchronous part, fast enough to answer
within a second: the Standard Webhooks signature is verified first (nothing is read or done
before), the body checked, the delivery recorded once by its ``webhook-id`` (a unique row in
``sip_deliveries``: a repeat, on this instance or another, is answered and nothing is done
again), the line picked by the dialled number. What the line says (accept, reject, refer) is
then done by a task of its own, bounded by ``BROKER_SIP_ACCEPT_TIMEOUT_S``: the provider's
accept can take seconds, and may answer ``404 call_id_not_found`` after them (docs/protocol.md,
"SIP").

Accepting a call: its session row is stored first (``connection_type: "sip"``, the line's
session, the caller and SIP headers redacted as the line says), then the call is accepted
with the line's server-owned config but **no turn detection** (``turn_detection: null``), so
nothing the caller says starts a response; the sideband is started under the supervisor as
for a browser call, and only once it attached does the broker switch the line's turn
detection on and ask for the greeting, both on the sideband. No response, and so no tool
call, starts before the sideband watches. From then on the call is under exactly a browser
call's policy: allowlist, schemas, tamper guard, leash, audit, ops view, webhook, usage.

An accept cut short (the broker stopping, a failure) ends the call at the provider as far as
it got (:class:`AcceptStage`): rejected (603) if the accept never went out, else hung up, and
the session fails (``accept_failed: broker_stopped`` when the broker stops).
"""

from __future__ import annotations

import asyncio
import copy
import enum
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

from sqlalchemy import CursorResult, delete, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.audit import trail as audit
from broker.audit.records import Actor, AuditEntry, AuditKind
from broker.audit.redaction import FieldRedactor
from broker.call.hangup import hang_up
from broker.call.ownership import CallOwnership, acting_for
from broker.call.supervisor import SidebandSupervisor
from broker.db import queries
from broker.db.dialect import conflict_insert, dialect_name
from broker.db.fence import fenced
from broker.db.models import (
    ConnectionType,
    SessionRow,
    SessionState,
    SidebandState,
    SipDelivery,
    utcnow,
)
from broker.db.shielded import ShieldedWrites
from broker.errors import (
    BadRequestError,
    BrokerError,
    RateLimitedError,
    UnauthorizedError,
    UnavailableError,
)
from broker.metrics import BrokerMetrics
from broker.session import audit_entries
from broker.session.end_reason import EndReason
from broker.session.ending import end_session
from broker.session.limits import PageItems, PageResponses
from broker.session.offer import provider_session_config
from broker.session.service import SessionService, new_session_id
from broker.session.transcription import choose
from broker.settings import Settings
from broker.sip.lines import (
    Line,
    LineAction,
    Lines,
    caller_number,
    dialled_number,
)
from broker.tools.registry import ToolRegistry
from broker.webhooks.signature import HEADER_ID, WebhookVerificationError, verify
from sideband import (
    CallNotFoundError,
    Provider,
    ProviderError,
    ProviderTimeoutError,
    ProviderUnreachableError,
)
from sideband.events import new_event_id

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
ACCEPT_FAILED_EVENT: Final = "broker.accept_failed"
GREETED_EVENT: Final = "broker.sip_greeted"
DELIVERIES_KEPT: Final = timedelta(days=7)
BUSY_STATUS: Final = 486
"""SIP "Busy Here": what a caller hears when the line's tenant is at a spend cap."""
"""How long a delivery's ``webhook-id`` is remembered: past the provider's retries (three
days for OpenAI's webhooks), a repeat is no longer possible."""
PRUNE_EVERY_S: Final = 300.0
"""Old deliveries are pruned at most this often per process, not on every webhook."""
ATTACH_MARGIN_S: Final = 2.0
"""How much longer than the attach bound the accept task waits for the first attach."""
ABORT_REJECT_STATUS: Final = 603
"""SIP "Decline": a call whose accept was cut short before it went out."""


class AcceptStage(enum.Enum):
    """How far a call's accept got: what ending it takes if the accept is cut short."""

    NOT_SENT = "not_sent"
    """The provider was not asked to accept: the call still rings."""
    SENT = "sent"
    """The accept went out: the call may be live now, or become live late."""
    ACCEPTED = "accepted"
    """Accepted, not yet watched and greeted: live, unwatched or without turn detection."""
    SETTLED = "settled"
    """Nothing left to do at the provider: greeted (the supervisor's from now on), or the
    accept's own failure path already ended the call."""


@dataclass
class _Accepting:
    stage: AcceptStage = AcceptStage.NOT_SENT


@dataclass(frozen=True)
class Delivery:
    """A verified ``realtime.call.incoming``."""

    webhook_id: str
    call_id: str
    sip_headers: list[dict[str, str]]


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
        self._settings = settings
        self._sessionmaker = sessionmaker
        self._provider = provider
        self._registry = registry
        self._supervisor = supervisor
        self._sessions = sessions
        self._metrics = metrics
        self._ownership = ownership
        self._redactor = redactor
        self.lines = lines
        self._timeout = settings.sip_accept_timeout_s
        self._tasks: set[asyncio.Task[None]] = set()
        self._writes = ShieldedWrites()
        self._closing = False
        self._pruned_at = float("-inf")

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
                            "caller": self._caller(line, delivery.sip_headers),
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

        Each such call is ended at the provider (:meth:`_abort`), a write drained here.
        """
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._writes.drain()

    # ---- the line's action -------------------------------------------------------------------

    async def _act(self, delivery: Delivery, line: Line | None) -> None:
        if line is None:
            await self._reject(delivery, None, self.lines.unknown_status)
        elif line.action is LineAction.REJECT:
            await self._reject(delivery, line, line.reject_status)
        elif line.action is LineAction.REFER:
            assert line.refer_to is not None
            await self._refer(delivery, line, line.refer_to)
        else:
            await self._accept(delivery, line)

    async def _over_quota(self, line: Line) -> bool:
        """Whether the line's tenant is at a spend cap (a phone call is a session as any)."""
        try:
            await self._sessions.quotas.check_owner(line.owner, line.tenant)
        except RateLimitedError:
            return True
        return False

    async def _reject(
        self, delivery: Delivery, line: Line | None, status: int, *, reason: str | None = None
    ) -> None:
        error = await self._at_provider(
            self._provider.reject_call(delivery.call_id, status), "reject", delivery.call_id
        )
        await self._audit_action(
            AuditKind.CALL_REJECTED,
            delivery,
            line,
            {"status_code": status, **({"reason": reason} if reason is not None else {})},
            error,
        )

    async def _refer(self, delivery: Delivery, line: Line, target: str) -> None:
        error = await self._at_provider(
            self._provider.refer_call(delivery.call_id, target), "refer", delivery.call_id
        )
        await self._audit_action(
            AuditKind.CALL_REFERRED, delivery, line, {"target_uri": target}, error
        )

    async def _at_provider(self, action: Any, what: str, call_id: str) -> str | None:
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

    async def _audit_action(
        self,
        kind: AuditKind,
        delivery: Delivery,
        line: Line | None,
        body: Mapping[str, Any],
        error: str | None,
        session_id: str | None = None,
    ) -> None:
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

    # ---- accepting -----------------------------------------------------------------------

    async def _accept(self, delivery: Delivery, line: Line) -> None:
        accepting = _Accepting()
        row: SessionRow | None = None
        try:
            if await self._over_quota(line):
                accepting.stage = AcceptStage.SETTLED
                await self._reject(delivery, line, BUSY_STATUS, reason="quota_exceeded")
                return
            row = await self._store_row(delivery, line)
            await self._answer(row, delivery, line, accepting)
        except BaseException as exc:
            if accepting.stage is not AcceptStage.SETTLED:
                if isinstance(exc, asyncio.CancelledError):
                    why = "broker_stopped" if self._closing else "cancelled"
                else:
                    why = type(exc).__name__
                await self._writes.run(
                    self._abort(row, delivery, line, accepting.stage, why), "sip-accept-abort"
                )
            raise

    async def _store_row(self, delivery: Delivery, line: Line) -> SessionRow:
        """The call's session row, stored ``offered`` (and its delivery pointed at it)."""
        row = self._new_row(delivery, line)
        async with self._sessionmaker.begin() as s:
            s.add(row)
            await s.flush()
            await audit.add(s, audit_entries.session_created(row))
            await queries.transition_session(
                s, row.id, [SessionState.CREATED], SessionState.OFFERED
            )
            await s.execute(
                update(SipDelivery)
                .where(SipDelivery.webhook_id == delivery.webhook_id)
                .values(session_id=row.id)
            )
        self._metrics.session_created()
        logger.info(
            "phone call session created session_id=%s call_id=%s line=%s",
            row.id,
            delivery.call_id,
            line.name,
        )
        return row

    async def _abort(
        self,
        row: SessionRow | None,
        delivery: Delivery,
        line: Line,
        stage: AcceptStage,
        why: str,
    ) -> None:
        """End a call whose accept was cut short (the broker stopping, a failure), bounded.

        Where it stopped decides how: never asked to accept, the call still rings, and a
        reject (603) is the answer (a hangup is for calls that were answered). Once the
        accept went out it may be answered at any moment (the provider goes on with a
        request its client gave up on), and accepted but not yet watched and greeted, the
        caller would hold a line nobody watches (no turn detection yet, and no other
        instance greets it): a hangup ends it either way (a call that never went live
        answers 404, which counts as gone). The session fails with why.
        """
        call_id = delivery.call_id
        if stage is AcceptStage.NOT_SENT:
            logger.warning(
                "phone call accept aborted before it was sent (%s): rejecting call_id=%s "
                "status=%d session_id=%s",
                why,
                call_id,
                ABORT_REJECT_STATUS,
                row.id if row is not None else "-",
            )
            error = await self._at_provider(
                self._provider.reject_call(call_id, ABORT_REJECT_STATUS), "reject", call_id
            )
            await self._audit_action(
                AuditKind.CALL_REJECTED,
                delivery,
                line,
                {"status_code": ABORT_REJECT_STATUS, "reason": why},
                error,
                session_id=row.id if row is not None else None,
            )
        else:
            logger.warning(
                "phone call accept aborted after it was sent (%s): hanging up call_id=%s "
                "session_id=%s stage=%s",
                why,
                call_id,
                row.id if row is not None else "-",
                stage.value,
            )
            await hang_up(self._provider, call_id, attempts=1)
        if row is not None:
            await self._fail(row.id, delivery, line, why, logged=True)

    def _new_row(self, delivery: Delivery, line: Line) -> SessionRow:
        settings = self._settings
        row = SessionRow(
            id=new_session_id(),
            owner_key_id=line.owner,
            state=SessionState.CREATED,
            provider=self._provider.name,
            model=line.model or settings.default_model,
            instructions=(
                line.instructions
                if line.instructions is not None
                else settings.default_instructions
            ),
            voice=line.voice or settings.default_voice,
            tools=list(line.tools),
            sideband_enabled=True,
            sideband_state=SidebandState.PENDING,
            metadata_={},
            notify_ended=settings.webhook_url is not None,
            connection_type=ConnectionType.SIP,
            call_id=delivery.call_id,
            sip_line=line.name,
            caller=self._caller(line, delivery.sip_headers),
            sip_headers=self._headers(line, delivery.sip_headers),
        )
        limits = line.limits
        row.max_duration_s = limits.get("max_duration_s", settings.call_max_duration_s)
        row.idle_timeout_s = limits.get("idle_timeout_s", settings.call_idle_timeout_s)
        row.max_tool_calls = limits.get("max_tool_calls", settings.session_max_tool_calls)
        row.max_concurrent_tools = limits.get(
            "max_concurrent_tools", settings.session_max_concurrent_tools
        )
        row.max_argument_bytes = limits.get("max_argument_bytes", settings.tool_max_argument_bytes)
        row.tamper_policy = limits.get("on_tamper", settings.tamper_policy)
        # No page: nothing but the caller's voice and the broker adds items or responses.
        row.page_items = PageItems.REFUSE
        row.page_responses = PageResponses.ALLOW
        row.input_transcription = choose(
            None, given=False, default_model=settings.input_transcription_model
        )
        row.tenant_id = line.tenant
        return row

    def _caller(self, line: Line | None, headers: Sequence[Mapping[str, str]]) -> str | None:
        """The caller's number as stored: a keyed hash if the line redacts it (or no line)."""
        caller = caller_number(headers)
        if caller is None:
            return None
        if line is None or line.redact_caller:
            return self._redactor.keyed_hash(caller)
        return caller

    def _headers(self, line: Line, headers: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
        hashed = line.hashed_headers()
        return [
            {
                "name": h["name"],
                "value": (
                    self._redactor.keyed_hash(h["value"])
                    if h["name"].lower() in hashed
                    else h["value"]
                ),
            }
            for h in headers
        ]

    def accept_config(self, row: SessionRow) -> dict[str, Any]:
        """The config a call is accepted with: the line's, but no turn detection yet."""
        config = copy.deepcopy(provider_session_config(self._registry, row))
        audio = config.setdefault("audio", {})
        audio.setdefault("input", {})["turn_detection"] = None
        return config

    async def _answer(
        self, row: SessionRow, delivery: Delivery, line: Line, accepting: _Accepting
    ) -> None:
        call_id = delivery.call_id
        owned = provider_session_config(self._registry, row)
        accepting.stage = AcceptStage.SENT
        error = await self._at_provider(
            self._provider.accept_call(call_id, self.accept_config(row)), "accept", call_id
        )
        accepting.stage = AcceptStage.ACCEPTED
        if error is not None:
            # Shielded as one: a stop landing here must not skip the failed session's write.
            accepting.stage = AcceptStage.SETTLED
            await self._writes.run(self._refused(row, delivery, line, error), "sip-accept-fail")
            return
        granted_at = time.monotonic()
        async with self._sessionmaker.begin() as s:
            live = await queries.transition_session(
                s, row.id, [SessionState.OFFERED], SessionState.LIVE, call_id=call_id
            )
            token = await queries.grant_lease(
                s, row.id, self._ownership.instance_id, self._ownership.ttl_s
            )
            if live:
                await audit.add(
                    s,
                    AuditEntry(
                        AuditKind.CALL_ACCEPTED,
                        Actor.BROKER,
                        {
                            "call_id": call_id,
                            "line": line.name,
                            "ok": True,
                            "provider": self._provider.name,
                            "instance_id": self._ownership.instance_id,
                        },
                        session_id=row.id,
                    ),
                )
        if not live:
            accepting.stage = AcceptStage.SETTLED
            logger.warning("phone call session changed during the accept session_id=%s", row.id)
            await self._writes.run(hang_up(self._provider, call_id, attempts=1), "sip-hangup")
            return
        row.state = SessionState.LIVE
        logger.info("call accepted session_id=%s call_id=%s", row.id, call_id)
        fence = self._ownership.hold(row.id, token, granted_at)
        with (
            fenced(self._ownership.fence_of_writes(fence)),
            acting_for(self._ownership.action_check(fence)),
        ):
            self._sessions.deadlines.watch(row.id, call_id, row.max_duration_s)
            self._supervisor.start(row.id, call_id, row.tools, owned)
            # No answer to hold (the provider answered the caller): nothing happened before
            # the attach, so the first attach needs no resync.
            attached = await self._supervisor.watching(
                row.id, self._settings.sideband_attach_timeout + ATTACH_MARGIN_S
            )
            if not attached:
                accepting.stage = AcceptStage.SETTLED
                # No sideband, no watch: the caller must not talk to an unwatched model.
                logger.error("phone call not watched: hanging up session_id=%s", row.id)
                try:
                    await self._sessions.hang_up(row, EndReason.ACCEPT_FAILED)
                except BrokerError as exc:
                    logger.error("phone call not hung up session_id=%s: %s", row.id, exc.code)
                return
            await self._go(row, line)
            accepting.stage = AcceptStage.SETTLED

    async def _go(self, row: SessionRow, line: Line) -> None:
        """The sideband watches: turn detection on, then the greeting, both on the sideband."""
        update_event = {
            "type": "session.update",
            "event_id": new_event_id(),
            "session": {
                "type": "realtime",
                "audio": {"input": {"turn_detection": dict(line.turn_detection)}},
            },
        }
        response: dict[str, Any] = {}
        if line.greeting is not None:
            response["instructions"] = line.greeting
        greet = {"type": "response.create", "event_id": new_event_id(), "response": response}
        try:
            sent = await self._supervisor.send_client_event(row.id, update_event)
            sent = sent and await self._supervisor.send_client_event(row.id, greet)
        except KeyError:
            sent = False  # the sideband already ended (a caller who hung up at once)
        if sent:
            logger.info("phone call greeted session_id=%s line=%s", row.id, line.name)
        else:
            logger.warning("phone call not greeted: no sideband session_id=%s", row.id)

    async def _refused(self, row: SessionRow, delivery: Delivery, line: Line, error: str) -> None:
        if error == "timeout":
            # It may still be accepted, late: a call nobody watches must not run.
            await hang_up(self._provider, delivery.call_id, attempts=1)
        await self._fail(row.id, delivery, line, error)

    async def _fail(
        self, session_id: str, delivery: Delivery, line: Line, why: str, *, logged: bool = False
    ) -> None:
        if not logged:  # an aborted accept said so already, with what it did to the call
            logger.warning(
                "phone call not accepted session_id=%s call_id=%s: %s",
                session_id,
                delivery.call_id,
                why,
            )
        await self._audit_action(
            AuditKind.CALL_ACCEPTED, delivery, line, {}, why, session_id=session_id
        )
        await end_session(
            self._sessionmaker,
            self._metrics,
            session_id,
            EndReason.ACCEPT_FAILED,
            detail=why,
            # Live too: an accept cut short after the call was accepted, before it was greeted.
            from_states=(SessionState.CREATED, SessionState.OFFERED, SessionState.LIVE),
            event={"type": ACCEPT_FAILED_EVENT, "reason": why, "call_id": delivery.call_id},
        )
