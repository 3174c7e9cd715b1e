"""Acting on a running call from outside: the page hangs up, an operator hangs up or reconfigures.

Both hangups take one path (:meth:`CallActions.hang_up`): a call this process supervises is
ended by its supervisor, like a leash decision (no tool call runs from then on, and the
supervisor records the end once the sideband closes); any other call (bridge-only, degraded,
with no instance holding it) is hung up here and its session ended at once. A call another
broker instance owns is asked of that instance (:class:`~broker.call.ownership.CallOwnership`),
which does the same there. Each action is then written to the session's event log for the
audit.

A reconfiguration (new instructions and/or tools, :meth:`CallActions.reconfigure`) is sent on
the call's sideband by the instance that supervises it, which waits for the provider's answer;
only a change the provider took is stored, with its event and audit record.

A phone call's transfer (:meth:`CallActions.transfer`, SIP ``refer``) is asked of the provider
by the instance that supervises the call; once the provider took it, the operator's
``call.referred`` record and the ``broker.transfer`` event are written and the session ends as
``transferred`` (the provider ends the call; the sideband's close that follows is its
consequence, not a failure).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.audit import trail as audit
from broker.audit.records import Actor
from broker.call.ownership import CallOwnership
from broker.call.supervisor import SidebandSupervisor
from broker.db import queries
from broker.db.models import (
    CALL_RUNNING_STATES,
    CallCommand,
    CallCommandStatus,
    ConnectionType,
    SessionRow,
)
from broker.errors import (
    ConflictError,
    NotFoundError,
    RelayedError,
    UnavailableError,
    UpstreamError,
    ValidationFailedError,
)
from broker.metrics import BrokerMetrics
from broker.record.event_classes import EventClass
from broker.record.event_log import append_event
from broker.session import audit_entries
from broker.session.end_reason import EndReason
from broker.session.ending import end_session, end_unwatched_call
from broker.session.trusted import trusted_session_config
from broker.tools.registry import ToolRegistry
from sideband import (
    ConfigOutcome,
    Provider,
    ProviderError,
    ProviderTimeoutError,
    ProviderUnreachableError,
)

logger = logging.getLogger(__name__)

BROWSER_HANGUP_EVENT: Final = "broker.browser_hangup"
OPS_HANGUP_EVENT: Final = "broker.ops_hangup"
CONFIG_EVENT: Final = "broker.config_updated"
TRANSFER_EVENT: Final = "broker.transfer"
HANGUP_COMMAND: Final = "hangup"
CONFIG_COMMAND: Final = "config"
INSTRUCTIONS_COMMAND: Final = "instructions"
"""What an instance of before reconfiguration asks for instead of :data:`CONFIG_COMMAND`
(instructions only); still honoured."""
TRANSFER_COMMAND: Final = "transfer"
APPROVAL_COMMAND: Final = "approval"
"""An operator's decision on a held tool call (:mod:`broker.session.approvals`)."""


