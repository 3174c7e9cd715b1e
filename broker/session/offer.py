"""The browser's SDP offer: spend its client secret, create the provider call, start the sideband.

The offer is the one request a browser makes with media in mind, and the only one that
creates anything at the provider: the broker sends the SDP with its own key and the
server-owned session config (:func:`provider_session_config`; the browser chooses none of
it), records the call, arms its duration backstop and starts its sideband.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any, Final

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker import tracing
from broker.auth.principals import BrowserPrincipal
from broker.auth.quotas import QuotaGuard
from broker.call.hangup import hang_up
from broker.call.ownership import CallOwnership, acting_for
from broker.call.supervisor import SidebandSupervisor
from broker.db.fence import fenced
from broker.db.models import CALL_RUNNING_STATES, SessionRow, SessionState
from broker.db.shielded import ShieldedWrites
from broker.errors import ConflictError, NotFoundError, UnauthorizedError, UnavailableError
from broker.metrics import BrokerMetrics
from broker.session import audit_entries
from broker.session.claim import claim_session, record_live, unspent_session
from broker.session.deadline import CallDeadlines
from broker.session.end_reason import EndReason
from broker.session.ending import end_session
from broker.session.offer_failure import OfferFailure, offer_outcome
from broker.session.sdp import check_offer
from broker.settings import Settings
from broker.tools.registry import ToolRegistry
from broker.tracing import SpanHandle
from sideband import Provider, ProviderError, ProviderTimeoutError, ProviderUnreachableError

logger = logging.getLogger(__name__)

_PRUNE_EVERY_S: Final = 30.0
"""Spent secrets are pruned at most this often per process, not on every offer's path."""
_FAILS_FROM: Final = (SessionState.CREATED, SessionState.OFFERED, *CALL_RUNNING_STATES)
"""A failed offer fails its session from any state before an end."""


def provider_session_config(registry: ToolRegistry, row: SessionRow) -> dict[str, Any]:
    """The server-owned session config: the browser never chooses any of it.

    Input transcription is sent only when the session has it (the provider's default is
    none, :mod:`broker.session.transcription`).
    """
    audio: dict[str, Any] = {"output": {"voice": row.voice}}
    if row.input_transcription is not None:
        audio = {"input": {"transcription": dict(row.input_transcription)}, **audio}
    return {
        "type": "realtime",
        "model": row.model,
        "instructions": row.instructions,
        "audio": audio,
        "tools": [registry[name].provider_definition() for name in row.tools],
        "tool_choice": "auto",
    }


