"""Session lifecycle: create, offer (SDP proxy + sideband start), bridge tool calls, detail."""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import CursorResult, delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.auth.principals import ApiPrincipal, BrowserPrincipal, Scope, mint_client_secret
from broker.auth.ratelimit import TokenBucketLimiter
from broker.call.hangup import hang_up
from broker.call.supervisor import SidebandSupervisor
from broker.db import queries
from broker.db.models import (
    CALL_RUNNING_STATES,
    SessionRow,
    SessionState,
    SidebandState,
    ToolCall,
    ToolPath,
    UsedClientSecret,
    utcnow,
)
from broker.db.shielded import ShieldedWrites
from broker.errors import (
    ConflictError,
    ForbiddenError,
    NotFoundError,
    RateLimitedError,
    UnauthorizedError,
    UnavailableError,
    UpstreamError,
    ValidationFailedError,
)
from broker.metrics import BrokerMetrics, EndReason
from broker.record.event_log import append_event
from broker.session.deadline import CallDeadlines
from broker.session.limits import LimitsRequest, SessionLimits
from broker.session.offer_failure import OfferFailure, add_offer_failed_event, offer_outcome
from broker.session.sdp import check_offer
from broker.settings import Settings
from broker.tools.call_ids import CALL_ID_PATTERN
from broker.tools.dispatch import CallOutcome, CallRejectedError, ToolDispatcher, arguments_equal
from broker.tools.registry import ToolRegistry
from sideband import (
    PageItems,
    PageResponses,
    Provider,
    ProviderError,
    ProviderTimeoutError,
    ProviderUnreachableError,
)

logger = logging.getLogger(__name__)

MAX_TOOLS_PER_SESSION: Final = 64
_SPENT_SECRET_GRACE: Final = timedelta(minutes=1)
_PRUNE_EVERY_S: Final = 30.0
"""Spent secrets are pruned at most this often per process, not on every offer's path."""
"""How long a spent secret is kept past ``exp``: python-jose accepts a token during the second
after ``exp``, and replicas' clocks drift; pruning at ``exp`` would reopen a replay window."""
MAX_METADATA_KEYS: Final = 32
_SIDEBAND_OWNS_CALLS: Final = frozenset(
    {
        SidebandState.PENDING,
        SidebandState.CONNECTING,
        SidebandState.CONNECTED,
        # Reconnecting, the sideband still owns the calls: its resync finds what it missed.
        SidebandState.RECONNECTING,
    }
)


