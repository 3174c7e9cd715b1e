"""The one pipeline every function call goes through, whichever path reports it.

``(session_id, call_id)`` is unique in ``tool_calls``; a call runs only after a conditional
``pending → running`` update that exactly one caller can win. Whoever loses (the sideband after
the bridge, or the reverse) waits for the winner's result and returns it, so a tool never runs
twice and the model never gets two outputs for one call.

Before a call runs, in this order: its call id (:mod:`broker.tools.call_ids`; a call with an
invalid one is recorded under a safe stand-in id and denied, never run), the session's
allowlist, the tool's existence, the session's ``max_argument_bytes``, strict JSON, the
tool's JSON Schema (all in :mod:`broker.tools.policy`), then the session's budget and
concurrency (atomically, in :mod:`broker.tools.budget`). The limits come from the session
row, so both paths apply the same ones without their callers passing them. A denial settles
the call ``denied`` with the code in ``error`` and an
:func:`~broker.tools.policy.error_output` for the model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from broker.db import queries
from broker.db.models import ToolCall, ToolCallStatus, ToolPath, utcnow
from broker.db.shielded import ShieldedWrites
from broker.tools.breaker import CircuitBreakers, Permit, Refusal, verdict_of
from broker.tools.budget import DENIED, ToolLimits, grant_locked
from broker.tools.call_ids import MAX_CALL_ID, is_valid_call_id, printable, recorded_call_id
from broker.tools.codes import ToolErrorCode
from broker.tools.executors import ToolContext, ToolExecutionError
from broker.tools.policy import decide, error_output, strict_json_loads
from broker.tools.registry import ToolRegistry, ToolSpec
from sideband.events import new_item_id

logger = logging.getLogger(__name__)

BROKER_ERROR: Final = "broker_error"
BROKER_ERROR_OUTPUT: Final = error_output(BROKER_ERROR, "the broker could not complete this call")
"""What the model is told for a call the broker itself failed (a database error, a bug)."""

_POLL_INTERVAL: Final = 0.2
"""Waiters re-read the row this often, so a winner in another process is seen too."""
MAX_RECORDED_CALLS: Final = 1000  # per session, denied ones included
MAX_TOOL_NAME: Final = 100


class CallRejectedError(Exception):
    """A reported call cannot be recorded (e.g. an absurd call id); nothing runs."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class CallOutcome:
    """A settled (or still running) call as either path reports it.

    Attributes:
        handled_by: the path that ran (or denied) the call; ``None`` while nobody has.
        executed_now: this very request ran (or denied) it; only then may its caller answer
            the model, so a duplicate report of the same call never produces a second output.
    """

    call_id: str
    tool: str
    status: ToolCallStatus
    output: str | None
    handled_by: ToolPath | None
    executed_now: bool = False
    output_item_id: str | None = None
    """The item id the output is to be created with at the provider (sideband path)."""
    budget_spent: bool | None = None
    """Known by the request that decided the call under the session's tool lock: whether
    the session's tool budget is now spent (a call was denied for it, or more were started
    than it allows). ``None``: not known here (the call was decided before the budget was
    counted, or by another request); count the rows to know."""

    @classmethod
    def from_row(cls, row: ToolCall) -> CallOutcome:
        return cls(
            call_id=row.call_id,
            tool=row.tool,
            status=ToolCallStatus(row.status),
            output=row.output,
            handled_by=ToolPath(row.path) if row.path else None,
            output_item_id=row.output_item_id,
        )


