"""Accepting a phone call: the session row, the accept, the watch and the greeting.

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
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.audit import trail as audit
from broker.audit.records import Actor, AuditEntry, AuditKind
from broker.audit.redaction import FieldRedactor
from broker.call.hangup import hang_up
from broker.call.ownership import CallOwnership, acting_for
from broker.call.supervisor import SidebandSupervisor
from broker.db import queries
from broker.db.fence import fenced
from broker.db.models import (
    ConnectionType,
    SessionRow,
    SessionState,
    SidebandState,
    SipDelivery,
)
from broker.db.shielded import ShieldedWrites
from broker.errors import BrokerError, RateLimitedError
from broker.metrics import BrokerMetrics
from broker.session import audit_entries
from broker.session.end_reason import EndReason
from broker.session.ending import end_session
from broker.session.limits import PageItems, PageResponses
from broker.session.offer import provider_session_config
from broker.session.service import SessionService, new_session_id
from broker.session.transcription import choose
from broker.settings import Settings
from broker.sip.actions import LineActions
from broker.sip.delivery import Delivery, stored_caller, stored_headers
from broker.sip.lines import Line
from broker.tools.registry import ToolRegistry
from sideband import Provider
from sideband.events import new_event_id

logger = logging.getLogger(__name__)

ACCEPT_FAILED_EVENT: Final = "broker.accept_failed"
BUSY_STATUS: Final = 486
"""SIP "Busy Here": what a caller hears when the line's tenant is at a spend cap."""
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


class CallAcceptor:
    """Accepts the calls of ``accept`` lines, one :meth:`accept` per call in the call's task.

    The task's owner (:class:`~broker.sip.calls.SipCalls`) holds ``writes``, draining it at
    stop, and ``closing``, which says whether a cancelled accept is the broker stopping.
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
        actions: LineActions,
        writes: ShieldedWrites,
        closing: Callable[[], bool],
    ) -> None:
        self._settings = settings
        self._sessionmaker = sessionmaker
        self._provider = provider
        self._registry = registry
        self._supervisor = supervisor
        self._sessions = sessions
        self._metrics = metrics
        self._ownership = ownership
        self._redactor = redactor
        self._actions = actions
        self._writes = writes
        self._closing = closing

    async def accept(self, delivery: Delivery, line: Line) -> None:
        """Accept one call, watch it and greet it; cut short, end it as far as it got.

        Cancellation-safe: a cancel (or an error) before the call settled ends it at the
        provider and fails the session (:meth:`_abort`), shielded in ``writes``, and then
        propagates.
        """
        accepting = _Accepting()
        row: SessionRow | None = None
        try:
            if await self._over_quota(line):
                accepting.stage = AcceptStage.SETTLED
                await self._actions.reject(delivery, line, BUSY_STATUS, reason="quota_exceeded")
                return
            row = await self._store_row(delivery, line)
            if row is None:  # a racing call took the cap meanwhile (counted again, exactly)
                accepting.stage = AcceptStage.SETTLED
                await self._actions.reject(delivery, line, BUSY_STATUS, reason="quota_exceeded")
                return
            await self._answer(row, delivery, line, accepting)
        except BaseException as exc:
            if accepting.stage is not AcceptStage.SETTLED:
                if isinstance(exc, asyncio.CancelledError):
                    why = "broker_stopped" if self._closing() else "cancelled"
                else:
                    why = type(exc).__name__
                await self._writes.run(
                    self._abort(row, delivery, line, accepting.stage, why), "sip-accept-abort"
                )
            raise

    async def _over_quota(self, line: Line) -> bool:
        """Whether the line's tenant is at a spend cap (a phone call is a session as any)."""
        try:
            await self._sessions.quotas.check_owner(line.owner, line.tenant)
        except RateLimitedError:
            return True
        return False

    async def _store_row(self, delivery: Delivery, line: Line) -> SessionRow | None:
        """The call's session row, stored ``offered`` (and its delivery pointed at it).

        ``None``: a spend cap is reached, counted again with the write (the refusal is
        audited as :meth:`_over_quota`'s).
        """
        row = self._new_row(delivery, line)
        try:
            async with self._sessions.quotas.consuming(line.owner, line.tenant) as s:
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
        except RateLimitedError:
            return None
        self._metrics.session_created(row.tenant_id)
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
            error = await self._actions.at_provider(
                self._provider.reject_call(call_id, ABORT_REJECT_STATUS), "reject", call_id
            )
            await self._actions.audit(
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
            caller=stored_caller(self._redactor, line, delivery.sip_headers),
            sip_headers=stored_headers(self._redactor, line, delivery.sip_headers),
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
        error = await self._actions.at_provider(
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
        await self._actions.audit(
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
