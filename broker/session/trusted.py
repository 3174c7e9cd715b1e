"""Trusted server sessions: created by a ``sessions:trusted`` key, connected by its backend.

A trusted session has no browser. Its backend creates it (``"connection_type":
"trusted_server"``, a ``service_id``, optional ``server_tools``), gets a short-lived, single-use
*connect token* (a client secret of another audience, :data:`CONNECT_TOKEN_AUDIENCE`), and
opens ``GET /api/v1/sessions/{id}/connect`` (:mod:`broker.api.trusted_connect`) with it. Then
the broker opens the provider's WebSocket session (``/v1/realtime?model=…``), sends it the
server-owned session config (the browser calls' builder, plus the server tools), and runs the
call under the sideband supervisor with the backend relayed (:mod:`broker.call.trusted_relay`):
every policy a browser call has applies.

:class:`TrustedConnects` does the connect: every refusal before the WebSocket upgrade
(problem+json), then the relay until either side closes.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.audit import trail as audit
from broker.audit.records import Actor, AuditEntry, AuditKind
from broker.auth.principals import BrowserPrincipal
from broker.auth.quotas import QuotaGuard
from broker.call.ownership import CallOwnership, acting_for
from broker.call.supervisor import SidebandSupervisor
from broker.call.trusted_dial import Preamble, ProviderSocket
from broker.call.trusted_relay import ServerToolExecutor, TrustedLink, TrustedRelay
from broker.db import queries
from broker.db.fence import LeaseLostError, fenced
from broker.db.models import ConnectionType, SessionRow, SessionState
from broker.db.shielded import ShieldedWrites
from broker.errors import (
    ConflictError,
    NotFoundError,
    UnauthorizedError,
    UnavailableError,
    UpstreamError,
    ValidationFailedError,
)
from broker.metrics import BrokerMetrics
from broker.session.claim import claim_session, record_live, unspent_session
from broker.session.end_reason import EndReason
from broker.session.ending import end_session
from broker.session.offer import provider_session_config
from broker.settings import Settings
from broker.tools.registry import ToolConfigError, ToolRegistry, parameters_validator
from broker.tools.server_tools import (
    MAX_SERVER_TOOL_TIMEOUT,
    SessionTools,
    server_tool_specs,
)
from sideband import (
    Provider,
    ProviderError,
    ProviderTimeoutError,
    ProviderUnreachableError,
    SidebandError,
)

logger = logging.getLogger(__name__)

SERVICE_ID_PATTERN: Final = r"^[A-Za-z0-9._:-]+$"
TOOL_NAME_PATTERN: Final = r"^[a-zA-Z0-9_-]{1,64}$"
WRITER_FLUSH_S: Final = 2.0
"""How long the events queued for the backend may take to go out once the call ended."""
CALL_END_WAIT_S: Final = 15.0
"""How long a backend's disconnect waits for the call to be wound up."""
CALL_ID_PREFIX: Final = "ws_"
"""The call id a trusted session's provider socket is known by (the provider gives none)."""


class ServerTool(BaseModel):
    """One of a trusted session's ``server_tools``: run by its backend, decided by the broker."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(pattern=TOOL_NAME_PATTERN)
    description: str = Field(default="", max_length=1024)
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    """JSON Schema 2020-12 of the arguments, checked as the tools file's are."""
    timeout: float | None = Field(default=None, gt=0, le=MAX_SERVER_TOOL_TIMEOUT)
    """Seconds the broker waits for the backend's result (default
    ``BROKER_TRUSTED_TOOL_TIMEOUT_S``)."""

    @field_validator("parameters")
    @classmethod
    def _schema(cls, parameters: dict[str, Any]) -> dict[str, Any]:
        try:
            parameters_validator("server tool", parameters)
        except ToolConfigError as exc:
            raise ValueError(str(exc).removeprefix("server tool: ")) from None
        return parameters

    def stored(self) -> dict[str, Any]:
        """As ``sessions.server_tools`` keeps it."""
        return self.model_dump(exclude_none=True)


def unique_names(tools: list[ServerTool]) -> list[ServerTool]:
    """``server_tools`` names are unique (a validator of the create request)."""
    names = [tool.name for tool in tools]
    if len(set(names)) != len(names):
        raise ValueError("server tool names must be unique")
    return tools