class ToolDispatcher:
    """Records, authorizes and runs function calls exactly once."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        registry: ToolRegistry,
        breakers: CircuitBreakers | None = None,
        on_finished: Callable[[str, str, float], None] | None = None,
    ) -> None:
        # on_finished(tool, status, seconds) hears of every call this process settled (ran,
        # denied or cut off), e.g. for metrics; it must not block.
        self._sessionmaker = sessionmaker
        self._registry = registry
        self._on_finished = on_finished
        # Per process: each broker process pauses a failing tool on its own evidence.
        self._breakers = CircuitBreakers() if breakers is None else breakers
        self._settled: dict[tuple[str, str], asyncio.Event] = {}
        self._writes = ShieldedWrites()
        # The hot path's Core statements go straight to a connection when the sessionmaker
        # is bound to an engine: an ORM session adds nothing to them but its own upkeep.
        bind = sessionmaker.kw.get("bind")
        self._engine = bind if isinstance(bind, AsyncEngine) else None

    def _begin(self) -> AbstractAsyncContextManager[queries.Executor]:
        """A transaction for Core statements (committed on exit, rolled back on error)."""
        if self._engine is not None:
            return self._engine.begin()
        return self._sessionmaker.begin()

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
            CallRejectedError: the call id is invalid (``call_id_invalid``: :meth:`run`
                records and denies such a call), or the session already has
                ``MAX_RECORDED_CALLS`` (the model gets an error; the bridge a 422).
        """
        tool = _checked(call_id, tool)
        async with self._begin() as s:
            return await self._record(
                s, session_id, call_id, tool, arguments, seen_by, response_id, item_id
            )

    @staticmethod
    async def _record(
        s: queries.Executor,
        session_id: str,
        call_id: str,
        tool: str,
        arguments: str,
        seen_by: ToolPath,
        response_id: str | None,
        item_id: str | None,
    ) -> bool:
        inserted = await queries.record_tool_call(
            s,
            session_id=session_id,
            call_id=call_id,
            tool=tool,
            arguments=arguments,
            seen_by=seen_by,
            response_id=response_id,
            item_id=item_id[:MAX_CALL_ID] if item_id else None,
            max_calls=MAX_RECORDED_CALLS,
        )
        if inserted is None:
            # Denied calls cost no budget, so without this a browser on the bridge
            # could make a session store rows (each with its arguments) without end.
            raise CallRejectedError(
                "too_many_tool_calls",
                f"a session records at most {MAX_RECORDED_CALLS} tool calls",
            )
        return inserted

    async def abandon(self, session_id: str, call_id: str, response_status: str) -> None:
        """The model's response did not complete: a still-pending call will never run."""
        async with self._sessionmaker.begin() as s:
            changed = await queries.settle_tool_call(
                s,
                session_id,
                call_id,
                status=ToolCallStatus.CANCELLED,
                from_statuses=[ToolCallStatus.PENDING],
                error=f"response {response_status}",
            )
        if changed:
            logger.info(
                "tool call abandoned session_id=%s call_id=%s response_status=%s",
                session_id,
                call_id,
                response_status,
            )
            self._notify(session_id, call_id)

    async def run(
        self,
        session_id: str,
        allowed_tools: Collection[str],
        call_id: str,
        tool: str,
        arguments: str,
        path: ToolPath,
        response_id: str | None = None,
        *,
        item_id: str | None = None,
        loser_wait: float = 0.0,
    ) -> CallOutcome:
        """Run the call if nobody has; otherwise return the other claimant's result.

        If another request owns the call, this waits up to ``loser_wait`` seconds for its
        result (0: return the current state at once). A tool's failure or a denial is an
        outcome with an output, never an exception.

        ``allowed_tools`` is the caller's allowlist; a tool must also be in the session row's
        list (the two agree unless a caller is wrong, and then the narrower one wins).

        One transaction decides the call: it takes the session's tool lock (reading its
        limits and allowlist), records the call if it is new, claims it (``pending →
        running``, reading the kill switch), checks policy and grants the budget — or
        settles a denial. Its commit is what makes ``running`` durable before the tool runs;
        a second one settles the outcome with the output's item id, before it is sent.

        A call whose id is invalid (:func:`~broker.tools.call_ids.is_valid_call_id`) is
        recorded under :func:`~broker.tools.call_ids.recorded_call_id` and denied
        ``call_id_invalid`` before anything else: it never reaches policy, the breaker or
        the tool (its id could not go into the tool's headers), and the outcome carries the
        stand-in id (safe to log and store; the caller answers the model with the id it
        has). Its row has no output item id, so a restarted broker never re-sends it.

        Raises:
            CallRejectedError: the call cannot be recorded at all.
        """
        if not is_valid_call_id(call_id):
            return await self._deny_invalid_id(
                session_id, call_id, tool, arguments, path, response_id, item_id, loser_wait
            )
        tool = _checked(call_id, tool)
        claimed_at = time.perf_counter()
        # Chosen now and stored with the outcome, before anything is sent: whoever delivers
        # the output later (this process or a restarted one) can ask the provider for it.
        output_item_id = new_item_id() if path is ToolPath.SIDEBAND else None
        verdict: _Verdict | None = None
        try:
            async with self._begin() as s:
                verdict = await self._decide(
                    s,
                    session_id,
                    allowed_tools,
                    call_id,
                    tool,
                    arguments,
                    path,
                    response_id,
                    item_id,
                )
                if isinstance(verdict, _Denied):
                    await queries.settle_tool_call_fast(
                        s,
                        session_id,
                        call_id,
                        status=ToolCallStatus.DENIED,
                        from_status=ToolCallStatus.RUNNING,
                        output=verdict.output,
                        error=str(verdict.code),
                        decision=DENIED,
                        output_item_id=output_item_id,
                    )
        except BaseException as exc:
            if isinstance(verdict, _Granted):
                verdict.permit.release()  # rolled back (or unknown): the tool never ran
            if isinstance(exc, SQLAlchemyError):
                await self._writes.run(
                    self._fail_undecided(session_id, call_id, path), name=f"tool-fail:{call_id}"
                )
            raise
        if verdict is None:
            settled = await self.wait_settled(session_id, call_id, within=loser_wait)
            assert settled is not None
            return settled
        if isinstance(verdict, _Denied):
            return self._denied(
                session_id,
                call_id,
                verdict.tool,
                verdict.output,
                path,
                claimed_at,
                output_item_id,
                verdict.budget_spent,
            )
        status: ToolCallStatus = ToolCallStatus.FAILED
        output: str | None = None
        error: str | None = None
        try:
            status, output, error = await self._execute(
                session_id, call_id, verdict.tool, verdict.spec, verdict.arguments, verdict.permit
            )
        finally:
            if output is None:
                # Cancelled or crashed mid-run: the tool may or may not have acted, and it
                # must not run again, so the call settles as failed with that said.
                error = ToolErrorCode.OUTCOME_UNKNOWN
                output = error_output(error, "the broker stopped while running this tool")
            # Shielded: a cancelled request must still leave the row settled, never running.
            await self._writes.run(
                self._settle(session_id, call_id, status, output, error, None, output_item_id),
                name=f"tool-settle:{call_id}",
            )
            if self._on_finished is not None:
                self._on_finished(verdict.tool, status.value, time.perf_counter() - claimed_at)
        return CallOutcome(
            call_id,
            verdict.tool,
            status,
            output,
            path,
            executed_now=True,
            output_item_id=output_item_id,
            budget_spent=verdict.budget_spent,
        )

    async def _deny_invalid_id(
        self,
        session_id: str,
        call_id: str,
        tool: str,
        arguments: str,
        path: ToolPath,
        response_id: str | None,
        item_id: str | None,
        loser_wait: float,
    ) -> CallOutcome:
        """Record and deny a call whose id is invalid; see :meth:`run`."""
        started = time.perf_counter()
        key = recorded_call_id(call_id)
        tool = tool[:MAX_TOOL_NAME]
        code = ToolErrorCode.CALL_ID_INVALID
        output = error_output(code, _CALL_ID_RULE + "; this call was not run")
        async with self._begin() as s:
            await self._record(s, session_id, key, tool, arguments, path, response_id, item_id)
            claimed = await queries.claim_tool_call_returning(s, session_id, key, path)
            if claimed is not None:
                await queries.settle_tool_call_fast(
                    s,
                    session_id,
                    key,
                    status=ToolCallStatus.DENIED,
                    from_status=ToolCallStatus.RUNNING,
                    output=output,
                    error=str(code),
                    decision=DENIED,
                )
        if claimed is None:
            # Reported before (a replay, or the other path): answered once, by the first.
            settled = await self.wait_settled(session_id, key, within=loser_wait)
            assert settled is not None
            return settled
        # The stand-in, never the raw id: it may hold line breaks forged for the log.
        logger.warning(
            "tool call denied session_id=%s call_id=%s tool=%s code=%s",
            session_id,
            key,
            printable(claimed.tool, MAX_TOOL_NAME),
            code,
        )
        # A fresh output item id for the one delivery; not stored (see run()).
        fresh = new_item_id() if path is ToolPath.SIDEBAND else None
        return self._denied(session_id, key, claimed.tool, output, path, started, fresh)

    def _denied(
        self,
        session_id: str,
        call_id: str,
        tool: str,
        output: str,
        path: ToolPath,
        started: float,
        output_item_id: str | None,
        budget_spent: bool | None = None,
    ) -> CallOutcome:
        """A denial this request decided: wake the waiters, report it, answer it."""
        self._notify(session_id, call_id)
        if self._on_finished is not None:
            self._on_finished(tool, ToolCallStatus.DENIED.value, time.perf_counter() - started)
        return CallOutcome(
            call_id,
            tool,
            ToolCallStatus.DENIED,
            output,
            path,
            executed_now=True,
            output_item_id=output_item_id,
            budget_spent=budget_spent,
        )

    async def _fail_undecided(self, session_id: str, call_id: str, path: ToolPath) -> None:
        """Settle a call whose deciding transaction failed as ``failed`` (it never ran).

        The caller answers the model with :data:`BROKER_ERROR_OUTPUT` for it; left
        ``pending``, the call would be run and answered a second time by a later resync or
        a restarted broker. Best effort: if the database still fails, that is logged.
        """
        try:
            async with self._begin() as s:
                if await queries.claim_tool_call_returning(s, session_id, call_id, path) is None:
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
        except SQLAlchemyError:
            logger.warning(
                "could not settle an undecided call session_id=%s call_id=%s; it stays pending",
                session_id,
                call_id[:MAX_CALL_ID],
            )
            return
        self._notify(session_id, call_id)

    async def _settle(
        self,
        session_id: str,
        call_id: str,
        status: ToolCallStatus,
        output: str,
        error: str | None,
        decision: str | None,
        output_item_id: str | None = None,
    ) -> None:
        async with self._begin() as s:
            await queries.settle_tool_call_fast(
                s,
                session_id,
                call_id,
                status=status,
                from_status=ToolCallStatus.RUNNING,
                output=output,
                # A plain string for the driver (a code is a StrEnum).
                error=None if error is None else str(error),
                decision=decision,
                output_item_id=output_item_id,
            )
        self._notify(session_id, call_id)

    async def _decide(
        self,
        s: queries.Executor,
        session_id: str,
        allowed_tools: Collection[str],
        call_id: str,
        tool: str,
        arguments: str,
        path: ToolPath,
        response_id: str | None,
        item_id: str | None,
    ) -> _Verdict | None:
        """Record, claim and decide the call in ``s``; ``None`` if another claimant has it.

        The order of the checks: the session, its allowlist, the tool's existence, the
        session's ``max_argument_bytes``, strict JSON, the tool's schema, the kill switch,
        the tool's breaker, the budget and concurrency.
        """
        # First, so that every grant of the session serializes behind it (broker.tools.budget).
        session = await queries.lock_session_for_tools(s, session_id)
        claimed = await queries.claim_tool_call_returning(s, session_id, call_id, path)
        if claimed is None:
            # New (the bridge's first report, or a sideband whose early record failed), or
            # someone else's: record it (a no-op if it exists) and try once more.
            await self._record(s, session_id, call_id, tool, arguments, path, response_id, item_id)
            claimed = await queries.claim_tool_call_returning(s, session_id, call_id, path)
            if claimed is None:
                return None
        # The recorded tool and arguments run: a later reporter cannot swap them.
        tool, arguments, disabled = claimed.tool, claimed.arguments, bool(claimed.disabled)
        # Escaped: a name the policy is about to deny may hold anything the model (or a
        # page, on the bridge) sent, line breaks included.
        log_extra = (
            f"session_id={session_id} call_id={call_id} tool={printable(tool, MAX_TOOL_NAME)}"
        )
        if session is None:
            return _denial(log_extra, tool, ToolErrorCode.SESSION_NOT_FOUND, "the session is gone")
        limits = ToolLimits(
            session.max_tool_calls, session.max_concurrent_tools, session.max_argument_bytes
        )
        decision = decide(
            self._registry,
            frozenset(session.tools).intersection(allowed_tools),
            tool,
            arguments,
            max_argument_bytes=limits.max_argument_bytes,
        )
        if not decision.allowed:
            assert decision.code is not None and decision.message is not None
            return _denial(log_extra, tool, decision.code, decision.message)
        if disabled:
            # Read with the claim, from the database: a switch takes effect at once, in
            # every process, for sessions already live.
            return _denial(
                log_extra,
                tool,
                ToolErrorCode.TOOL_DISABLED,
                f"the {tool} tool has been switched off by an operator; it cannot be used now",
            )
        # After policy (a refused call says nothing about the tool's health) and before the
        # budget, so a call the breaker refuses costs none of it. Every path below reports
        # to the permit: a half-open breaker waits for its one trial call's verdict.
        permit = self._breakers.admit(tool)
        if isinstance(permit, Refusal):
            return _denial(log_extra, tool, ToolErrorCode.TOOL_CIRCUIT_OPEN, permit.message)
        try:
            refused, started = await grant_locked(s, session_id, call_id, limits)
        except BaseException:
            permit.release()  # the tool never ran: no verdict
            raise
        if refused is not None:
            permit.release()
        if refused is ToolErrorCode.TOOL_BUDGET_EXHAUSTED:
            return _denial(
                log_extra,
                tool,
                refused,
                f"this session has used all {limits.max_tool_calls} of its tool calls",
                budget_spent=True,
            )
        if refused is not None:
            return _denial(
                log_extra,
                tool,
                refused,
                f"this session already runs {limits.max_concurrent_tools} tool call(s) at once;"
                " try again when one has finished",
                budget_spent=started > limits.max_tool_calls,
            )
        assert decision.tool is not None and decision.arguments is not None
        return _Granted(
            tool,
            decision.tool,
            decision.arguments,
            permit,
            budget_spent=started > limits.max_tool_calls,
        )

    async def _execute(
        self,
        session_id: str,
        call_id: str,
        tool: str,
        spec: ToolSpec,
        args: dict[str, Any],
        permit: Permit,
    ) -> tuple[ToolCallStatus, str, str | None]:
        """Run a granted call's tool; ``(status, output, error)``."""
        log_extra = f"session_id={session_id} call_id={call_id} tool={tool}"
        started = time.perf_counter()
        http_status: int | None = None
        try:
            # One deadline for every executor kind (httpx only backs it up).
            async with asyncio.timeout(spec.timeout):
                output = await spec.executor(args, ToolContext(session_id, call_id, tool))
        except TimeoutError:
            failure: tuple[ToolErrorCode, str] = (
                ToolErrorCode.TOOL_TIMEOUT,
                f"the tool did not finish in {spec.timeout:g}s",
            )
        except ToolExecutionError as exc:
            failure = (exc.code, exc.message)
            http_status = exc.http_status
        except Exception as exc:
            # A bug in a tool must cost one call, not the session: the model is told it failed.
            logger.exception("tool raised %s", log_extra)
            failure = (ToolErrorCode.TOOL_ERROR, f"the tool failed ({type(exc).__name__})")
        except BaseException:
            # Cut off mid-run (the call settles outcome_unknown): no news counts as bad news.
            permit.failed()
            raise
        else:
            permit.succeeded()
            logger.info(
                "tool call succeeded %s ms=%.1f", log_extra, (time.perf_counter() - started) * 1000
            )
            return ToolCallStatus.SUCCEEDED, output, None
        healthy = verdict_of(failure[0], http_status)
        if healthy is None:
            permit.release()  # the call's own input failed it: the backend never saw it
        elif healthy:
            permit.succeeded()  # a 4xx: the call failed, but the backend works
        else:
            permit.failed()
        logger.warning("tool call failed %s code=%s", log_extra, failure[0])
        return ToolCallStatus.FAILED, error_output(*failure), failure[0]

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
        async with self._sessionmaker.begin() as s:
            for row in await queries.running_tool_calls(s, session_id):
                spec = self._registry.get(row.tool)
                if spec is not None and spec.idempotent:
                    await queries.reset_tool_call(s, session_id, row.call_id)
                    recovered.append((row.call_id, ToolCallStatus.PENDING))
                    continue
                await queries.settle_tool_call(
                    s,
                    session_id,
                    row.call_id,
                    status=ToolCallStatus.FAILED,
                    from_statuses=[ToolCallStatus.RUNNING],
                    error=str(ToolErrorCode.OUTCOME_UNKNOWN),
                    output=error_output(
                        ToolErrorCode.OUTCOME_UNKNOWN,
                        "the broker restarted while this tool was running; it may or may not"
                        " have completed, and it will not be run again",
                    ),
                    output_item_id=new_item_id() if row.path == ToolPath.SIDEBAND else None,
                )
                recovered.append((row.call_id, ToolCallStatus.FAILED))
        for call_id, status in recovered:
            logger.warning(
                "tool call interrupted by a restart session_id=%s call_id=%s now=%s",
                session_id,
                call_id,
                status,
            )
        return recovered

    async def mark_injected(self, session_id: str, call_id: str) -> None:
        async with self._begin() as s:
            await queries.mark_injected(s, session_id, call_id, utcnow())

    async def get_record(self, session_id: str, call_id: str) -> ToolCall | None:
        async with self._sessionmaker() as s:
            return await queries.get_tool_call(s, session_id, call_id)

    async def get(self, session_id: str, call_id: str) -> CallOutcome | None:
        row = await self.get_record(session_id, call_id)
        return CallOutcome.from_row(row) if row is not None else None

    async def wait_settled(
        self, session_id: str, call_id: str, within: float | None
    ) -> CallOutcome | None:
        """The call's outcome once settled; the latest (unsettled or ``None``) on timeout."""
        key = (session_id, call_id)
        event = self._settled.setdefault(key, asyncio.Event())
        loop = asyncio.get_running_loop()
        deadline = None if within is None else loop.time() + within
        try:
            while True:
                outcome = await self.get(session_id, call_id)
                if outcome is not None and outcome.status.settled:
                    return outcome
                wait = _POLL_INTERVAL
                if deadline is not None:
                    wait = min(wait, deadline - loop.time())
                    if wait <= 0:
                        return outcome
                try:
                    async with asyncio.timeout(wait):
                        await event.wait()
                except TimeoutError:
                    pass
        finally:
            if self._settled.get(key) is event and not event.is_set():
                del self._settled[key]

    def _notify(self, session_id: str, call_id: str) -> None:
        event = self._settled.pop((session_id, call_id), None)
        if event is not None:
            event.set()


