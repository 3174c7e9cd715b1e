"""The ``tool_calls`` rows of the pipeline: each call recorded once, settled once, recovered.

Every write here is conditional on the row's status (``pending → running`` for one claimant,
a settle only from ``running``), which is what keeps a call from running or being answered
twice whichever path reports it; :class:`broker.tools.dispatch.ToolDispatcher` builds the
pipeline on these rows.

Each row change is audited in its own transaction (:mod:`broker.tools.audit`): one more
``INSERT`` into the trail's outbox, and only when the change happened. A tool's ``redact``
fields are kept as keyed hashes in the row, in clear only sealed
(:mod:`broker.tools.redaction`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any, Final

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from broker.audit import trail
from broker.audit.records import AuditEntry
from broker.audit.redaction import FieldRedactor, SealError
from broker.db import queries
from broker.db.models import ToolCall, ToolCallStatus, ToolPath, utcnow
from broker.db.shielded import ShieldedWrites
from broker.db.write_gate import WriteGate
from broker.tools import audit
from broker.tools.call_ids import MAX_CALL_ID, is_valid_call_id
from broker.tools.codes import ToolErrorCode
from broker.tools.outcome import BROKER_ERROR, BROKER_ERROR_OUTPUT, CallOutcome, CallRejectedError
from broker.tools.policy import error_output
from broker.tools.redaction import CallRedaction
from broker.tools.registry import ToolRegistry, ToolSpec
from broker.tools.waiters import SettledWaiters
from sideband.events import new_item_id

logger = logging.getLogger(__name__)

MAX_RECORDED_CALLS: Final = 1000  # per session, denied ones included
MAX_TOOL_NAME: Final = 100
CALL_ID_RULE: Final = f"call ids are 1-{MAX_CALL_ID} characters from A-Z, a-z, 0-9, _, . and -"


def elapsed_ms(started: float) -> int:
    """Whole milliseconds since ``started`` (a :func:`time.perf_counter` reading)."""
    return int((time.perf_counter() - started) * 1000)


def checked_tool_name(call_id: str, tool: str) -> str:
    """The tool name as recorded; raises :class:`CallRejectedError` for an invalid call id."""
    if not is_valid_call_id(call_id):
        raise CallRejectedError(str(ToolErrorCode.CALL_ID_INVALID), CALL_ID_RULE)
    # A tool name longer than any registered one is kept (truncated) for the record; the
    # policy decision uses the full name and denies it.
    return tool[:MAX_TOOL_NAME]


async def record_call(
    s: queries.Executor,
    redaction: CallRedaction,
    session_id: str,
    call_id: str,
    tool: str,
    arguments: str,
    seen_by: ToolPath,
    response_id: str | None,
    item_id: str | None,
) -> AuditEntry | None:
    """Insert the call as ``pending`` unless it exists.

    Returns its ``tool.requested`` record if this inserted it (for the caller to add in
    ``s``, with any other record of the transaction), else ``None``.

    Raises:
        CallRejectedError: the session already has :data:`MAX_RECORDED_CALLS`.
    """
    shown, sealed = redaction.stored(session_id, call_id, tool, arguments)
    item_id = item_id[:MAX_CALL_ID] if item_id else None
    inserted = await queries.record_tool_call(
        s,
        session_id=session_id,
        call_id=call_id,
        tool=tool,
        arguments=shown,
        arguments_sealed=sealed,
        seen_by=seen_by,
        response_id=response_id,
        item_id=item_id,
        max_calls=MAX_RECORDED_CALLS,
    )
    if inserted is None:
        # Denied calls cost no budget, so without this a browser on the bridge
        # could make a session store rows (each with its arguments) without end.
        raise CallRejectedError(
            "too_many_tool_calls",
            f"a session records at most {MAX_RECORDED_CALLS} tool calls",
        )
    if not inserted:
        return None
    return audit.requested(session_id, call_id, tool, shown, seen_by, response_id, item_id)


class CallLedger:
    """Records, settles and reads a broker's tool calls; wakes those waiting on them.

    ``redactor`` keys the redacted fields' hashes and seals their raw values; without one, a
    registry with any ``redact`` field is refused (``ValueError``), never stored in clear.
    """

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        registry: ToolRegistry,
        redactor: FieldRedactor | None = None,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._registry = registry
        self._redaction = CallRedaction(registry, redactor)
        self._waiters = SettledWaiters(self.get)
        self._writes = ShieldedWrites()
        # The hot path's Core statements go straight to a connection when the sessionmaker
        # is bound to an engine: an ORM session adds nothing to them but its own upkeep.
        bind = sessionmaker.kw.get("bind")
        self._engine = bind if isinstance(bind, AsyncEngine) else None

    def spec(self, tool: str) -> ToolSpec | None:
        """The registry's tool of that name, if any (an acknowledgement is planned from it)."""
        return self._registry.get(tool)

    async def acknowledged(
        self, session_id: str, call_id: str, tool: str, response_id: str | None
    ) -> None:
        """Audit that the model was asked to say a long call is under way."""
        await trail.append(
            self._sessionmaker, audit.acknowledged(session_id, call_id, tool, response_id)
        )

    @contextlib.asynccontextmanager
    async def _begin(self) -> AsyncIterator[queries.Executor]:
        """A transaction for Core statements (committed on exit, rolled back on error).

        On SQLite it first takes an urgent turn at the write gate (:mod:`broker.db.write_gate`):
        a tool decision never sleeps in SQLite's busy handler behind the event log.
        """
        async with WriteGate.of(self._sessionmaker).turn(urgent=True):
            if self._engine is not None:
                async with self._engine.begin() as conn:
                    yield conn
            else:
                async with self._sessionmaker.begin() as s:
                    yield s

    async def drain(self) -> None:
        """Wait for settle writes still running (call before the database closes)."""
        await self._writes.drain()

    async def record_seen(
        self,
        session_id: str,
        call_id: str,
        tool: str,
        arguments: str,
        seen_by: ToolPath,
        response_id: str | None = None,
        item_id: str | None = None,
    ) -> bool:
        """Make sure the call has a row (first reporter's tool and arguments win).

        One statement for a new call. ``item_id`` (the provider's item, known to the
        sideband) lets a restarted broker ask the provider whether the call finished.
        Returns whether this report inserted the row.

        Raises:
            CallRejectedError: the call id is invalid (``call_id_invalid``:
                :meth:`~broker.tools.dispatch.ToolDispatcher.run` records and denies such a
                call), or the session already has ``MAX_RECORDED_CALLS`` (the model gets an
                error; the bridge a 422).
        """
        tool = checked_tool_name(call_id, tool)
        async with self._begin() as s:
            requested = await record_call(
                s,
                self._redaction,
                session_id,
                call_id,
                tool,
                arguments,
                seen_by,
                response_id,
                item_id,
            )
            if requested is not None:
                await trail.add(s, requested)
        return requested is not None

    async def abandon(self, session_id: str, call_id: str, response_status: str) -> None:
        """The model's response did not complete: a still-pending call will never run."""
        reason = f"response {response_status}"
        async with self._sessionmaker.begin() as s:
            tool = await queries.cancel_tool_call(s, session_id, call_id, error=reason)
            if tool is not None:
                await trail.add(s, audit.cancelled(session_id, call_id, tool, reason))
        if tool is not None:
            logger.info(
                "tool call abandoned session_id=%s call_id=%s response_status=%s",
                session_id,
                call_id,
                response_status,
            )
            self._waiters.notify(session_id, call_id)

    async def _fail_undecided(
        self, session_id: str, call_id: str, path: ToolPath, started: float
    ) -> None:
        """Settle a call whose deciding transaction failed as ``failed`` (it never ran).

        The caller answers the model with :data:`BROKER_ERROR_OUTPUT` for it; left
        ``pending``, the call would be run and answered a second time by a later resync or
        a restarted broker. Best effort: if the database still fails, that is logged.
        """
        try:
            async with self._begin() as s:
                claimed = await queries.claim_tool_call_returning(s, session_id, call_id, path)
                if claimed is None:
                    return  # never recorded, or another claimant has it
                await queries.settle_tool_call_fast(
                    s,
                    session_id,
                    call_id,
                    status=ToolCallStatus.FAILED,
                    from_status=ToolCallStatus.RUNNING,
                    output=BROKER_ERROR_OUTPUT,
                    error=BROKER_ERROR,
                    decision=None,
                )
                await trail.add(
                    s,
                    audit.settled(
                        session_id,
                        call_id,
                        claimed.tool,
                        path,
                        ToolCallStatus.FAILED,
                        BROKER_ERROR_OUTPUT,
                        BROKER_ERROR,
                        elapsed_ms(started),
                        granted=False,
                    ),
                )
        except SQLAlchemyError:
            logger.warning(
                "could not settle an undecided call session_id=%s call_id=%s; it stays pending",
                session_id,
                call_id[:MAX_CALL_ID],
            )
            return
        self._waiters.notify(session_id, call_id)

    async def _settle(
        self,
        session_id: str,
        call_id: str,
        tool: str,
        path: ToolPath,
        status: ToolCallStatus,
        output: str,
        error: str | None,
        *,
        started: float,
        allowlist: frozenset[str],
        output_item_id: str | None = None,
    ) -> None:
        """Settle a granted call that ran (or was cut off) with its outcome, audited."""
        shown, sealed = self._redaction.stored(session_id, call_id, tool, output)
        async with self._begin() as s:
            changed = await queries.settle_tool_call_fast(
                s,
                session_id,
                call_id,
                status=status,
                from_status=ToolCallStatus.RUNNING,
                output=shown,
                output_sealed=sealed,
                # A plain string for the driver (a code is a StrEnum).
                error=None if error is None else str(error),
                output_item_id=output_item_id,
            )
            if changed:
                await trail.add(
                    s,
                    audit.settled(
                        session_id,
                        call_id,
                        tool,
                        path,
                        status,
                        shown,
                        error,
                        elapsed_ms(started),
                        allowlist=allowlist,
                    ),
                )
        self._waiters.notify(session_id, call_id)

    async def unfinished(self, session_id: str) -> tuple[Sequence[ToolCall], Sequence[ToolCall]]:
        """``(seen, undelivered)``: see :func:`broker.db.queries.unfinished_tool_calls`."""
        async with self._sessionmaker() as s:
            return await queries.unfinished_tool_calls(s, session_id)

    async def recover_interrupted(self, session_id: str) -> list[tuple[str, ToolCallStatus]]:
        """Settle calls left ``running`` by a broker that died; run once at resume.

        An idempotent tool's call goes back to ``pending`` (it runs again, with the same
        ``Idempotency-Key``); any other is ``failed`` with ``outcome_unknown``: it may have
        acted, so it never runs a second time, and the model is told exactly that.
        Returns each call id with the status it was given.
        """
        recovered: list[tuple[str, ToolCallStatus]] = []
        entries: list[AuditEntry] = []
        code = ToolErrorCode.OUTCOME_UNKNOWN
        output = error_output(
            code,
            "the broker restarted while this tool was running; it may or may not"
            " have completed, and it will not be run again",
        )
        async with self._sessionmaker.begin() as s:
            for row in await queries.running_tool_calls(s, session_id):
                spec = self._registry.get(row.tool)
                approved = row.output is not None
                if not approved and spec is not None and spec.idempotent:
                    await queries.reset_tool_call(s, session_id, row.call_id)
                    recovered.append((row.call_id, ToolCallStatus.PENDING))
                    continue
                # An approved call (held before) keeps its pending output: that is what the
                # model got for its call id, and it may be delivered already.
                new_output: dict[str, Any] = {}
                if not approved:
                    new_output = {
                        "output": output,
                        "output_item_id": (
                            new_item_id() if row.path == ToolPath.SIDEBAND else None
                        ),
                    }
                if await queries.settle_tool_call(
                    s,
                    session_id,
                    row.call_id,
                    status=ToolCallStatus.FAILED,
                    from_statuses=[ToolCallStatus.RUNNING],
                    error=str(code),
                    **new_output,
                ):
                    recovered.append((row.call_id, ToolCallStatus.FAILED))
                    entries.append(
                        audit.settled(
                            session_id,
                            row.call_id,
                            row.tool,
                            row.path,
                            ToolCallStatus.FAILED,
                            output,
                            str(code),
                            None,  # the run's length died with the broker that ran it
                        )
                    )
            await trail.add(s, *entries)
        for call_id, status in recovered:
            logger.warning(
                "tool call interrupted by a restart session_id=%s call_id=%s now=%s",
                session_id,
                call_id,
                status,
            )
        return recovered

    async def mark_injected(self, session_id: str, call_id: str) -> None:
        """The call's output is at the provider; audited the first time only."""
        async with self._begin() as s:
            marked = await queries.mark_injected(s, session_id, call_id, utcnow())
            if marked is not None:
                tool, output_item_id = marked
                await trail.add(s, audit.output_injected(session_id, call_id, tool, output_item_id))

    async def get_record(self, session_id: str, call_id: str) -> ToolCall | None:
        """The row as stored: a redacting tool's arguments and output redacted."""
        async with self._sessionmaker() as s:
            return await queries.get_tool_call(s, session_id, call_id)

    def raw_arguments(self, row: ToolCall) -> str:
        """The call's arguments as the model sent them (to match its reports).

        The shown ones if their seal does not open (the redaction key changed): logged.
        """
        return self._opened(row, row.arguments, row.arguments_sealed)

    def raw_output(self, row: ToolCall) -> str | None:
        """The call's output as the model is to get it (``None``: not settled).

        The shown one if its seal does not open, as :meth:`raw_arguments`.
        """
        if row.output is None:
            return None
        return self._opened(row, row.output, row.output_sealed)

    def _opened(self, row: ToolCall, shown: str, sealed: str | None) -> str:
        try:
            return self._redaction.opened(row.session_id, row.call_id, shown, sealed)
        except SealError:
            logger.warning(
                "a sealed tool call value does not open (was the redaction key changed?)"
                " session_id=%s call_id=%s",
                row.session_id,
                row.call_id,
            )
            return shown

    def in_transit(self, session_id: str, call_id: str, tool: str, text: str) -> str:
        """Arguments or an output as they may cross to another instance.

        Sealed if a redacting tool's: :meth:`~broker.tools.redaction.CallRedaction.in_transit`.
        """
        return self._redaction.in_transit(session_id, call_id, tool, text)

    def from_transit(self, session_id: str, call_id: str, text: str) -> str:
        return self._redaction.from_transit(session_id, call_id, text)

    def shown_arguments(self, tool: str, arguments: str) -> str:
        """``arguments`` as a row of ``tool`` shows them (to compare with a stored row)."""
        return self._redaction.shown(tool, arguments)

    async def get(self, session_id: str, call_id: str) -> CallOutcome | None:
        """The call's outcome, its output as the model is to get it (opened if sealed)."""
        row = await self.get_record(session_id, call_id)
        if row is None:
            return None
        return replace(CallOutcome.from_row(row), output=self.raw_output(row))

    async def answered_outputs(self, session_id: str) -> list[tuple[str, str]]:
        """:func:`broker.db.queries.answered_outputs`, each output as the model got it.

        The resumed call's tamper checks compare the outputs' echoes with these.
        """
        async with self._sessionmaker() as s:
            rows = await queries.delivered_outputs(s, session_id)
        return [
            (call_id, self._redaction.opened(session_id, call_id, output, sealed))
            for call_id, output, sealed in rows
        ]

    async def wait_settled(
        self, session_id: str, call_id: str, within: float | None
    ) -> CallOutcome | None:
        """The call's outcome once settled; the latest (unsettled or ``None``) on timeout."""
        return await self._waiters.wait(session_id, call_id, within)
