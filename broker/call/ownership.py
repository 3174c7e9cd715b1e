"""Which broker instance owns each running call: leases, fencing, failover and handoff.

Several broker instances share one database (PostgreSQL; SQLite is one process). Every
running call (sideband, bridge-only or degraded alike) is owned by exactly one instance,
through its ``call_leases`` row: owner, fencing token, ``expires_at`` on the database's clock.
:class:`CallOwnership` is this instance's side of it, one task (:meth:`CallOwnership.run`):

- **Renew.** Every fifth of ``BROKER_LEASE_TTL_S`` one ``UPDATE`` extends every lease this
  instance holds and its own heartbeat. A lease that was not renewed (another instance took
  it, or it ran out) is *lost*: the call is let go at once, with nothing more written or sent.
  An instance that cannot reach the database stops acting on its calls on its own clock,
  a margin before the lease can run out (:meth:`CallOwnership.may_act`).
- **Fence.** The call's tasks run under its :class:`~broker.db.fence.Fence`: every commit
  they make re-checks the lease (:mod:`broker.db.fence`), and every provider action (an
  output, ``response.create``, a delete, a hangup) is preceded by a fenced check
  (:meth:`CallOwnership.check`).
- **Fail over.** Calls whose lease ran out (their owner died) are taken, with the next
  token, and taken up as a restarted broker takes up its calls: re-attach to the same
  ``call_id``, settle interrupted tool calls, resync.
- **Hand over, make-before-break.** A stopping instance offers its calls
  (``handoff``); another claims each (``successor_id``), opens its own sideband to the call
  and keeps what arrives on it (:class:`StandbyConnection`), then says it is ready. Only then
  does the owner drain the call, stop its sideband and pass the lease on in one conditional
  update; the successor takes up the call with the frames it kept, so no moment passes with
  no sideband watching the call.
- **Commands.** An action on a call owned elsewhere (an operator's hangup, new instructions,
  the page's hangup) is a ``call_commands`` row for the owner; ``NOTIFY`` wakes it.

``NOTIFY`` only wakes instances early (:class:`Notices`); the rows are the truth, and every
step is also found by the periodic tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.audit import trail as audit
from broker.audit.records import Actor, AuditEntry, AuditKind
from broker.db import queries
from broker.db.fence import Fence, LeaseLostError, check_fence
from broker.db.models import CallCommand, CallCommandStatus, SessionRow
from broker.db.shielded import finish_step
from broker.settings import SettingsError
from sideband import SidebandConnection

logger = logging.getLogger(__name__)

CHANNEL_WAKE: Final = "broker_wake"
"""``NOTIFY`` payload: an instance id (something changed for it), or ``*`` (for all)."""
CHANNEL_EVENTS: Final = "broker_events"
"""``NOTIFY`` payload: session ids, comma-separated, whose event log just grew."""
MARGIN_SHARE: Final = 0.3
"""An owner stops acting this share of the lease before it can run out."""
STANDBY_MAX_S: Final = 30.0
"""A successor's sideband waits this long for the owner to let go, then gives up."""
ORPHANS_PER_TICK: Final = 200
COMMAND_WAIT_S: Final = 10.0
LOCK_WAIT_S: Final = 0.5
"""The longest a take waits for a lease another instance has locked."""


def key_fingerprint(*keys: str | None) -> str:
    """A one-way digest of the keys every instance must share (never the keys themselves)."""
    digest = hashlib.sha256(b"broker-instance-keys\x00")
    for key in keys:
        digest.update(b"\x00" + (key or "").encode())
    return digest.hexdigest()


def default_instance_id() -> str:
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass
class Held:
    """A lease this instance holds: its fence, and until when it may act on its own clock."""

    fence: Fence
    valid_until: float