def trusted_session_config(registry: ToolRegistry, row: SessionRow) -> dict[str, Any]:
    """The server-owned config of a trusted session: a browser call's, plus its server tools."""
    config = provider_session_config(registry, row)
    config["tools"] = [
        *config["tools"],
        *(
            {
                "type": "function",
                "name": tool["name"],
                "description": tool.get("description", ""),
                "parameters": tool.get("parameters") or {"type": "object", "properties": {}},
            }
            for tool in row.server_tools or ()
        ),
    ]
    return config


@dataclass
class Opened:
    """A trusted session whose provider socket is open and configured, before the upgrade."""

    row: SessionRow
    call_id: str
    connection: ProviderSocket
    config: dict[str, Any]
    preamble: Preamble
    lease_token: int
    granted_at: float


class TrustedConnects:
    """The backends' connects of trusted sessions (one per app, in the session service)."""

    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        registry: ToolRegistry,
        supervisor: SidebandSupervisor,
        metrics: BrokerMetrics,
        writes: ShieldedWrites,
        ownership: CallOwnership,
        quotas: QuotaGuard,
    ) -> None:
        self._settings = settings
        self._sessionmaker = sessionmaker
        self._registry = registry
        self._supervisor = supervisor
        self._metrics = metrics
        self._writes = writes
        self._ownership = ownership
        self._quotas = quotas
        self._live: dict[str, tuple[str, asyncio.Event]] = {}
        """Sessions whose backend is connected here: their call id, set once relayed out."""

    async def open(self, token: BrowserPrincipal) -> Opened:
        """Spend the connect token, open the provider's session and configure it.

        Raises:
            UnauthorizedError: ``token_replayed`` (checked first).
            NotFoundError: ``session_not_found``.
            ConflictError: ``not_trusted_session`` (a browser session),
                ``session_already_connected``, ``session_ended``.
            RateLimitedError: ``quota_exceeded`` (live calls cap).
            UnavailableError: ``shutting_down``.
            UpstreamError: ``provider_error``: the provider's session could not be opened or
                configured; the session fails (``offer_failed``).
        """
        session_id = token.session_id
        if self._supervisor.stopping:
            raise UnavailableError("shutting_down", "this broker is shutting down; retry")
        replayed = partial(_replayed, session_id)
        row = await unspent_session(self._sessionmaker, token, replayed)
        if row is None:
            raise NotFoundError("session_not_found", "no such session")
        _check_connectable(row)
        await self._quotas.check_live(row.owner_key_id, row.tenant_id)
        await claim_session(
            self._sessionmaker,
            token,
            replayed=replayed,
            taken=lambda: ConflictError(
                "session_already_connected", "the session is already connected"
            ),
            # Counted again with the claim, exactly: racing connects cannot both pass the cap.
            transaction=partial(self._quotas.consuming_live, row.owner_key_id, row.tenant_id),
        )
        call_id = CALL_ID_PREFIX + secrets.token_hex(12)
        config = trusted_session_config(self._registry, row)
        try:
            connection, preamble = await self._supervisor.dial_trusted(
                session_id, row.model, call_id, config
            )
        except (SidebandError, TimeoutError) as exc:
            detail = _dial_failure(exc)
            logger.warning("trusted session not opened session_id=%s: %s", session_id, detail)
            await self._writes.run(self._fail(session_id, detail), "trusted-fail")
            raise UpstreamError(
                "provider_error", "the provider's realtime session could not be opened"
            ) from None
        except BaseException:
            await self._writes.run(self._fail(session_id, "not opened"), "trusted-fail")
            raise
        try:
            granted_at = time.monotonic()
            lease = await record_live(
                self._sessionmaker,
                self._ownership,
                session_id,
                call_id,
                AuditEntry(
                    AuditKind.TRUSTED_CONNECTED,
                    Actor.key(row.owner_key_id),
                    {
                        "call_id": call_id,
                        "service_id": row.service_id,
                        "provider": row.provider,
                        "server_tools": [t["name"] for t in row.server_tools or ()],
                        "instance_id": self._ownership.instance_id,
                    },
                    session_id=session_id,
                ),
                "connect",
            )
        except BaseException:
            await connection.close()
            await self._writes.run(self._fail(session_id, "not recorded"), "trusted-fail")
            raise
        row.state, row.call_id = SessionState.LIVE, call_id
        logger.info("trusted session connected session_id=%s call_id=%s", session_id, call_id)
        return Opened(row, call_id, connection, config, preamble, lease, granted_at)

    async def abandon(self, opened: Opened) -> None:
        """The upgrade failed after the provider socket opened: close it, end the session."""
        await opened.connection.close()
        await end_session(
            self._sessionmaker, self._metrics, opened.row.id, EndReason.BACKEND_CLOSED
        )

    async def run(self, opened: Opened, ws: web.WebSocketResponse) -> None:
        """Relay between the backend's ``ws`` and the call until either side ends it."""
        row = opened.row
        relay = TrustedRelay(
            row.id, ws, self._metrics.trusted, queue_size=self._settings.trusted_relay_queue
        )
        executor = ServerToolExecutor(relay, self._sessionmaker, row.service_id)
        tools = SessionTools(
            self._registry,
            server_tool_specs(
                row.server_tools or [], executor, self._settings.trusted_tool_timeout_s
            ),
        )
        link = TrustedLink(opened.connection, relay, tools, opened.preamble)
        fence = self._ownership.hold(row.id, opened.lease_token, opened.granted_at)
        with (
            fenced(self._ownership.fence_of_writes(fence)),
            acting_for(self._ownership.action_check(fence)),
        ):
            self._supervisor.start_trusted(
                row.id, opened.call_id, [*row.tools, *tools.own], opened.config, link
            )
        call = self._supervisor.task_of(row.id)
        relayed = asyncio.Event()
        self._live[row.id] = (opened.call_id, relayed)
        self._metrics.trusted.connected(1)
        writer = asyncio.create_task(relay.write(), name=f"trusted-writer:{row.id}")
        reader = asyncio.create_task(relay.read(), name=f"trusted-reader:{row.id}")
        why = "session_ended"
        try:
            if call is None:
                # The broker began stopping meanwhile: the call never ran.
                await opened.connection.close()
                await end_session(
                    self._sessionmaker, self._metrics, row.id, EndReason.BROKER_STOPPED
                )
            else:
                # The backend is gone when its socket closed (the reader ends) or when it can
                # be sent nothing more (too slow, or a failed send) while it still sends.
                gone = asyncio.ensure_future(relay.gone.wait())
                try:
                    await asyncio.wait({call, reader, gone}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    gone.cancel()
                if not call.done():
                    why = "backend_too_slow" if relay.too_slow else "backend_closed"
                    await self._end_call(row.id, opened.call_id, call, too_slow=relay.too_slow)
            # What the call said last still goes out, briefly; then the backend's socket shuts.
            relay.finish()
            await asyncio.wait({writer}, timeout=WRITER_FLUSH_S)
        finally:
            if call is not None and not call.done():
                # This handler was cancelled (a shutdown past its bound): the call must not
                # outlive the backend's socket.
                await self._writes.run(
                    self._end_call(row.id, opened.call_id, call, too_slow=False), "trusted-end"
                )
            self._live.pop(row.id, None)
            relayed.set()
            self._metrics.trusted.connected(-1)
            for task in (writer, reader):
                task.cancel()
            await asyncio.gather(writer, reader, return_exceptions=True)
            await ws.close(code=1008 if relay.too_slow else 1000, message=why.encode()[:120])
            await self._writes.run(self._disconnected(row.id, why), "trusted-disconnected")

    async def close(self, wait: float = CALL_END_WAIT_S) -> None:
        """The broker is stopping: end every trusted session connected here.

        And wait (up to ``wait`` s) for their sockets to close. Called as the app shuts down,
        before the server waits for its handlers: a backend's socket is a handler that would
        otherwise hold the shutdown up until it is cancelled.
        """
        live = list(self._live.items())
        if live:
            logger.info("ending %d trusted session(s): the broker is stopping", len(live))
        for session_id, (call_id, _) in live:
            try:
                await self._supervisor.end_call(session_id, call_id, EndReason.BROKER_STOPPED)
            except KeyError:
                continue  # its call already ended: its relay is closing
        if live:
            await asyncio.wait(
                [asyncio.ensure_future(done.wait()) for _, (_, done) in live], timeout=wait
            )

    async def _end_call(
        self, session_id: str, call_id: str, call: asyncio.Task[None], *, too_slow: bool
    ) -> None:
        """The backend went: end the call (the provider socket closes) and wait for it."""
        reason = EndReason.BACKEND_TOO_SLOW if too_slow else EndReason.BACKEND_CLOSED
        try:
            await self._supervisor.end_call(session_id, call_id, reason)
        except KeyError:
            # Still setting up: it has nothing to drain; its end is recorded as the socket's.
            call.cancel()
        await asyncio.wait({call}, timeout=CALL_END_WAIT_S)

    async def _disconnected(self, session_id: str, why: str) -> None:
        body: dict[str, Any] = {"reason": why}
        try:
            if why == "session_ended":
                # The call ended first: a reviewer wants to know why (an operator, the leash,
                # the provider), which the session's end already says.
                async with self._sessionmaker() as s:
                    row = await queries.get_session_row(s, session_id)
                body["end_reason"] = row.end_reason if row is not None else None
            await audit.append(
                self._sessionmaker,
                AuditEntry(
                    AuditKind.TRUSTED_DISCONNECTED,
                    Actor.BROKER,
                    body,
                    session_id=session_id,
                ),
            )
        except (SQLAlchemyError, LeaseLostError) as exc:
            logger.error(
                "audit record not written session_id=%s kind=trusted.disconnected error=%s",
                session_id,
                type(exc).__name__,
            )

    async def _fail(self, session_id: str, detail: str) -> None:
        await end_session(
            self._sessionmaker,
            self._metrics,
            session_id,
            EndReason.OFFER_FAILED,
            detail=f"trusted connect: {detail}",
            from_states=(SessionState.OFFERED, SessionState.LIVE),
        )


def _replayed(session_id: str) -> UnauthorizedError:
    logger.warning("connect token replayed session_id=%s", session_id)
    return UnauthorizedError("token_replayed", "this connect token was already used")


def _check_connectable(row: SessionRow) -> None:
    """Raises ConflictError unless ``row`` is a trusted session waiting for its backend."""
    if row.connection_type != ConnectionType.TRUSTED_SERVER:
        raise ConflictError(
            "not_trusted_session", "only a trusted server session is connected this way"
        )
    if row.state in (SessionState.ENDED, SessionState.FAILED):
        raise ConflictError("session_ended", f"the session is {row.state}", state=row.state)
    if row.state != SessionState.CREATED:
        raise ConflictError(
            "session_already_connected", "the session is already connected", state=row.state
        )


def _dial_failure(exc: BaseException) -> str:
    """A log-safe description of why the provider's session could not be opened."""
    if isinstance(exc, TimeoutError):
        return "no answer to the session config"
    if isinstance(exc, ProviderTimeoutError | ProviderUnreachableError | ProviderError):
        return str(exc)
    return type(exc).__name__


def check_trusted_fields(
    trusted: bool,
    *,
    service_id: str | None,
    server_tools: list[ServerTool] | None,
    tools: list[str],
    sideband: bool,
    provider: Provider,
) -> None:
    """The create request's trusted-session fields, against its connection type and provider.

    Raises:
        ValidationFailedError: ``trusted_fields_on_webrtc`` (``service_id``/``server_tools`` on
            a browser session), ``service_id_required``, ``sideband_required`` (a trusted
            session's provider socket is its sideband), ``server_tool_name_clash`` (a server
            tool named like one of the session's registry ``tools``, naming them),
            ``provider_lacks_capability`` (``websocket_sessions``).
    """
    if not trusted:
        given = [
            name
            for name, value in (("service_id", service_id), ("server_tools", server_tools))
            if value is not None
        ]
        if given:
            raise ValidationFailedError(
                "trusted_fields_on_webrtc",
                f"{' and '.join(given)} are for trusted server sessions only"
                ' ("connection_type": "trusted_server")',
                fields=given,
            )
        return
    if service_id is None:
        raise ValidationFailedError(
            "service_id_required", "a trusted server session names its service (service_id)"
        )
    if not sideband:
        raise ValidationFailedError(
            "sideband_required",
            "a trusted server session always runs under the broker's watch"
            ' (its provider socket is its sideband); leave "sideband" out',
        )
    clash = sorted({tool.name for tool in server_tools or ()} & set(tools))
    if clash:
        raise ValidationFailedError(
            "server_tool_name_clash",
            f"server tool(s) named like the session's tools: {', '.join(clash)}",
            tools=clash,
        )
    if not provider.capabilities.websocket_sessions:
        raise ValidationFailedError(
            "provider_lacks_capability",
            f"provider {provider.name} cannot serve this session: it has no WebSocket"
            " sessions, which a trusted server session needs",
            capability="websocket_sessions",
            provider=provider.name,
        )