@dataclass(frozen=True)
class _Denied:
    tool: str
    code: ToolErrorCode
    output: str
    budget_spent: bool | None = None


@dataclass(frozen=True)
class _Granted:
    tool: str
    spec: ToolSpec
    arguments: dict[str, Any]
    permit: Permit
    budget_spent: bool


_Verdict = _Denied | _Granted


def _denial(
    log_extra: str,
    tool: str,
    code: ToolErrorCode,
    message: str,
    *,
    budget_spent: bool | None = None,
) -> _Denied:
    logger.warning("tool call denied %s code=%s", log_extra, code)
    return _Denied(tool, code, error_output(code, message), budget_spent)


_CALL_ID_RULE: Final = f"call ids are 1-{MAX_CALL_ID} characters from A-Z, a-z, 0-9, _, . and -"


def _checked(call_id: str, tool: str) -> str:
    """The tool name as recorded; raises :class:`CallRejectedError` for an invalid call id."""
    if not is_valid_call_id(call_id):
        raise CallRejectedError(str(ToolErrorCode.CALL_ID_INVALID), _CALL_ID_RULE)
    # A tool name longer than any registered one is kept (truncated) for the record; the
    # policy decision uses the full name and denies it.
    return tool[:MAX_TOOL_NAME]


def arguments_equal(a: str, b: str) -> bool:
    """Same JSON value (key order and whitespace do not matter)."""
    try:
        return bool(strict_json_loads(a or "{}") == strict_json_loads(b or "{}"))
    except (ValueError, RecursionError):
        return a == b
