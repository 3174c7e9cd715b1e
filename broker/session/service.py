"""Sessions: create one, read it back, and the one object the handlers reach them through.

:class:`SessionService` creates sessions (:meth:`SessionService.create`) and reads them
(:meth:`SessionService.detail`); every other change is one job of its own module, which the
service holds and hands the session's row to:

- :mod:`broker.session.offer`: the SDP offer (the provider call, the sideband's start);
- :mod:`broker.tools.bridge`: a tool call relayed by the page;
- :mod:`broker.session.call_actions`: the page's or an operator's hangup, new instructions;
- :mod:`broker.session.ending`: how any of them (and the supervisor, the deadlines, the
  reaper) ends a session.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.audit import trail as audit
from broker.auth.principals import (
    CONNECT_TOKEN_AUDIENCE,
    ApiPrincipal,
    BrowserPrincipal,
    Scope,
    mint_client_secret,
)
from broker.auth.quotas import QuotaGuard
from broker.auth.shared_ratelimit import RateLimits
from broker.auth.tenants import tenant_for_new_session
from broker.call.ownership import CallOwnership, StandbyConnection, acting_for
from broker.call.supervisor import SidebandSupervisor
from broker.db import queries
from broker.db.fence import Fence, fenced
from broker.db.models import (
    CallCommand,
    ConnectionType,
    SessionRow,
    SessionState,
    SidebandState,
    ToolCall,
    ToolCallStatus,
    ToolPath,
)
from broker.db.shielded import ShieldedWrites
from broker.errors import (
    ForbiddenError,
    NotFoundError,
    RateLimitedError,
    UnauthorizedError,
    ValidationFailedError,
)
from broker.metrics import BrokerMetrics
from broker.session import audit_entries
from broker.session.call_actions import CallActions
from broker.session.deadline import CallDeadlines
from broker.session.end_reason import EndReason
from broker.session.ending import end_session
from broker.session.limits import LimitsRequest, SessionLimits
from broker.session.offer import Offers, provider_session_config
from broker.session.transcription import TranscriptionRequest, choose
from broker.session.trusted import (
    SERVICE_ID_PATTERN,
    ServerTool,
    TrustedConnects,
    check_trusted_fields,
    unique_names,
)
from broker.settings import Settings
from broker.tools.bridge import Bridge, BridgeCallRequest
from broker.tools.dispatch import CallOutcome, ToolDispatcher
from broker.tools.registry import ToolRegistry
from broker.tools.server_tools import MAX_SERVER_TOOLS
from sideband import PageItems, PageResponses, Provider

logger = logging.getLogger(__name__)

MAX_TOOLS_PER_SESSION: Final = 64
BRIDGE_COMMAND: Final = "bridge_call"
"""A page's relayed tool call, run by the instance that owns the call."""
MAX_METADATA_KEYS: Final = 32


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
    input_transcription: TranscriptionRequest | None = None
    """What the user says, written down (:mod:`broker.session.transcription`); absent: the
    setting's model; ``null``: none."""
    tenant: str | None = Field(default=None, min_length=1, max_length=40)
    """A cross-tenant key's choice of the session's tenant (default: ``default``); a
    tenant's key may name only its own (:func:`broker.auth.tenants.tenant_for_new_session`)."""
    connection_type: ConnectionType = ConnectionType.WEBRTC
    """``trusted_server``: no browser, the backend connects (:mod:`broker.session.trusted`);
    the key needs ``sessions:trusted``."""
    service_id: str | None = Field(
        default=None, min_length=1, max_length=128, pattern=SERVICE_ID_PATTERN
    )
    """The backend service a trusted session is for (required for one, refused otherwise)."""
    server_tools: list[ServerTool] | None = Field(default=None, max_length=MAX_SERVER_TOOLS)
    """A trusted session's own tools, run by its backend (``broker.tool_call``)."""

    @property
    def trusted(self) -> bool:
        return self.connection_type is ConnectionType.TRUSTED_SERVER

    @field_validator("server_tools")
    @classmethod
    def _unique_server_tools(cls, tools: list[ServerTool] | None) -> list[ServerTool] | None:
        return None if tools is None else unique_names(tools)

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