@dataclass
class StandbyConnection:
    """A sideband opened ahead of a handoff: it keeps every frame until the call is ours.

    Exactly one task reads the socket: this one's until :meth:`take`, then the controller's.
    Cancelling the reader while it waits for a frame loses none (aiohttp keeps it queued).
    """

    session_id: str
    connection: SidebandConnection
    frames: list[dict[str, Any]] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._reader = asyncio.create_task(self._read(), name=f"standby:{self.session_id}")

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            async for frame in self.connection.frames():
                self.frames.append(frame)

    async def take(self) -> tuple[SidebandConnection, list[dict[str, Any]]]:
        """Stop keeping frames; the socket and what it kept, for the controller."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        return self.connection, self.frames

    async def close(self) -> None:
        await self.take()
        await self.connection.close()


class CallHost(Protocol):
    """What ownership asks of the services that run calls (the session service)."""

    async def take_up(
        self, row: SessionRow, fence: Fence, standby: StandbyConnection | None
    ) -> None: ...

    async def let_go(self, session_id: str) -> None: ...

    async def hand_off(self, session_id: str, successor_id: str) -> bool: ...

    async def open_standby(self, row: SessionRow) -> StandbyConnection: ...

    async def run_command(self, command: CallCommand) -> dict[str, Any]: ...


ACTION_CHECK: ContextVar[Callable[[], Awaitable[bool]] | None] = ContextVar(
    "broker_action_check", default=None
)
"""Set in an owned call's tasks: whether a provider action may go out now."""


@contextlib.contextmanager
def acting_for(check: Callable[[], Awaitable[bool]]) -> Iterator[None]:
    """Run the block (and the tasks it starts) with ``check`` guarding provider actions."""
    reset = ACTION_CHECK.set(check)
    try:
        yield
    finally:
        ACTION_CHECK.reset(reset)


async def may_act_now() -> bool:
    """Whether the running task may act on its call at the provider (``True`` outside one)."""
    check = ACTION_CHECK.get()
    return True if check is None else await check()