class Offers:
    """Turns browsers' offers into provider calls (one per app, in the session service).

    Args:
        writes: the service's shielded writes (a failed offer's cleanup outlives its request).
        deadlines: the duration backstop each new call is given.
    """

    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        provider: Provider,
        registry: ToolRegistry,
        supervisor: SidebandSupervisor,
        metrics: BrokerMetrics,
        writes: ShieldedWrites,
        deadlines: CallDeadlines,
        ownership: CallOwnership,
        quotas: QuotaGuard | None = None,
    ) -> None:
        self._settings = settings
        self._quotas = quotas
        self._ownership = ownership
        self._sessionmaker = sessionmaker
        self._provider = provider
        self._registry = registry
        self._supervisor = supervisor
        self._metrics = metrics
        self._writes = writes
        self._deadlines = deadlines
        self._pruned_at = float("-inf")

    def _prune_due(self) -> bool:
        """Whether this offer also prunes spent secrets (the first, then every 30 s)."""
        now = time.monotonic()
        if now - self._pruned_at < _PRUNE_EVERY_S:
            return False
        self._pruned_at = now
        return True

    async def offer(self, browser: BrowserPrincipal, sdp: str) -> str:
        """Create the provider call for the browser's offer; returns the SDP answer.

        A sideband session's sideband is started before returning, and the answer is held
        until it first attaches, at most ``BROKER_SIDEBAND_ANSWER_WAIT_S``
        (:meth:`~broker.call.supervisor.SidebandSupervisor.hold_answer`): the page can act only
        once it has the answer, so a sideband attached first watches all it does. Past the
        bound the answer goes out anyway and the first attach resyncs (docs/protocol.md §2.5
        item 6).

        The client secret is spent in the same transaction that claims the session
        (``created → offered``), and remembered as the session's ``offer_jti``. A refused SDP or
        an unknown session spends nothing.

        Raises:
            UnauthorizedError (``token_replayed``: checked first, whatever the session's state),
            NotFoundError, ConflictError (``session_already_offered``), BadRequestError
            (``invalid_sdp``), UpstreamError (``provider_error`` / ``provider_unreachable`` 502,
            ``provider_timeout`` 504). A provider failure also fails the session, with a
            readable ``end_reason`` and a ``broker.offer_failed`` event. Every offer is
            counted by outcome and timed in the metrics.
        """
        started = time.perf_counter()
        failure: BaseException | None = None
        # The root of the call's trace (broker/tracing.py): the sideband task started here
        # inherits it, so the call's attaches and tool calls are its descendants.
        with tracing.span(
            "broker.offer",
            {"broker.session_id": browser.session_id, "broker.provider": self._provider.name},
            kind="server",
        ) as span:
            try:
                answer = await self._offer(browser, sdp, span)
            except BaseException as exc:
                failure = exc
                raise
            finally:
                outcome = offer_outcome(failure)
                span.set("broker.outcome", str(outcome))
                self._metrics.offer_finished(outcome, time.perf_counter() - started)
            return answer

    async def _offer(self, browser: BrowserPrincipal, sdp: str, span: SpanHandle) -> str:
        """The offer itself; :meth:`offer` wraps it with the metrics."""
        if self._supervisor.stopping:
            # Draining: a call made now would lose its sideband at once; another process
            # (or this one, restarted) takes it.
            raise UnavailableError("shutting_down", "this broker is shutting down; retry")
        session_id = browser.session_id
        replayed = partial(_replayed, session_id)
        # The replay check comes first, whatever the SDP or the session's state.
        row = await unspent_session(self._sessionmaker, browser, replayed)
        check_offer(sdp)
        if row is None:
            raise NotFoundError("session_not_found", "no such session")
        # The app's trace that created the session, stored with it: a link, not the parent
        # (broker/tracing.py). The call may live long after the app's request ended, and its
        # trace stays the call's own, sampled on its own. Nothing of this request's headers is
        # read: the browser must not choose the trace or its sampling.
        span.link(row.trace_parent)
        if self._quotas is not None and row.state == SessionState.CREATED:
            # Before anything is spent: a refused offer may be retried once a call ends.
            await self._quotas.check_live(row.owner_key_id, row.tenant_id)
        state = row.state
        await claim_session(
            self._sessionmaker,
            browser,
            replayed=replayed,
            taken=lambda: ConflictError(
                "session_already_offered", f"the session is already {state}", state=state
            ),
            prune=self._prune_due(),
            # Counted again with the claim, exactly: racing offers cannot both pass the cap.
            transaction=(
                partial(self._quotas.consuming_live, row.owner_key_id, row.tenant_id)
                if self._quotas is not None and state == SessionState.CREATED
                else None
            ),
        )
        try:
            config = provider_session_config(self._registry, row)
            answer = await self._provider.create_call(sdp, config)
            span.set("broker.call_id", answer.call_id)
        except (ProviderError, ProviderTimeoutError, ProviderUnreachableError) as exc:
            self._metrics.provider_failed(exc)
            failure = OfferFailure.from_provider(exc)
            logger.warning(
                "offer failed at the provider session_id=%s code=%s provider_status=%s",
                session_id,
                failure.code,
                failure.provider_status,
            )
            await self._writes.run(self._fail(session_id, failure), "offer-fail")
            raise failure.error() from exc
        except BaseException as exc:
            # Never leave a session stuck in `offered`.
            await self._writes.run(
                self._fail(session_id, OfferFailure.unexpected(exc)), "offer-fail"
            )
            raise
        try:
            granted_at = time.monotonic()
            token = await record_live(
                self._sessionmaker,
                self._ownership,
                session_id,
                answer.call_id,
                audit_entries.session_offered(
                    session_id, answer.call_id, self._provider.name, self._ownership.instance_id
                ),
                "offer",
            )
        except BaseException as exc:
            # The provider has a call nobody controls: end it rather than leave it running.
            logger.warning(
                "offer could not be recorded session_id=%s call_id=%s: %s",
                session_id,
                answer.call_id,
                type(exc).__name__,
            )
            await self._writes.run(self._abort_call(session_id, answer.call_id), "offer-abort")
            raise
        logger.info("call created session_id=%s call_id=%s", session_id, answer.call_id)
        fence = self._ownership.hold(session_id, token, granted_at)
        with (
            fenced(self._ownership.fence_of_writes(fence)),
            acting_for(self._ownership.action_check(fence)),
        ):
            self._deadlines.watch(session_id, answer.call_id, row.max_duration_s)
            if row.sideband_enabled:
                self._supervisor.start(
                    session_id, answer.call_id, row.tools, config, trace_link=row.trace_parent
                )
            else:
                # No call span: the page's bridge reports link to the offer's instead.
                tracing.register_call(session_id, span.context())
        if row.sideband_enabled:
            # The page can act only once it has this answer: a sideband attached first
            # watches all it does. Bounded, so a slow attach costs a resync, not the call.
            await self._supervisor.hold_answer(session_id, self._settings.sideband_answer_wait_s)
        return answer.sdp

    async def _abort_call(self, session_id: str, call_id: str) -> None:
        await self._fail(session_id, OfferFailure("call_not_recorded", "could not record the call"))
        await hang_up(self._provider, call_id, attempts=1)

    async def _fail(self, session_id: str, failure: OfferFailure) -> None:
        """Fail the session, with why and its ``broker.offer_failed`` event (no sideband yet)."""
        await end_session(
            self._sessionmaker,
            self._metrics,
            session_id,
            EndReason.OFFER_FAILED,
            detail=failure.detail,
            from_states=_FAILS_FROM,
            event=failure.event(),
        )


def _replayed(session_id: str) -> UnauthorizedError:
    logger.warning("client secret replayed on offer session_id=%s", session_id)
    return UnauthorizedError("token_replayed", "this client secret was already used for an offer")