@dataclass(frozen=True)
class CreatedSession:
    row: SessionRow
    client_secret: str
    expires_at: int


def new_session_id() -> str:
    return "sess_" + secrets.token_hex(12)


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
        ownership: CallOwnership,
        rate_limits: RateLimits | None = None,
    ) -> None:
        self._settings = settings
        self._ownership = ownership
        self._sessionmaker = sessionmaker
        self._provider = provider
        self._registry = registry
        self._supervisor = supervisor
        self._metrics = metrics
        self._writes = ShieldedWrites()
        self._deadlines = CallDeadlines(sessionmaker, provider, metrics)
        # Per API key, shared by every instance on PostgreSQL (``rate_limits``).
        self._create_limiter = (rate_limits or RateLimits()).limiter(
            "create", settings.session_create_rate, settings.session_create_burst
        )
        self.quotas = QuotaGuard(sessionmaker, metrics)
        """The spend caps of keys and tenants (:mod:`broker.auth.quotas`)."""
        self._offers = Offers(
            settings,
            sessionmaker,
            provider,
            registry,
            supervisor,
            metrics,
            self._writes,
            self._deadlines,
            ownership,
            self.quotas,
        )
        self._bridge = Bridge(
            dispatcher,
            settings.bridge_wait_timeout,
            self._bridge_at_owner,
            page_sees_function_calls=provider.capabilities.page_sees_function_calls,
        )
        self.trusted = TrustedConnects(
            settings,
            sessionmaker,
            registry,
            supervisor,
            metrics,
            self._writes,
            ownership,
            self.quotas,
        )
        """Trusted server sessions' connects (:mod:`broker.session.trusted`)."""
        self._calls = CallActions(sessionmaker, provider, supervisor, metrics, ownership, registry)
        ownership.bind(self)
        # The supervisor's audit records name the instance watching the call.
        supervisor.instance_id = ownership.instance_id

    # ---- what call ownership asks (broker.call.ownership.CallHost) ------------------------

    async def take_up(
        self, row: SessionRow, fence: Fence, standby: StandbyConnection | None
    ) -> None:
        """Run a call this instance just took (failover, a handoff, a restart).

        Its duration backstop starts again (from the call's original start); a live sideband
        session is attached again with ``resume`` (or takes over the ``standby`` sideband).
        Everything it starts runs under the call's fence.
        """
        assert row.call_id is not None
        with (
            fenced(self._ownership.fence_of_writes(fence)),
            acting_for(self._ownership.action_check(fence)),
        ):
            if row.connection_type == ConnectionType.TRUSTED_SERVER:
                # Its sockets were the lost instance's: no other instance can take them over.
                await end_session(self._sessionmaker, self._metrics, row.id, EndReason.CALL_GONE)
                return
            self._deadlines.watch(row.id, row.call_id, row.max_duration_s, row.live_at)
            if row.state == SessionState.LIVE and row.sideband_enabled:
                logger.info("resuming sideband session_id=%s call_id=%s", row.id, row.call_id)
                self._supervisor.start(
                    row.id,
                    row.call_id,
                    row.tools,
                    provider_session_config(self._registry, row),
                    resume=True,
                    standby=standby,
                    trace_link=row.trace_parent,
                )
                return
        if standby is not None:
            await standby.close()

    async def let_go(self, session_id: str) -> None:
        await self._deadlines.unwatch(session_id)
        await self._supervisor.let_go(session_id)

    async def hand_off(self, session_id: str, successor_id: str) -> bool:
        handed = await self._supervisor.hand_off(
            session_id, successor_id, self._settings.shutdown_grace_s
        )
        if handed:
            await self._deadlines.unwatch(session_id)
        return handed

    async def open_standby(self, row: SessionRow) -> StandbyConnection:
        assert row.call_id is not None
        return await self._supervisor.open_standby(row.id, row.call_id)

    @property
    def deadlines(self) -> CallDeadlines:
        """The calls' duration backstops (a phone call's is armed by :mod:`broker.sip.accept`)."""
        return self._deadlines

    @property
    def call_actions(self) -> CallActions:
        """Hangups, instructions and other actions on running calls (for the approvals)."""
        return self._calls

    async def run_command(self, command: CallCommand) -> dict[str, Any]:
        """An action another instance asked of this one, the call's owner."""
        if command.kind == BRIDGE_COMMAND:
            row = await self.get_row(command.session_id)
            payload = command.payload
            # A redacting tool's arguments come, and its output goes back, sealed.
            outcome = await self._bridge.run_for_peer(
                row, str(payload["call_id"]), str(payload["tool"]), str(payload["arguments"])
            )
            return {
                "call_id": outcome.call_id,
                "tool": outcome.tool,
                "status": outcome.status.value,
                "output": outcome.output,
                "handled_by": outcome.handled_by.value if outcome.handled_by else None,
            }
        return await self._calls.run_command(command)

    async def _bridge_at_owner(
        self, row: SessionRow, call_id: str, tool: str, arguments: str
    ) -> CallOutcome | None:
        """A relayed call for a call another instance owns, run there (``None``: ours)."""
        owner = await self._calls.owner_elsewhere(row.id)
        if owner is None:
            return None
        result = await self._calls.ask_owner(
            row.id,
            owner,
            BRIDGE_COMMAND,
            {"call_id": call_id, "tool": tool, "arguments": arguments},
        )
        handled_by = result.get("handled_by")
        return CallOutcome(
            call_id=str(result["call_id"]),
            tool=str(result["tool"]),
            status=ToolCallStatus(result["status"]),
            output=result.get("output"),
            handled_by=ToolPath(handled_by) if handled_by else None,
        )

    async def drain(self) -> None:
        """Stop the call deadlines; wait for cleanup writes (call before the database closes)."""
        await self._deadlines.close()
        await self._writes.drain()

    async def create(
        self,
        principal: ApiPrincipal,
        request: CreateSessionRequest,
        *,
        trace_parent: str | None = None,
    ) -> CreatedSession:
        """Store a new session and mint its client secret.

        ``trace_parent``: the ``traceparent`` of the span creating it, kept for its call's
        spans to link to (:mod:`broker.tracing`).

        Raises:
            ForbiddenError: the key lacks ``sessions:create`` (``insufficient_scope``), or a
                tool outside its grants (``tool_not_granted``, naming them).
            RateLimitedError: ``rate_limited``: this key created too many sessions just now;
                ``quota_exceeded``: a spend cap of the key or its tenant is reached.
            ValidationFailedError: ``unknown_tool``, ``limit_exceeds_ceiling``,
                ``transcription_model_required``, ``provider_lacks_capability``.
        """
        # A trusted session is a capability of its own: a browser-session key cannot make one.
        principal.require(Scope.SESSIONS_TRUSTED if request.trusted else Scope.SESSIONS_CREATE)
        retry_after = await self._create_limiter.take(principal.key_id)
        if retry_after is not None:
            logger.warning("session create rate limited key_id=%s", principal.key_id)
            raise RateLimitedError(
                "rate_limited",
                "this API key is creating sessions too fast; retry later",
                retry_after=retry_after,
            )
        await self.quotas.check(principal, tenant=request.tenant)
        self._check_tools(principal, request.tools)
        self._check_capabilities(request)
        check_trusted_fields(
            request.trusted,
            service_id=request.service_id,
            server_tools=request.server_tools,
            tools=request.tools,
            sideband=request.sideband,
            provider=self._provider,
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
            connection_type=request.connection_type,
            service_id=request.service_id,
            server_tools=(
                None
                if request.server_tools is None
                else [tool.stored() for tool in request.server_tools]
            ),
            trace_parent=trace_parent,
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
        row.input_transcription = choose(
            request.input_transcription,
            given="input_transcription" in request.model_fields_set,
            default_model=self._settings.input_transcription_model,
        )
        # Every read of the session is scoped by it: the key's tenant, fixed at creation.
        row.tenant_id = await tenant_for_new_session(self._sessionmaker, principal, request.tenant)
        # Counted again with the insert, exactly: racing creations cannot both pass a cap.
        async with self.quotas.consuming(principal.key_id, row.tenant_id) as s:
            s.add(row)
            await audit.add(s, audit_entries.session_created(row))
        self._metrics.session_created(row.tenant_id)
        if request.trusted:
            # The connect token: the client secret's machinery, its own audience and life.
            token, expires_at = mint_client_secret(
                row.id,
                self._settings.signing_key,
                self._settings.trusted_token_ttl_s,
                audience=CONNECT_TOKEN_AUDIENCE,
            )
        else:
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

    def _check_tools(self, principal: ApiPrincipal, tools: Sequence[str]) -> None:
        """The tools a key gives a session (at creation, or a live call's new set).

        Raises:
            ValidationFailedError: ``unknown_tool``: not in the registry.
            ForbiddenError: ``tool_not_granted``: outside the acting key's grants.
        """
        unknown = [name for name in tools if name not in self._registry]
        if unknown:
            raise ValidationFailedError(
                "unknown_tool", f"unknown tool(s): {', '.join(sorted(unknown))}", tools=unknown
            )
        not_granted = sorted(name for name in tools if not principal.may_grant(name))
        if not_granted:
            logger.warning(
                "session tools refused: not granted key_id=%s tools=%s",
                principal.key_id,
                ",".join(not_granted),
            )
            raise ForbiddenError(
                "tool_not_granted",
                f"this API key may not grant tool(s): {', '.join(not_granted)}",
                tools=not_granted,
            )

    def _check_capabilities(self, request: CreateSessionRequest) -> None:
        """Refuse a session that relies on what the provider cannot do.

        Raises:
            ValidationFailedError: ``provider_lacks_capability``, naming the ``capability``.
        """
        capabilities = self._provider.capabilities
        if request.sideband and not capabilities.sideband:
            missing, why = "sideband", 'create the session with "sideband": false'
        elif not request.sideband and request.tools and not capabilities.page_sees_function_calls:
            # A bridge-only session's tools run only when the page relays the model's calls,
            # which this provider never shows it (Azure's webrtcfilter).
            missing, why = (
                "page_sees_function_calls",
                "its page never sees the model's function calls, so a session with tools needs"
                ' "sideband": true',
            )
        else:
            return
        raise ValidationFailedError(
            "provider_lacks_capability",
            f"provider {self._provider.name} cannot serve this session: {why}",
            capability=missing,
            provider=self._provider.name,
        )

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

    async def get_row(self, session_id: str) -> SessionRow:
        async with self._sessionmaker() as s:
            row = await queries.get_session_row(s, session_id)
        if row is None:
            raise NotFoundError("session_not_found", "no such session")
        return row

    async def visible_row(self, principal: ApiPrincipal, session_id: str) -> SessionRow:
        """The session, if it is of a tenant ``principal`` sees.

        Raises:
            NotFoundError: ``session_not_found``: unknown, or another tenant's (whatever the
                key's scopes: a tenant's keys cannot tell another tenant's sessions exist).
        """
        row = await self.get_row(session_id)
        if not principal.sees_tenant(row.tenant_id):
            raise NotFoundError("session_not_found", "no such session")
        return row

    async def detail(
        self, principal: ApiPrincipal, session_id: str
    ) -> tuple[SessionRow, Sequence[ToolCall]]:
        """The session and its tool calls; for the owning key or ``monitor:read``.

        Only of the key's tenant (any tenant's for a cross-tenant key).

        Raises:
            NotFoundError: unknown, another tenant's, or owned by another key without monitor
                scope (no oracle).
        """
        row = await self.visible_row(principal, session_id)
        if row.owner_key_id != principal.key_id:
            try:
                principal.require(Scope.MONITOR_READ)
            except ForbiddenError:
                raise NotFoundError("session_not_found", "no such session") from None
        async with self._sessionmaker() as s:
            calls = await queries.list_tool_calls(s, session_id)
        return row, calls

    async def offer(self, browser: BrowserPrincipal, sdp: str) -> str:
        """The browser's SDP offer; returns the answer (:meth:`Offers.offer`)."""
        return await self._offers.offer(browser, sdp)

    async def bridge_call(
        self, browser: BrowserPrincipal, tool: str, request: BridgeCallRequest
    ) -> CallOutcome:
        """A tool call relayed by the browser (:meth:`Bridge.call`).

        Raises:
            NotFoundError: ``session_not_found``; and as :meth:`Bridge.call`.
        """
        row = await self.get_row(browser.session_id)
        return await self._bridge.call(browser, row, tool, request)

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
        return await self._calls.end_by_browser(row)

    async def end_by_operator(self, principal: ApiPrincipal, session_id: str, why: str) -> None:
        """An operator hangs the call up (``ops_hangup``); the caller checked ``admin``.

        Raises:
            NotFoundError (``session_not_found``: unknown or another tenant's), ConflictError
            (``session_not_live``), UpstreamError (``provider_error``: the provider did not
            hang up).
        """
        row = await self.visible_row(principal, session_id)
        await self._calls.end_by_operator(row, principal.key_id, why)

    async def transfer(self, principal: ApiPrincipal, session_id: str, target_uri: str) -> None:
        """An operator transfers a phone call (SIP ``refer``); the caller checked ``admin``.

        Raises:
            NotFoundError (``session_not_found``: unknown or another tenant's),
            ValidationFailedError (``provider_lacks_capability``: no ``sip_calls``),
            ConflictError (``not_a_phone_call``, ``session_not_live``), UpstreamError
            (``provider_error`` 502, ``provider_timeout`` 504: the call goes on).
        """
        row = await self.visible_row(principal, session_id)
        if not self._provider.capabilities.sip_calls:
            raise ValidationFailedError(
                "provider_lacks_capability",
                f"provider {self._provider.name} has no phone calls to transfer",
                capability="sip_calls",
                provider=self._provider.name,
            )
        await self._calls.transfer(row, principal.key_id, target_uri)

    async def hang_up(self, row: SessionRow, reason: EndReason) -> None:
        """Hang a running call up for a broker decision (a hard spend cap).

        Raises:
            UpstreamError, UnavailableError: as :meth:`CallActions.hang_up`.
        """
        await self._calls.hang_up(row, reason)

    async def reconfigure(
        self,
        principal: ApiPrincipal,
        session_id: str,
        *,
        instructions: str | None = None,
        tools: Sequence[str] | None = None,
    ) -> SessionRow:
        """Change a live call's instructions and/or tools; returns the row as it was before.

        **Who may** (one rule, for ``/config`` and its ``/instructions`` alias): the key that
        created the session, or an ``admin`` key that sees its tenant. New tools must be in
        the registry and within the *acting* key's grants, as at creation; a kill-switched
        tool may be given (the kill switch denies its calls, as for any session).

        Raises:
            NotFoundError (``session_not_found``: unknown or another tenant's), ForbiddenError
            (``insufficient_scope``: neither the owner nor an admin; ``tool_not_granted``),
            ValidationFailedError (``unknown_tool``, ``provider_lacks_capability``),
            ConflictError (``session_not_live``, ``sideband_not_connected``), UpstreamError
            (``provider_refused_update`` 502, ``provider_timeout`` 504).
        """
        row = await self.visible_row(principal, session_id)
        if row.owner_key_id != principal.key_id:
            principal.require(Scope.ADMIN)
        if tools is not None:
            self._check_tools(principal, tools)
        if not self._provider.capabilities.sideband:
            raise ValidationFailedError(
                "provider_lacks_capability",
                f"provider {self._provider.name} has no sideband to change a live call on",
                capability="sideband",
                provider=self._provider.name,
            )
        await self._calls.reconfigure(row, principal.key_id, instructions=instructions, tools=tools)
        return row