class CallActions:
    """Hangups and reconfigurations of running calls (one per app, in the session service)."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        provider: Provider,
        supervisor: SidebandSupervisor,
        metrics: BrokerMetrics,
        ownership: CallOwnership,
        registry: ToolRegistry,
    ) -> None:
        self._registry = registry
        self._sessionmaker = sessionmaker
        self._provider = provider
        self._supervisor = supervisor
        self._metrics = metrics
        self._ownership = ownership
        self.approvals: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]] | None = None
        """Carries out an approval decision here, the call's owner (set by the approvals)."""

    async def owner_elsewhere(self, session_id: str) -> str | None:
        """The other instance that owns the call now (``None``: this one, or none does)."""
        if self._ownership.owns(session_id):
            return None
        async with self._sessionmaker() as s:
            lease = await queries.lease_of(s, session_id)
        if lease is None or lease.owner_id == self._ownership.instance_id:
            return None
        return lease.owner_id

    async def ask_owner(
        self, session_id: str, owner_id: str, kind: str, payload: dict[str, Any]
    ) -> dict[str, Any]:
        """Have the owning instance do it; its refusal is raised here as it was there.

        Raises:
            BrokerError: the owner's refusal, or ``owner_unavailable`` (503) if it did not
                answer in time.
        """
        logger.info(
            "asking the call's owner session_id=%s owner=%s action=%s", session_id, owner_id, kind
        )
        try:
            command = await self._ownership.ask_owner(session_id, owner_id, kind, payload)
        except TimeoutError:
            raise UnavailableError(
                "owner_unavailable", "the broker instance that owns this call did not answer"
            ) from None
        result = command.result or {}
        if command.status == CallCommandStatus.DONE:
            return result
        raise RelayedError(
            int(result.get("status", 500)),
            str(result.get("code", "owner_failed")),
            str(result.get("detail", "the broker instance that owns this call refused")),
        )

    async def run_command(self, command: CallCommand) -> dict[str, Any]:
        """Do what another instance asked of this one, the call's owner."""
        async with self._sessionmaker() as s:
            row = await queries.get_session_row(s, command.session_id)
        if row is None:
            raise NotFoundError("session_not_found", "no such session")
        if command.kind == HANGUP_COMMAND:
            if row.state not in CALL_RUNNING_STATES or row.call_id is None:
                return {"ended": False}
            actor = command.payload.get("actor")
            await self._hang_up_here(
                row, EndReason(command.payload["reason"]), None if actor is None else str(actor)
            )
            return {"ended": True}
        if command.kind in (CONFIG_COMMAND, INSTRUCTIONS_COMMAND):
            payload = command.payload
            tools = payload.get("tools")
            instructions = payload.get("instructions")
            await self._reconfigure_here(
                row,
                str(payload["by"]),
                instructions=None if instructions is None else str(instructions),
                tools=None if tools is None else [str(name) for name in tools],
            )
            return {}
        if command.kind == TRANSFER_COMMAND:
            await self._transfer_here(
                row, str(command.payload["by"]), str(command.payload["target_uri"])
            )
            return {}
        if command.kind == APPROVAL_COMMAND and self.approvals is not None:
            return await self.approvals(command.payload)
        raise ValueError(f"unknown command {command.kind!r}")

    async def hang_up(self, row: SessionRow, reason: EndReason, actor: str | None = None) -> None:
        """Hang up the session's running call and end the session for ``reason``.

        ``actor``: who ends it, for its ``session.ended`` audit record (default: as the reason
        says).

        Raises:
            UpstreamError: ``provider_error``: the provider did not hang up; the call goes on.
        """
        assert row.call_id is not None and row.state in CALL_RUNNING_STATES
        owner = await self.owner_elsewhere(row.id)
        if owner is not None:
            await self.ask_owner(
                row.id, owner, HANGUP_COMMAND, {"reason": reason.value, "actor": actor}
            )
            return
        await self._hang_up_here(row, reason, actor)

    async def _hang_up_here(
        self, row: SessionRow, reason: EndReason, actor: str | None = None
    ) -> None:
        assert row.call_id is not None
        try:
            hung_up = await self._supervisor.end_call(row.id, row.call_id, reason, actor)
        except KeyError:
            hung_up = await end_unwatched_call(
                self._sessionmaker,
                self._provider,
                self._metrics,
                row.id,
                row.call_id,
                reason,
                actor,
            )
        if not hung_up:
            raise UpstreamError("provider_error", "the provider did not hang up; the call goes on")

    async def end_by_browser(self, row: SessionRow) -> bool:
        """The page hung up (``hangup``); ``False`` if the call had already ended.

        Raises:
            UpstreamError: ``provider_error`` (see :meth:`hang_up`).
        """
        if row.state not in CALL_RUNNING_STATES or row.call_id is None:
            return False
        await self.hang_up(row, EndReason.HANGUP)
        await append_event(self._sessionmaker, row.id, {"type": BROWSER_HANGUP_EVENT})
        logger.info("call ended by the page session_id=%s call_id=%s", row.id, row.call_id)
        return True

    async def end_by_operator(self, row: SessionRow, by_key: str, why: str) -> None:
        """An operator (key ``by_key``) hung up, saying ``why`` (``ops_hangup``).

        Raises:
            ConflictError: ``session_not_live``: no call is running.
            UpstreamError: ``provider_error`` (see :meth:`hang_up`).
        """
        if row.state not in CALL_RUNNING_STATES or row.call_id is None:
            raise ConflictError("session_not_live", f"the session is {row.state}, not in a call")
        # Audited before it is carried out: the record is the operator's order (its effect is
        # the session.ended that follows, by the same key); a hangup the provider refuses
        # (502, the call goes on) leaves the order recorded and no end.
        await audit.append(
            self._sessionmaker, audit_entries.ops_hangup(row.id, by_key, why, row.call_id)
        )
        await self.hang_up(row, EndReason.OPS_HANGUP, Actor.key(by_key))
        # Recorded either way: the operator acted, even if the call ended on its own meanwhile.
        await append_event(
            self._sessionmaker,
            row.id,
            {"type": OPS_HANGUP_EVENT, "reason": why, "by": by_key},
            EventClass.KEPT,
        )
        logger.warning(
            "call hung up by an operator session_id=%s call_id=%s by_key=%s",
            row.id,
            row.call_id,
            by_key,
        )

    async def reconfigure(
        self,
        row: SessionRow,
        by_key: str,
        *,
        instructions: str | None = None,
        tools: Sequence[str] | None = None,
    ) -> None:
        """Send a live call's new instructions and/or tools on its sideband; store and audit.

        The instance supervising the call does it (another instance's is asked). Nothing is
        stored unless the provider's ``session.updated`` carries the new config.

        Raises:
            ConflictError: ``session_not_live``; ``sideband_not_connected``: no sideband
                can send it.
            UpstreamError: ``provider_refused_update`` (502): the provider refused it or
                answered without it; ``provider_timeout`` (504): no answer in time. Either
                way the call keeps its old config.
        """
        _require_live(row)
        owner = await self.owner_elsewhere(row.id)
        if owner is not None:
            await self.ask_owner(
                row.id,
                owner,
                CONFIG_COMMAND,
                {
                    "by": by_key,
                    "instructions": instructions,
                    "tools": None if tools is None else list(tools),
                },
            )
            return
        await self._reconfigure_here(row, by_key, instructions=instructions, tools=tools)

    async def _reconfigure_here(
        self,
        row: SessionRow,
        by_key: str,
        *,
        instructions: str | None,
        tools: Sequence[str] | None,
    ) -> None:
        _require_live(row)
        definitions: dict[str, Mapping[str, Any]] | None = None
        if tools is not None:
            unknown = sorted(name for name in tools if name not in self._registry)
            if unknown:
                # This instance's registry (another instance's asked it) lacks one.
                raise ValidationFailedError(
                    "unknown_tool", f"unknown tool(s): {', '.join(unknown)}", tools=unknown
                )
            definitions = {name: self._registry[name].provider_definition() for name in tools}
            if row.server_tools:
                # A trusted session's own tools are not the registry's to change: they stay
                # offered (and allowed) whatever the new set.
                own = {str(tool["name"]) for tool in row.server_tools}
                for definition in trusted_session_config(self._registry, row)["tools"]:
                    if definition["name"] in own:
                        definitions[definition["name"]] = definition
        try:
            outcome = await self._supervisor.update_config(
                row.id, instructions=instructions, tools=definitions
            )
        except KeyError:
            outcome = ConfigOutcome.UNSENT
        if outcome is ConfigOutcome.UNSENT:
            raise ConflictError(
                "sideband_not_connected", "the call has no connected sideband to send this on"
            )
        if outcome is ConfigOutcome.REFUSED:
            raise UpstreamError(
                "provider_refused_update",
                "the provider did not apply the new config; the call keeps its old one",
            )
        if outcome is ConfigOutcome.TIMEOUT:
            raise UpstreamError(
                "provider_timeout",
                "the provider did not confirm the new config in time; the call keeps its old one",
                timeout=True,
            )
        new_instructions = row.instructions if instructions is None else instructions
        new_tools = list(row.tools) if tools is None else list(tools)
        entry = audit_entries.session_reconfigured(
            row.id,
            by_key,
            tools=(list(row.tools), new_tools),
            instructions=(row.instructions, new_instructions),
        )

        async def store(s: AsyncSession) -> None:
            await queries.set_config(s, row.id, new_instructions, new_tools)
            await audit.add(s, entry)

        event: dict[str, Any] = {"type": CONFIG_EVENT, "by": by_key}
        if instructions is not None:
            event["instructions"] = instructions
        if tools is not None:
            event["tools"] = new_tools
            event["tools_before"] = list(row.tools)
        # The change, its audit event and its audit record in one transaction: none without
        # the others.
        await append_event(self._sessionmaker, row.id, event, EventClass.KEPT, alongside=store)
        logger.warning(
            "call reconfigured session_id=%s by_key=%s instructions_chars=%s tools=%s",
            row.id,
            by_key,
            "-" if instructions is None else len(instructions),
            "-" if tools is None else ",".join(new_tools),
        )

    async def transfer(self, row: SessionRow, by_key: str, target_uri: str) -> None:
        """Transfer a live phone call to ``target_uri`` (SIP ``refer``) for key ``by_key``.

        The instance supervising the call asks the provider (another instance's is asked to).
        Only once the provider took the refer are ``call.referred`` and the ``broker.transfer``
        event written and the session ended as ``transferred``.

        Raises:
            ConflictError: ``not_a_phone_call``; ``session_not_live``.
            UpstreamError: ``provider_error`` (502): the provider refused the refer;
                ``provider_timeout`` (504). Either way the call goes on, unchanged.
        """
        _require_phone_call(row)
        _require_live(row)
        owner = await self.owner_elsewhere(row.id)
        if owner is not None:
            await self.ask_owner(
                row.id, owner, TRANSFER_COMMAND, {"by": by_key, "target_uri": target_uri}
            )
            return
        await self._transfer_here(row, by_key, target_uri)

    async def _transfer_here(self, row: SessionRow, by_key: str, target_uri: str) -> None:
        _require_phone_call(row)
        _require_live(row)
        call_id = row.call_id
        assert call_id is not None
        actor = Actor.key(by_key)

        async def record() -> None:
            entry = audit_entries.call_referred(row.id, by_key, call_id, target_uri)

            async def store(s: AsyncSession) -> None:
                await audit.add(s, entry)

            # The record and its event in one transaction: neither without the other.
            await append_event(
                self._sessionmaker,
                row.id,
                {"type": TRANSFER_EVENT, "target_uri": target_uri, "by": by_key},
                EventClass.KEPT,
                alongside=store,
            )

        try:
            try:
                transferred = await self._supervisor.transfer_call(
                    row.id, call_id, target_uri, actor, record
                )
            except KeyError:
                # No sideband of this process watches it (degraded): refer, record, end here.
                await self._provider.refer_call(call_id, target_uri)
                await record()
                await end_session(
                    self._sessionmaker, self._metrics, row.id, EndReason.TRANSFERRED, actor=actor
                )
                transferred = True
        except ProviderTimeoutError:
            raise UpstreamError(
                "provider_timeout",
                "the provider did not answer the transfer in time; the call goes on",
                timeout=True,
            ) from None
        except (ProviderError, ProviderUnreachableError) as exc:
            # A refusal (4xx, the call gone: 404), a 5xx, no capability, or no connection.
            logger.warning("transfer refused session_id=%s call_id=%s: %s", row.id, call_id, exc)
            raise UpstreamError(
                "provider_error", "the provider did not transfer the call; the call goes on"
            ) from None
        if not transferred:
            raise ConflictError("session_not_live", "the call is already ending")
        logger.warning(
            "call transferred by an operator session_id=%s call_id=%s by_key=%s",
            row.id,
            call_id,
            by_key,
        )


def _require_phone_call(row: SessionRow) -> None:
    if row.connection_type != ConnectionType.SIP:
        raise ConflictError(
            "not_a_phone_call",
            "only a phone call (connection_type sip) can be transferred",
            connection_type=row.connection_type,
        )


def _require_live(row: SessionRow) -> None:
    if row.state not in CALL_RUNNING_STATES or row.call_id is None:
        raise ConflictError(
            "session_not_live", f"the session is {row.state}, not in a call", state=row.state
        )