class CallOwnership:
    """This instance's leases on running calls (see the module docstring)."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        instance_id: str | None,
        ttl_s: float,
        single_process: bool,
        shared_signing_key: bool,
        key_fingerprint: str,
        version: str,
    ) -> None:
        self._sessionmaker = sessionmaker
        self.instance_id = instance_id or default_instance_id()
        self.ttl_s = ttl_s
        self.renew_every_s = ttl_s / 5
        self._margin_s = ttl_s * MARGIN_SHARE
        self._single_process = single_process
        self._shared_signing_key = shared_signing_key
        self._key_fingerprint = key_fingerprint
        self._version = version
        self._held: dict[str, Held] = {}
        self._standby: dict[str, StandbyConnection | None] = {}
        """Calls this instance is the ready successor of (``None``: no sideband to open)."""
        self._standby_since: dict[str, float] = {}
        self._host: CallHost | None = None
        self._wake = asyncio.Event()
        self._first_tick = True
        self.draining = False
        self._command_waiters: dict[int, asyncio.Event] = {}
        self._busy: set[str] = set()
        """Sessions a handoff or activation is under way for (never two at once)."""
        self._late_since: float | None = None
        """When renewals last fell behind on SQLite (warned once per episode)."""

    def bind(self, host: CallHost) -> None:
        self._host = host

    # ---- what the call's tasks ask ------------------------------------------------------

    def hold(self, session_id: str, token: int, since: float) -> Fence:
        """Record a lease just granted or taken (``since``: monotonic time before the write)."""
        fence = Fence(session_id, self.instance_id, token)
        self._held[session_id] = Held(fence, since + self.ttl_s - self._margin_s)
        return fence

    def fence_of_writes(self, fence: Fence) -> Fence | None:
        """The fence a call's tasks write under (``None`` on SQLite).

        On SQLite this process is the only one: a re-check per commit would cost the hot
        path and prove nothing.
        """
        return None if self._single_process else fence

    def owns(self, session_id: str) -> bool:
        return session_id in self._held

    def handing_over(self, session_id: str) -> bool:
        """Whether this instance is offering the call to the others (it is stopping)."""
        return self.draining and session_id in self._held

    def may_act(self, session_id: str) -> bool:
        """Whether this instance may act on the call now, by its own clock (no I/O).

        On SQLite the clock is not asked: this process is the only one, so a late renewal
        (a busy event loop, a slow disk) lets nobody else act, and refusing would only leave
        the call unserved.
        """
        held = self._held.get(session_id)
        if held is None:
            return False
        return self._single_process or time.monotonic() < held.valid_until

    async def check(self, fence: Fence) -> bool:
        """Whether a provider action on the call may go out now: a fenced read, then the clock.

        The clock is read last, with no await after it before the caller's send.
        """
        held = self._held.get(fence.session_id)
        if held is None or held.fence != fence or not self.may_act(fence.session_id):
            return False
        if self._single_process:
            return True  # SQLite: no other instance can hold the call
        try:
            async with self._sessionmaker() as s:
                await check_fence(s, fence)
        except LeaseLostError:
            self._lost(fence.session_id)
            return False
        except SQLAlchemyError:
            logger.warning("lease check failed session_id=%s", fence.session_id, exc_info=True)
            return False
        return self.may_act(fence.session_id)

    def action_check(self, fence: Fence) -> Callable[[], Awaitable[bool]]:
        return functools.partial(self.check, fence)

    def _lost(self, session_id: str) -> None:
        if self._held.pop(session_id, None) is None:
            return
        logger.warning(
            "lease lost: another instance owns the call now session_id=%s instance=%s",
            session_id,
            self.instance_id,
        )
        if self._host is not None:
            host = self._host
            asyncio.get_running_loop().create_task(host.let_go(session_id))

    # ---- start, stop --------------------------------------------------------------------

    async def register(self) -> None:
        """Announce this instance to the others sharing the database.

        Raises:
            SettingsError: other instances are live and this one's client-secret signing key
                is a per-host generated file, or its signing or admin key differs from
                theirs: a client secret minted by one would not verify on another.
        """
        async with self._sessionmaker.begin() as s:
            await queries.prune_instances(s, older_than_s=3600)
            others = [row for row in await queries.live_instances(s) if row.id != self.instance_id]
            if others and not self._shared_signing_key:
                raise SettingsError(
                    f"{len(others)} other broker instance(s) use this database"
                    f" ({others[0].id}, ...) and this one's client-secret signing key is a"
                    " generated per-host file: set the same BROKER_SIGNING_KEY (and"
                    " BROKER_ADMIN_KEY) on every instance"
                )
            differing = [row.id for row in others if row.key_fingerprint != self._key_fingerprint]
            if differing:
                raise SettingsError(
                    f"broker instance {differing[0]} on this database has another"
                    " BROKER_SIGNING_KEY or BROKER_ADMIN_KEY: every instance needs the same"
                )
            await queries.register_instance(
                s,
                self.instance_id,
                self.ttl_s,
                shared_signing_key=self._shared_signing_key,
                key_fingerprint=self._key_fingerprint,
                version=self._version,
            )
        logger.info(
            "broker instance %s registered; %d other instance(s) live",
            self.instance_id,
            len(others),
        )

    async def run(self) -> None:
        """Renew, take orphans, succeed, hand over and serve commands, until cancelled."""
        while True:
            try:
                # Cancelled at shutdown, a tick under way still commits or rolls back.
                await finish_step(self.tick())
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("call ownership tick failed instance=%s", self.instance_id)
            self._expire_by_clock()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.05 if self.draining else self.renew_every_s):
                    await self._wake.wait()
            self._wake.clear()

    async def tick(self) -> None:
        await self._renew()
        if not self.draining:
            await self._take_orphans()
            await self._claim_successions()
        await self._activate_standbys()
        await self._serve_commands()
        if self.draining:
            await self._hand_over_ready()

    async def hand_off_all(self, grace_s: float) -> int:
        """SIGTERM: offer every call to the other instances and hand over those taken.

        Returns how many calls were handed over within ``grace_s``; the rest are drained by
        the supervisor as before and released (:meth:`release_all`).
        """
        self.draining = True
        if not self._held:
            return 0
        try:
            async with self._sessionmaker.begin() as s:
                await queries.heartbeat_instance(s, self.instance_id, self.ttl_s, draining=True)
                others = [i for i in await queries.live_instances(s) if i.id != self.instance_id]
                if not any(not i.draining for i in others):
                    return 0
                asked = await queries.ask_handoff(s, self.instance_id)
                await queries.notify(s, CHANNEL_WAKE, "*")
        except SQLAlchemyError as exc:
            logger.warning("no handoff: the database is unavailable: %s", type(exc).__name__)
            return 0
        logger.info("handing %d call(s) over to the other instances", asked)
        handed = 0
        deadline = time.monotonic() + grace_s
        start = len(self._held)
        while self._held and time.monotonic() < deadline:
            try:
                await self.tick()
            except SQLAlchemyError as exc:
                logger.warning("handoff interrupted: %s", type(exc).__name__)
                break
            handed = start - len(self._held)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.05):
                    await self._wake.wait()
            self._wake.clear()
        return handed

    async def release_all(self) -> None:
        """Let every call this instance still holds go at once, and leave."""
        for standby in list(self._standby.values()):
            if standby is not None:
                await standby.close()
        self._standby.clear()
        try:
            async with self._sessionmaker.begin() as s:
                released = await queries.release_leases(s, self.instance_id)
                await queries.remove_instance(s, self.instance_id)
                await queries.notify(s, CHANNEL_WAKE, "*")
        except SQLAlchemyError as exc:
            # Not fatal: unreleased leases run out by themselves and the calls are taken then.
            logger.warning(
                "could not release this instance's calls (they are taken once their leases"
                " run out): %s",
                type(exc).__name__,
            )
            return
        self._held.clear()
        if released:
            logger.info("released %d call(s) for another instance to take", released)

    # ---- the tick's steps ---------------------------------------------------------------

    async def _renew(self) -> None:
        started = time.monotonic()
        # Only leases held before the renewal began: one granted meanwhile (a new call's
        # offer commits while this runs) is not in its answer, and not lost.
        before = dict(self._held)
        async with self._sessionmaker.begin() as s:
            await queries.heartbeat_instance(
                s, self.instance_id, self.ttl_s, draining=self.draining
            )
            renewed = await queries.renew_leases(s, self.instance_id, self.ttl_s)
            missing = [sid for sid, held in before.items() if sid not in renewed]
            ended = await queries.ended_among(s, missing)
        for session_id, held in before.items():
            if self._held.get(session_id) is not held:
                continue
            if renewed.get(session_id) == held.fence.token:
                held.valid_until = started + self.ttl_s - self._margin_s
            elif session_id in ended:
                del self._held[session_id]  # the call is over: nothing left to own
            elif session_id not in self._busy:
                self._lost(session_id)

    def _expire_by_clock(self) -> None:
        """Stop acting on calls whose lease may run out before it can be renewed.

        Not on SQLite: no other instance could take such a call over, so letting it go would
        end it for nothing (a loaded single process once let 100 calls go this way). A late
        renewal is still worth a warning there: it is how an overloaded broker shows.
        """
        now = time.monotonic()
        late = [
            session_id
            for session_id, held in self._held.items()
            if now >= held.valid_until and session_id not in self._busy
        ]
        if not late:
            self._late_since = None
            return
        if self._single_process:
            if self._late_since is None:
                self._late_since = now
                logger.warning(
                    "lease renewal late for %d call(s) (the event loop or the database is"
                    " slow); on SQLite no other instance can take them, so they are kept",
                    len(late),
                )
            return
        for session_id in late:
            logger.error("lease not renewed in time; letting the call go session_id=%s", session_id)
            self._lost(session_id)

    async def _take_orphans(self) -> None:
        assert self._host is not None
        first, self._first_tick = self._first_tick, False
        # SQLite is one process: every running call was this process's predecessor's. An
        # instance restarted under its stable name takes back what its predecessor held.
        forced: set[str] = set()
        async with self._sessionmaker() as s:
            if first and self._single_process:
                rows = list(await queries.sessions_with_running_calls(s))
                forced = {row.id for row in rows}
            else:
                rows = list(await queries.orphaned_calls(s, ORPHANS_PER_TICK))
                if first:
                    own = list(await queries.calls_leased_to(s, self.instance_id))
                    forced = {row.id for row in own}
                    rows = own + [row for row in rows if row.id not in forced]
        for row in rows:
            force = row.id in forced
            if row.id in self._held or row.id in self._standby or row.id in self._busy:
                continue
            started = time.monotonic()
            try:
                async with self._sessionmaker.begin() as s:
                    await queries.wait_for_locks_at_most(s, LOCK_WAIT_S)
                    token = await queries.take_lease(
                        s, row.id, self.instance_id, self.ttl_s, force=force
                    )
                    if token is not None:
                        # Taken, not handed: the previous owner (a crashed instance, or
                        # this one's predecessor) said nothing, and its id is not kept.
                        await audit.add(s, _handed_over(row.id, None, self.instance_id, "takeover"))
            except SQLAlchemyError as exc:
                # Locked by an instance stuck mid-commit: its session is ended by the
                # server's idle-in-transaction timeout, and a later tick takes the call.
                logger.warning("could not take call session_id=%s: %s", row.id, type(exc).__name__)
                continue
            if token is None:
                continue
            logger.info(
                "took over call session_id=%s call_id=%s token=%d", row.id, row.call_id, token
            )
            fence = self.hold(row.id, token, started)
            await self._host.take_up(row, fence, None)

    async def _claim_successions(self) -> None:
        assert self._host is not None
        async with self._sessionmaker.begin() as s:
            claimed = await queries.claim_successions(s, self.instance_id, ORPHANS_PER_TICK)
        for session_id in claimed:
            async with self._sessionmaker() as s:
                row = await queries.get_session_row(s, session_id)
            standby: StandbyConnection | None = None
            try:
                if row is None or row.call_id is None:
                    raise LookupError("no running call")
                if row.sideband_enabled and row.state == "live":
                    standby = await self._host.open_standby(row)
                async with self._sessionmaker.begin() as s:
                    ready = await queries.successor_ready(s, session_id, self.instance_id)
                    lease = await queries.lease_of(s, session_id)
                    if ready and lease is not None:
                        await queries.notify(s, CHANNEL_WAKE, lease.owner_id)
                if not ready:
                    raise LookupError("the handoff was withdrawn")
            except Exception as exc:
                logger.warning(
                    "could not stand by for a handoff session_id=%s: %s",
                    session_id,
                    type(exc).__name__,
                )
                if standby is not None:
                    await standby.close()
                async with self._sessionmaker.begin() as s:
                    await queries.give_up_succession(s, session_id, self.instance_id)
                continue
            # Bridge-only and degraded calls have no sideband to open: ready at once.
            self._standby[session_id] = standby
            self._standby_since[session_id] = time.monotonic()
            logger.info("standing by to take over session_id=%s", session_id)

    async def _activate_standbys(self) -> None:
        assert self._host is not None
        if not self._standby:
            return
        started = time.monotonic()
        async with self._sessionmaker() as s:
            ours = await queries.leases_owned_by(s, self.instance_id, list(self._standby))
        for session_id, token in ours.items():
            standby = self._standby.pop(session_id)
            self._standby_since.pop(session_id, None)
            async with self._sessionmaker() as s:
                row = await queries.get_session_row(s, session_id)
            fence = self.hold(session_id, token, started)
            if row is None:
                continue
            logger.info("handed over to this instance session_id=%s token=%d", session_id, token)
            await self._host.take_up(row, fence, standby)
        now = time.monotonic()
        for session_id, since in list(self._standby_since.items()):
            if now - since > STANDBY_MAX_S:
                self._standby_since.pop(session_id)
                standby = self._standby.pop(session_id, None)
                if standby is not None:
                    await standby.close()
                async with self._sessionmaker.begin() as s:
                    await queries.give_up_succession(s, session_id, self.instance_id)

    async def _hand_over_ready(self) -> None:
        assert self._host is not None
        async with self._sessionmaker() as s:
            ready = await queries.ready_successors(s, self.instance_id)
        pending = [
            (session_id, successor)
            for session_id, successor in ready.items()
            if session_id in self._held and session_id not in self._busy
        ]
        await asyncio.gather(*(self._hand_over(sid, succ) for sid, succ in pending))

    async def _hand_over(self, session_id: str, successor_id: str) -> None:
        assert self._host is not None
        held = self._held.get(session_id)
        if held is None:
            return
        self._busy.add(session_id)
        started = time.monotonic()
        try:
            # The call's sideband stops (its tool calls delivered) before the lease passes:
            # from the commit on, only the successor acts.
            if not await self._host.hand_off(session_id, successor_id):
                return
            async with self._sessionmaker.begin() as s:
                token = await queries.hand_over(
                    s, session_id, self.instance_id, held.fence.token, successor_id, self.ttl_s
                )
                if token is not None:
                    # The lease and its audit record pass together.
                    await audit.add(
                        s, _handed_over(session_id, self.instance_id, successor_id, "handoff")
                    )
                await queries.notify(s, CHANNEL_WAKE, successor_id)
            self._held.pop(session_id, None)
            if token is None:
                logger.warning("handoff lost the lease first session_id=%s", session_id)
            else:
                logger.info(
                    "call handed over session_id=%s to=%s in %.3fs",
                    session_id,
                    successor_id,
                    time.monotonic() - started,
                )
        except Exception:
            logger.exception("handoff failed session_id=%s", session_id)
        finally:
            self._busy.discard(session_id)

    # ---- commands -----------------------------------------------------------------------

    async def _serve_commands(self) -> None:
        assert self._host is not None
        async with self._sessionmaker() as s:
            commands = list(await queries.pending_commands(s, self.instance_id))
        for command in commands:
            status = CallCommandStatus.DONE
            try:
                result = await self._host.run_command(command)
            except Exception as exc:
                status = CallCommandStatus.FAILED
                result = _failure(exc)
            async with self._sessionmaker.begin() as s:
                await queries.finish_command(s, command.id, status, result)
                await queries.notify(s, CHANNEL_WAKE, f"command:{command.id}")

    async def ask_owner(
        self, session_id: str, owner_id: str, kind: str, payload: dict[str, Any]
    ) -> CallCommand:
        """Ask the call's owner to act; returns the settled command.

        Raises:
            TimeoutError: the owner did not answer within :data:`COMMAND_WAIT_S`.
        """
        async with self._sessionmaker.begin() as s:
            command_id = await queries.queue_command(s, session_id, owner_id, kind, payload)
            await queries.notify(s, CHANNEL_WAKE, owner_id)
        waiter = self._command_waiters.setdefault(command_id, asyncio.Event())
        try:
            async with asyncio.timeout(COMMAND_WAIT_S):
                while True:
                    async with self._sessionmaker() as s:
                        command = await queries.get_command(s, command_id)
                    assert command is not None
                    if command.status != CallCommandStatus.PENDING:
                        return command
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.25):
                            await waiter.wait()
                    waiter.clear()
        except TimeoutError:
            async with self._sessionmaker.begin() as s:
                await queries.finish_command(
                    s, command_id, CallCommandStatus.FAILED, {"code": "owner_unavailable"}
                )
            raise
        finally:
            self._command_waiters.pop(command_id, None)

    def notice(self, payload: str) -> None:
        """A ``NOTIFY`` on :data:`CHANNEL_WAKE`."""
        if payload.startswith("command:"):
            with contextlib.suppress(ValueError):
                waiter = self._command_waiters.get(int(payload.split(":", 1)[1]))
                if waiter is not None:
                    waiter.set()
            return
        if payload in ("*", self.instance_id):
            self._wake.set()


def _handed_over(
    session_id: str, from_instance: str | None, to_instance: str, how: str
) -> AuditEntry:
    """A ``call.handed_over`` record, of one of two ways.

    ``handoff``: the owner passed the lease on (make-before-break); ``takeover``: the lease ran
    out, or a restarted process took its calls back.
    """
    return AuditEntry(
        AuditKind.CALL_HANDED_OVER,
        Actor.BROKER,
        {"from_instance": from_instance, "to_instance": to_instance, "how": how},
        session_id=session_id,
    )


def _failure(exc: BaseException) -> dict[str, Any]:
    code = getattr(exc, "code", None)
    status = getattr(exc, "http_status", None) or getattr(exc, "status", None)
    return {
        "code": code if isinstance(code, str) else "owner_failed",
        "status": status if isinstance(status, int) else 500,
        "detail": str(exc) if code is not None else type(exc).__name__,
    }