class CreateSessionRequest(BaseModel):
    """Body of ``POST /api/v1/sessions``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str | None = Field(default=None, min_length=1, max_length=100)
    instructions: str | None = Field(default=None, max_length=32_000)
    voice: str | None = Field(default=None, min_length=1, max_length=40)
    tools: list[str] = Field(default_factory=list, max_length=MAX_TOOLS_PER_SESSION)
    sideband: bool = True
    metadata: dict[str, str | int | float | bool] = Field(default_factory=dict)
    limits: LimitsRequest = Field(default_factory=LimitsRequest)

    @field_validator("tools")
    @classmethod
    def _unique(cls, tools: list[str]) -> list[str]:
        return list(dict.fromkeys(tools))

    @field_validator("metadata")
    @classmethod
    def _small(cls, metadata: dict[str, Any]) -> dict[str, Any]:
        if len(metadata) > MAX_METADATA_KEYS:
            raise ValueError(f"at most {MAX_METADATA_KEYS} metadata keys")
        if any(len(k) > 64 or (isinstance(v, str) and len(v) > 512) for k, v in metadata.items()):
            raise ValueError("metadata keys are at most 64 and string values 512 characters")
        return metadata


class BridgeCallRequest(BaseModel):
    """Body of ``POST /api/v1/sessions/{id}/tools/{tool}``."""

    model_config = ConfigDict(extra="forbid")

    call_id: str = Field(pattern=CALL_ID_PATTERN)
    """The one call-id rule of both paths (:mod:`broker.tools.call_ids`)."""
    arguments: str | dict[str, Any] = "{}"
    """The JSON text the model produced (or the parsed object)."""


@dataclass(frozen=True)
class CreatedSession:
    row: SessionRow
    client_secret: str
    expires_at: int


def new_session_id() -> str:
    return "sess_" + secrets.token_hex(12)


async def _secret_spent(s: AsyncSession, jti: str) -> bool:
    return await s.get(UsedClientSecret, jti) is not None


async def _spend_secret(s: AsyncSession, browser: BrowserPrincipal, *, prune: bool) -> bool:
    """Record the offer's client secret as used; ``False`` if it already was (a replay).

    ON CONFLICT DO NOTHING: two offers racing with one token must not turn into an
    IntegrityError; the loser sees no row inserted. With ``prune``, spent secrets well past
    their ``exp`` are deleted too: verification refuses them as expired before this table
    is consulted, so keeping them a while longer changes nothing.
    """
    dialect_insert = (
        postgresql.insert if s.get_bind().dialect.name == "postgresql" else sqlite.insert
    )
    now = utcnow()
    result = await s.execute(
        dialect_insert(UsedClientSecret)
        .values(
            jti=browser.token_id,
            session_id=browser.session_id,
            used_at=now,
            expires_at=datetime.fromtimestamp(browser.expires_at, UTC),
        )
        .on_conflict_do_nothing(index_elements=["jti"])
    )
    if prune:
        await s.execute(
            delete(UsedClientSecret).where(UsedClientSecret.expires_at < now - _SPENT_SECRET_GRACE)
        )
    assert isinstance(result, CursorResult)
    return bool(result.rowcount)


async def end_unwatched_call(
    sessionmaker: async_sessionmaker[AsyncSession],
    provider: Provider,
    metrics: BrokerMetrics,
    session_id: str,
    call_id: str,
    reason: str,
) -> bool:
    """End a call no sideband of this process watches (bridge-only, degraded).

    Hangs it up, then ends the session with ``reason``; ``False`` if the provider did not.
    """
    if not await hang_up(provider, call_id):
        return False
    async with sessionmaker.begin() as s:
        ended = await queries.transition_session(
            s, session_id, CALL_RUNNING_STATES, SessionState.ENDED, end_reason=reason
        )
    if ended:
        metrics.session_ended(reason)
    return True


class SessionService:
    """Everything that changes a session; handlers only parse, authorize and render."""

    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        provider: Provider,
        registry: ToolRegistry,
        dispatcher: ToolDispatcher,
        supervisor: SidebandSupervisor,
        metrics: BrokerMetrics,
    ) -> None:
        self._settings = settings
        self._sessionmaker = sessionmaker
        self._provider = provider
        self._registry = registry
        self._dispatcher = dispatcher
        self._supervisor = supervisor
        self._metrics = metrics
        self._writes = ShieldedWrites()
        self._deadlines = CallDeadlines(sessionmaker, provider)
        self._create_limiter = TokenBucketLimiter(
            settings.session_create_rate, settings.session_create_burst
        )
        self._pruned_at = float("-inf")

    def _prune_due(self) -> bool:
        """Whether this offer also prunes spent secrets (the first, then every 30 s)."""
        now = time.monotonic()
        if now - self._pruned_at < _PRUNE_EVERY_S:
            return False
        self._pruned_at = now
        return True

    async def resume(self) -> int:
        """Take up the calls an earlier broker process left running; returns how many sidebands.

        Every running call gets its duration backstop again (from its original start); each
        live one with a sideband is attached again with ``resume``.
        """
        async with self._sessionmaker() as s:
            rows = await queries.sessions_with_running_calls(s)
        resumed = 0
        for row in rows:
            assert row.call_id is not None
            self._deadlines.watch(row.id, row.call_id, row.max_duration_s, row.live_at)
            if row.state == SessionState.LIVE and row.sideband_enabled:
                logger.info("resuming sideband session_id=%s call_id=%s", row.id, row.call_id)
                self._supervisor.start(
                    row.id, row.call_id, row.tools, self.provider_session_config(row), resume=True
                )
                resumed += 1
        return resumed

    async def drain(self) -> None:
        """Stop the call deadlines; wait for cleanup writes (call before the database closes)."""
        await self._deadlines.close()
        await self._writes.drain()

    async def create(
        self, principal: ApiPrincipal, request: CreateSessionRequest
    ) -> CreatedSession:
        """Store a new session and mint its client secret.

        Raises:
            ForbiddenError: the key lacks ``sessions:create``.
            RateLimitedError: ``rate_limited``: this key created too many sessions just now.
            ValidationFailedError: ``unknown_tool``.
        """
        principal.require(Scope.SESSIONS_CREATE)
        retry_after = self._create_limiter.take(principal.key_id)
        if retry_after is not None:
            logger.warning("session create rate limited key_id=%s", principal.key_id)
            raise RateLimitedError(
                "rate_limited",
                "this API key is creating sessions too fast; retry later",
                retry_after=retry_after,
            )
        unknown = [name for name in request.tools if name not in self._registry]
        if unknown:
            raise ValidationFailedError(
                "unknown_tool", f"unknown tool(s): {', '.join(sorted(unknown))}", tools=unknown
            )
        row = SessionRow(
            id=new_session_id(),
            owner_key_id=principal.key_id,
            state=SessionState.CREATED,
            provider=self._provider.name,
            model=request.model or self._settings.default_model,
            instructions=(
                request.instructions
                if request.instructions is not None
                else self._settings.default_instructions
            ),
            voice=request.voice or self._settings.default_voice,
            tools=request.tools,
            sideband_enabled=request.sideband,
            sideband_state=SidebandState.PENDING if request.sideband else SidebandState.DISABLED,
            metadata_=request.metadata,
            # Decided now, so the end is announced whichever broker process records it.
            notify_ended=self._settings.webhook_url is not None,
        )
        limits = self._resolve_limits(request.limits)
        row.max_duration_s = limits.max_duration_s
        row.idle_timeout_s = limits.idle_timeout_s
        row.max_tool_calls = limits.max_tool_calls
        row.max_concurrent_tools = limits.max_concurrent_tools
        row.max_argument_bytes = limits.max_argument_bytes
        row.tamper_policy = limits.tamper_policy
        row.page_items = limits.page_items
        row.page_responses = limits.page_responses
        async with self._sessionmaker.begin() as s:
            s.add(row)
        self._metrics.session_created()
        token, expires_at = mint_client_secret(
            row.id, self._settings.signing_key, self._settings.client_secret_ttl
        )
        logger.info(
            "session created session_id=%s key_id=%s tools=%s sideband=%s",
            row.id,
            principal.key_id,
            ",".join(row.tools),
            row.sideband_enabled,
        )
        return CreatedSession(row=row, client_secret=token, expires_at=expires_at)

    def _resolve_limits(self, requested: LimitsRequest) -> SessionLimits:
        """The session's limits: requested values, never above the settings' ceilings.

        Raises:
            ValidationFailedError: ``limit_exceeds_ceiling`` naming each offending limit.
        """
        ceilings = {
            "max_duration_s": self._settings.call_max_duration_s,
            "idle_timeout_s": self._settings.call_idle_timeout_s,
            "max_tool_calls": self._settings.session_max_tool_calls,
            "max_concurrent_tools": self._settings.session_max_concurrent_tools,
            "max_argument_bytes": self._settings.tool_max_argument_bytes,
        }
        chosen: dict[str, int] = {}
        over: dict[str, int] = {}
        for name, ceiling in ceilings.items():
            value = getattr(requested, name)
            chosen[name] = ceiling if value is None else value
            if value is not None and value > ceiling:
                over[name] = ceiling
        if over:
            detail = ", ".join(f"{name} <= {ceiling}" for name, ceiling in over.items())
            raise ValidationFailedError(
                "limit_exceeds_ceiling",
                f"limits above this broker's ceiling: {detail}",
                limits=over,
            )
        return SessionLimits(
            **chosen,
            tamper_policy=requested.on_tamper or self._settings.tamper_policy,
            page_items=requested.page_items or PageItems.REFUSE,
            page_responses=requested.page_responses or PageResponses.ALLOW,
        )

    def provider_session_config(self, row: SessionRow) -> dict[str, Any]:
        """The server-owned session config: the browser never chooses any of it."""
        return {
            "type": "realtime",
            "model": row.model,
            "instructions": row.instructions,
            "audio": {"output": {"voice": row.voice}},
            "tools": [self._registry[name].provider_definition() for name in row.tools],
            "tool_choice": "auto",
        }

    async def get_row(self, session_id: str) -> SessionRow:
        async with self._sessionmaker() as s:
            row = await queries.get_session_row(s, session_id)
        if row is None:
            raise NotFoundError("session_not_found", "no such session")
        return row

    async def offer(self, browser: BrowserPrincipal, sdp: str) -> str:
        """Create the provider call for the browser's offer; returns the SDP answer.

        The sideband is started before returning but not awaited: the browser must apply the
        answer before the call is fully up, so nothing here may wait for it.

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
        try:
            return await self._offer(browser, sdp)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            self._metrics.offer_finished(offer_outcome(failure), time.perf_counter() - started)

    async def _offer(self, browser: BrowserPrincipal, sdp: str) -> str:
        """The offer itself; :meth:`offer` wraps it with the metrics."""
        if self._supervisor.stopping:
            # Draining: a call made now would lose its sideband at once; another process
            # (or this one, restarted) takes it.
            raise UnavailableError("shutting_down", "this broker is shutting down; retry")
        session_id = browser.session_id
        # One read for both (an offer's latency is mostly round trips to the database); the
        # replay check still comes first, whatever the SDP or the session's state.
        async with self._sessionmaker() as s:
            replayed = await _secret_spent(s, browser.token_id)
            row = None if replayed else await queries.get_session_row(s, session_id)
        if replayed:
            raise _replayed(session_id)
        check_offer(sdp)
        if row is None:
            raise NotFoundError("session_not_found", "no such session")
        prune = self._prune_due()
        async with self._sessionmaker.begin() as s:
            # Raising inside the block rolls the spend back with the failed claim.
            if not await _spend_secret(s, browser, prune=prune):
                raise _replayed(session_id)
            claimed = await queries.transition_session(
                s,
                session_id,
                [SessionState.CREATED],
                SessionState.OFFERED,
                offer_jti=browser.token_id,
            )
            if not claimed:
                raise ConflictError(
                    "session_already_offered",
                    f"the session is already {row.state}",
                    state=row.state,
                )
        try:
            answer = await self._provider.create_call(sdp, self.provider_session_config(row))
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
            async with self._sessionmaker.begin() as s:
                live = await queries.transition_session(
                    s, session_id, [SessionState.OFFERED], SessionState.LIVE, call_id=answer.call_id
                )
            if not live:
                raise ConflictError("session_not_offered", "the session changed during the offer")
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
        self._deadlines.watch(session_id, answer.call_id, row.max_duration_s)
        if row.sideband_enabled:
            self._supervisor.start(
                session_id, answer.call_id, row.tools, self.provider_session_config(row)
            )
            # The page can act only once it has this answer: a sideband attached first
            # watches all it does. Bounded, so a slow attach costs a resync, not the call.
            await self._supervisor.hold_answer(session_id, self._settings.sideband_answer_wait_s)
        return answer.sdp

    async def _abort_call(self, session_id: str, call_id: str) -> None:
        await self._fail(
            session_id, OfferFailure("call_not_recorded", "offer: could not record the call")
        )
        await hang_up(self._provider, call_id, attempts=1)

    async def _fail(self, session_id: str, failure: OfferFailure) -> None:
        """Fail the session and record why, in one transaction (no sideband writes yet)."""
        reason = failure.end_reason[:200]
        async with self._sessionmaker.begin() as s:
            failed = await queries.transition_session(
                s,
                session_id,
                [SessionState.CREATED, SessionState.OFFERED, *CALL_RUNNING_STATES],
                SessionState.FAILED,
                end_reason=reason,
            )
            if failed:
                await add_offer_failed_event(s, session_id, failure)
        if failed:
            self._metrics.session_ended(reason)

    async def end_by_browser(self, browser: BrowserPrincipal) -> bool:
        """The page hung up: hang the call up at the provider and end the session (``hangup``).

        Without this, a call with no sideband (bridge-only, or degraded) would look live
        until its duration limit, and its ``session.ended`` would carry the limit as its
        duration. Only the client secret that made the offer may end its call. Returns
        ``False`` if the call had already ended (nothing to do).

        Raises:
            UnauthorizedError (``token_expired``: not the offer's secret, and expired),
            ForbiddenError (``token_session_mismatch``: another secret of the session),
            NotFoundError (``session_not_found``), UpstreamError (``provider_error``: the
            provider did not hang up; the call goes on).
        """
        row = await self.get_row(browser.session_id)
        if row.offer_jti != browser.token_id:
            if browser.expired():
                raise UnauthorizedError("token_expired", "the client secret has expired")
            raise ForbiddenError(
                "token_session_mismatch", "only the secret that made the offer can end the call"
            )
        if row.state not in CALL_RUNNING_STATES or row.call_id is None:
            return False
        try:
            # A watched call ends like a leash decision; its supervisor records the end.
            hung_up = await self._supervisor.end_call(row.id, row.call_id, EndReason.HANGUP)
        except KeyError:
            hung_up = await end_unwatched_call(
                self._sessionmaker,
                self._provider,
                self._metrics,
                row.id,
                row.call_id,
                EndReason.HANGUP,
            )
        if not hung_up:
            raise UpstreamError("provider_error", "the provider did not hang up; the call goes on")
        await append_event(self._sessionmaker, row.id, {"type": "broker.browser_hangup"})
        logger.info("call ended by the page session_id=%s call_id=%s", row.id, row.call_id)
        return True

    async def bridge_call(
        self, browser: BrowserPrincipal, tool: str, request: BridgeCallRequest
    ) -> CallOutcome:
        """A tool call relayed by the browser (the fallback path).

        While a session's sideband is starting or connected, the sideband is the only executor:
        the bridge waits (bounded) for its result and returns it, so a browser cannot run a call
        the model did not make. Only a bridge-only session, or one whose sideband failed or
        closed, has the bridge run the call, through the same once-only pipeline.

        ``browser`` comes unchecked for expiry: the token that made the offer stays good here
        while its call is live (a call outlives a client secret's few minutes); any other
        token, or that one once the call is over, must be unexpired.

        Raises:
            UnauthorizedError (``token_expired``), NotFoundError (``session_not_found``),
            ConflictError (``session_not_live``, ``call_arguments_mismatch``),
            ForbiddenError (``tool_not_allowed``: not in the session's allowlist).
        """
        row = await self.get_row(browser.session_id)
        call_running = row.state in CALL_RUNNING_STATES
        offer_token_of_live_call = call_running and row.offer_jti == browser.token_id
        if browser.expired() and not offer_token_of_live_call:
            raise UnauthorizedError("token_expired", "the client secret has expired")
        if not call_running:
            raise ConflictError(
                "session_not_live", f"the session is {row.state}, not live", state=row.state
            )
        if tool not in row.tools:
            # The browser, not the model, asked for a tool the session was never given:
            # refused outright (the model's own out-of-allowlist calls get a denied record).
            logger.warning(
                "bridge refused a tool outside the allowlist session_id=%s tool=%.100s",
                row.id,
                tool,
            )
            raise ForbiddenError("tool_not_allowed", "this session may not use that tool")
        arguments = (
            request.arguments
            if isinstance(request.arguments, str)
            else _compact_json(request.arguments)
        )
        stored = await self._dispatcher.get_record(row.id, request.call_id)
        if stored is not None and (
            stored.tool != tool or not arguments_equal(stored.arguments, arguments)
        ):
            raise ConflictError(
                "call_arguments_mismatch",
                "this call_id was recorded with another tool or other arguments",
            )
        if row.sideband_enabled and row.sideband_state in _SIDEBAND_OWNS_CALLS:
            outcome = await self._dispatcher.wait_settled(
                row.id, request.call_id, within=self._settings.bridge_wait_timeout
            )
            if outcome is None:
                raise NotFoundError(
                    "call_not_found",
                    "the sideband has not seen this call from the model",
                )
            return outcome
        try:
            return await self._dispatcher.run(
                row.id,
                row.tools,
                request.call_id,
                tool,
                arguments,
                ToolPath.BRIDGE,
                loser_wait=self._settings.bridge_wait_timeout,
            )
        except CallRejectedError as exc:
            raise ValidationFailedError(exc.code, exc.message) from None

    async def detail(
        self, principal: ApiPrincipal, session_id: str
    ) -> tuple[SessionRow, Sequence[ToolCall]]:
        """The session and its tool calls; for the owning key or ``monitor:read``.

        Raises:
            NotFoundError: unknown, or owned by another key without monitor scope (no oracle).
        """
        row = await self.get_row(session_id)
        if row.owner_key_id != principal.key_id:
            try:
                principal.require(Scope.MONITOR_READ)
            except ForbiddenError:
                raise NotFoundError("session_not_found", "no such session") from None
        async with self._sessionmaker() as s:
            calls = await queries.list_tool_calls(s, session_id)
        return row, calls


def _replayed(session_id: str) -> UnauthorizedError:
    logger.warning("client secret replayed on offer session_id=%s", session_id)
    return UnauthorizedError("token_replayed", "this client secret was already used for an offer")


def _compact_json(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"))
