"""Spend caps per API key and per tenant: what they are, what is spent, and the refusal.

A key's caps (``api_keys.quotas``) bound the sessions it creates; its tenant's caps
(``tenants.quotas``) bound the sessions of all the tenant's keys together. Each is optional:

- ``max_live_calls``: calls being made or running at once (``offered``, ``live``,
  ``degraded``); frees up when one ends;
- ``max_sessions_per_day``: sessions created since the UTC day began;
- ``max_tokens_per_day`` / ``max_tokens_per_month``: tokens (the model's and input
  transcription's) of the sessions created since the UTC day / month began;
- ``hard_cap``: once a token cap is reached, the owner's live calls are ended too
  (``quota_exceeded``, by :class:`broker.session.quota_watch.QuotaWatch`), not only new
  sessions refused.

A cap is reached when what is spent is at least the cap: the session that would pass it is
refused with 429 ``quota_exceeded`` (:meth:`QuotaGuard.check`), naming the cap and when it
resets. Tokens are known only as calls report them, so a running call may overshoot a token
cap by what it spends before the refusal of the next session (or before the hard cap's sweep).

**Exact under concurrency.** The count-based caps (``max_live_calls``,
``max_sessions_per_day``) are exact, whichever instance a request reaches: the write that
spends a cap (a session's insert, a claim moving it ``created → offered``, a phone call's
row) runs in :meth:`QuotaGuard.consuming`, one short transaction that counts again and
writes, serialised per owner with every other such transaction of the same key or tenant.
Without that, two requests could both count 2 of 3 and both insert.

- PostgreSQL (several instances): the transaction takes a transaction-scoped advisory lock
  (``pg_advisory_xact_lock``, :mod:`broker.auth.quota_locks`) on each owner with such a
  cap, the key's before the tenant's, then counts: every transaction takes at most one of
  each, in that order, so two never wait on each other crosswise. The lock is released at
  commit, so the next holder's count (READ COMMITTED: a snapshot per statement) sees the
  row just written. An owner without such a cap is not locked: its sessions never wait.
- SQLite (one process): an ``asyncio.Lock`` per owner, in the same order, held from before
  the transaction begins until it commits (a new transaction's reads see every commit).

The transaction holds only the count and the write (never provider I/O): a second request
for the owner waits that long. The quick checks (:meth:`QuotaGuard.check`,
:meth:`~QuotaGuard.check_live`) still run first, so a refusal comes before any other work,
as it always has; the count in the transaction is the one no race gets past. Tokens are known
only as calls report them: token caps stay spend bounds (above), not exact.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.audit import trail as audit
from broker.audit.records import Actor, AuditEntry, AuditKind
from broker.auth.principals import ApiPrincipal
from broker.auth.quota_locks import OwnerLocks, lock_owner
from broker.db.dialect import dialect_name
from broker.db.models import DEFAULT_TENANT, ApiKey, Tenant
from broker.db.queries import quota_usage
from broker.db.queries.quota_usage import Spent
from broker.errors import RateLimitedError
from broker.metrics import BrokerMetrics

logger = logging.getLogger(__name__)

MAX_CAP: Final = 10**15
"""Far above any real cap; keeps a cap within a 64-bit column's sums."""
LIVE_RETRY_AFTER_S: Final = 30
"""A live-call cap frees up when a call ends, at no known time: the client retries after this."""
Scope = Literal["key", "tenant"]
LIMITS: Final = (
    "max_live_calls",
    "max_sessions_per_day",
    "max_tokens_per_day",
    "max_tokens_per_month",
)
TOKEN_LIMITS: Final = ("max_tokens_per_day", "max_tokens_per_month")
LIVE_LIMITS: Final = ("max_live_calls",)
"""The caps an offer (a call made live) spends."""
HARD_CAP_ALONE: Final = "hard_cap_without_token_cap"
"""The code of caps whose ``hard_cap`` has no token cap to act on."""


class QuotasError(ValueError):
    """Caps that are not valid.

    ``code``: ``invalid_quotas`` or ``hard_cap_without_token_cap``; ``errors``: each
    ``{"loc", "msg"}`` (no input echoed).
    """

    def __init__(self, code: str, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{e['loc']}: {e['msg']}" for e in errors))
        self.code = code
        self.errors = errors


class Quotas(BaseModel):
    """A key's or a tenant's caps (every one optional: absent is unbounded)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    max_live_calls: int | None = Field(default=None, ge=1, le=MAX_CAP)
    max_sessions_per_day: int | None = Field(default=None, ge=1, le=MAX_CAP)
    max_tokens_per_day: int | None = Field(default=None, ge=1, le=MAX_CAP)
    max_tokens_per_month: int | None = Field(default=None, ge=1, le=MAX_CAP)
    hard_cap: bool = False
    """End live calls once a token cap is reached (not only refuse new sessions)."""

    @classmethod
    def parse(cls, raw: str | bytes) -> Quotas | None:
        """The caps in a JSON text (``null``: none).

        Raises:
            QuotasError: not a caps object, or a cap out of range.
        """
        try:
            if raw.strip() in (b"null", "null"):
                return None
            quotas = cls.model_validate_json(raw, strict=True)
        except ValidationError as exc:
            errors = [
                {"loc": ".".join(str(p) for p in err["loc"]) or "body", "msg": err["msg"]}
                for err in exc.errors(include_input=False, include_url=False)
            ]
            raise QuotasError("invalid_quotas", errors) from None
        if (
            quotas.hard_cap
            and quotas.max_tokens_per_day is None
            and quotas.max_tokens_per_month is None
        ):
            raise QuotasError(
                HARD_CAP_ALONE,
                [{"loc": "hard_cap", "msg": "needs max_tokens_per_day or max_tokens_per_month"}],
            )
        return quotas

    @classmethod
    def of(cls, stored: dict[str, Any] | None) -> Quotas | None:
        """The caps of a stored column (``None``: none).

        A stored value that no longer validates is logged and taken as none, rather than
        failing every session of its owner.
        """
        if not stored:
            return None
        try:
            return cls.model_validate(stored)
        except ValidationError:
            logger.error("stored quotas do not validate; ignored")
            return None

    def stored(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


def day_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def month_start(now: datetime) -> datetime:
    return day_start(now).replace(day=1)


def next_month(now: datetime) -> datetime:
    return (month_start(now) + timedelta(days=32)).replace(day=1)


@dataclass(frozen=True)
class CapStanding:
    """One cap: its bound, what is spent against it, and when that count starts over."""

    limit: str
    allowed: int
    used: int
    resets_at: datetime | None
    """``None`` for ``max_live_calls``: it frees up when a call ends."""

    @property
    def remaining(self) -> int:
        return max(self.allowed - self.used, 0)

    @property
    def reached(self) -> bool:
        return self.used >= self.allowed


@dataclass(frozen=True)
class Standing:
    """A key's or a tenant's caps and spending at one moment."""

    scope: Scope
    id: str
    quotas: Quotas | None
    spent: Spent
    caps: list[CapStanding] = field(default_factory=list)

    @classmethod
    def of(
        cls, scope: Scope, owner: str, quotas: Quotas | None, spent: Spent, now: datetime
    ) -> Standing:
        caps: list[CapStanding] = []
        if quotas is not None:
            tomorrow = day_start(now) + timedelta(days=1)
            used = {
                "max_live_calls": (spent.live_calls, None),
                "max_sessions_per_day": (spent.sessions_today, tomorrow),
                "max_tokens_per_day": (spent.tokens_today, tomorrow),
                "max_tokens_per_month": (spent.tokens_this_month, next_month(now)),
            }
            for limit in LIMITS:
                allowed = getattr(quotas, limit)
                if allowed is not None:
                    count, resets_at = used[limit]
                    caps.append(CapStanding(limit, allowed, count, resets_at))
        return cls(scope, owner, quotas, spent, caps)

    @property
    def tokens_reached(self) -> list[CapStanding]:
        return [cap for cap in self.caps if cap.limit in TOKEN_LIMITS and cap.reached]


def session_tenant(principal: ApiPrincipal, requested: str | None = None) -> str:
    """The tenant whose caps a principal's new session counts against.

    A tenant's key's own; a cross-tenant key's, the one it names (``requested``), else the
    default. A tenant's key naming another tenant is refused later (``cross_tenant_required``): its
    caps are its own tenant's here, so a 429 never tells it of another tenant's spending.
    """
    if principal.tenant_id is not None:
        return principal.tenant_id
    return requested or DEFAULT_TENANT


async def standing(
    s: AsyncSession, scope: Scope, owner: str, now: datetime, *, capped_only: bool = False
) -> Standing:
    """The caps and spending of key ``owner`` or tenant ``owner``.

    ``capped_only``: spending is not read for an owner without caps (it is then all 0s): the
    session's creation needs only what a cap bounds, and a big tenant's month is a scan.
    """
    if scope == "key":
        stored = await quota_usage.key_quotas(s, owner)
    else:
        stored = await quota_usage.tenant_quotas(s, owner)
    quotas = Quotas.of(stored)
    if quotas is None and capped_only:
        return Standing(scope, owner, None, Spent())
    spent = await quota_usage.spent(
        s,
        day_start=day_start(now),
        month_start=month_start(now),
        key_id=owner if scope == "key" else None,
        tenant_id=owner if scope == "tenant" else None,
    )
    return Standing.of(scope, owner, quotas, spent, now)


def refusal_of(standing: Standing, cap: CapStanding, now: datetime) -> RateLimitedError:
    """The 429 ``quota_exceeded`` for ``cap`` of ``standing``."""
    if cap.resets_at is None:
        retry_after: float = LIVE_RETRY_AFTER_S
        when = "when one of its live calls ends"
    else:
        retry_after = (cap.resets_at - now).total_seconds()
        when = f"at {rfc3339(cap.resets_at)}"
    return RateLimitedError(
        "quota_exceeded",
        f"the {standing.scope}'s {cap.limit} cap ({cap.allowed}) is reached; it frees up {when}",
        retry_after=retry_after,
        cap=standing.scope,
        limit=cap.limit,
        allowed=cap.allowed,
        used=cap.used,
        resets_at=None if cap.resets_at is None else rfc3339(cap.resets_at),
    )


def rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def exceeded_entry(
    standing: Standing, cap: CapStanding, session_id: str | None = None
) -> AuditEntry:
    """``quota.exceeded``: a cap refused a session (or, with ``session_id``, ended its call)."""
    return AuditEntry(
        AuditKind.QUOTA_EXCEEDED,
        Actor.BROKER,
        {
            "scope": standing.scope,
            "id": standing.id,
            "limit": cap.limit,
            "allowed": cap.allowed,
            "used": cap.used,
            "resets_at": None if cap.resets_at is None else rfc3339(cap.resets_at),
            "action": "ended" if session_id is not None else "refused",
        },
        session_id=session_id,
    )


def changed_entry(
    actor: str, scope: Scope, owner: str, before: dict[str, Any] | None, after: Quotas | None
) -> AuditEntry:
    """``quota.changed``: a key's or a tenant's caps were replaced (``after`` ``None``: cleared)."""
    return AuditEntry(
        AuditKind.QUOTA_CHANGED,
        actor,
        {
            "scope": scope,
            "id": owner,
            "before": before or None,
            "after": None if after is None else after.stored(),
        },
    )


async def set_quotas(
    sessionmaker: async_sessionmaker[AsyncSession],
    scope: Scope,
    owner: str,
    quotas: Quotas | None,
    *,
    actor: str,
    sees: Callable[[str | None], bool],
) -> bool:
    """Replace the caps of key or tenant ``owner``, audited in the same transaction.

    Returns ``False`` (nothing changed) if there is no such row, or the caller does not see
    its tenant (``sees``: given the tenant's id, ``None`` for a cross-tenant key).
    """
    async with sessionmaker.begin() as s:
        row: ApiKey | Tenant | None = await s.get(ApiKey if scope == "key" else Tenant, owner)
        if row is None or not sees(row.tenant_id if isinstance(row, ApiKey) else row.id):
            return False
        before = row.quotas
        row.quotas = None if quotas is None else quotas.stored()
        await audit.add(s, changed_entry(actor, scope, owner, before, quotas))
    logger.info("quotas %s scope=%s id=%s", "cleared" if quotas is None else "set", scope, owner)
    return True


class QuotaGuard:
    """Refuses a session its key's or its tenant's caps do not allow (one per app)."""

    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], metrics: BrokerMetrics
    ) -> None:
        self._sessionmaker = sessionmaker
        self._metrics = metrics
        self._locks = OwnerLocks()  # SQLite only (:meth:`_serialised`)
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)
        """What time it is (a test sets another, to see a cap reset)."""

    async def standings(
        self,
        principal: ApiPrincipal,
        now: datetime | None = None,
        *,
        tenant: str | None = None,
        capped_only: bool = False,
    ) -> tuple[Standing, Standing]:
        """The key's and its sessions' tenant's caps and spending (see :func:`standing`).

        ``tenant``: the one a cross-tenant key names (:func:`session_tenant`).
        """
        now = now or self.clock()
        owner = session_tenant(principal, tenant)
        async with self._sessionmaker() as s:
            key = await standing(s, "key", principal.key_id, now, capped_only=capped_only)
            of_tenant = await standing(s, "tenant", owner, now, capped_only=capped_only)
        return key, of_tenant

    async def check_live(self, key_id: str, tenant_id: str, now: datetime | None = None) -> None:
        """Refuse an offer that would put its key or tenant over ``max_live_calls``.

        A call counts as live from its offer, so the cap is checked again there: otherwise a
        key could make several sessions under its cap and then offer them all at once. The
        quick check: the claim's transaction counts again, exactly (:meth:`consuming`).

        Raises:
            RateLimitedError: ``quota_exceeded`` (429), as :meth:`check`.
        """
        await self._capped(key_id, tenant_id, now, limits=LIVE_LIMITS, refused="offer")

    def consuming_live(
        self, key_id: str, tenant_id: str
    ) -> AbstractAsyncContextManager[AsyncSession]:
        """:meth:`consuming` for the claim that makes a call live (``max_live_calls``)."""
        return self.consuming(key_id, tenant_id, limits=LIVE_LIMITS, refused="offer")

    async def check(
        self, principal: ApiPrincipal, now: datetime | None = None, *, tenant: str | None = None
    ) -> None:
        """Refuse a new session of ``principal`` over a cap; the refusal is audited, counted.

        Of several caps reached, the one that frees up last is named: retrying earlier would
        be refused again.

        Raises:
            RateLimitedError: ``quota_exceeded`` (429) with ``cap`` (``key`` or ``tenant``),
                ``limit``, ``allowed``, ``used``, ``resets_at`` and ``retry_after``.
        """
        await self.check_owner(principal.key_id, session_tenant(principal, tenant), now)

    async def check_owner(self, key_id: str, tenant_id: str, now: datetime | None = None) -> None:
        """:meth:`check` for a session owned by ``key_id`` in ``tenant_id``.

        ``key_id`` is an API key's, or a phone line's ``line:<name>`` (no caps of its own: its
        tenant's apply).

        Raises:
            RateLimitedError: as :meth:`check`.
        """
        await self._capped(key_id, tenant_id, now, limits=LIMITS, refused="session")

    @contextlib.asynccontextmanager
    async def consuming(
        self,
        key_id: str,
        tenant_id: str,
        *,
        limits: Collection[str] = LIMITS,
        refused: Literal["offer", "session"] = "session",
        now: datetime | None = None,
    ) -> AsyncIterator[AsyncSession]:
        """A transaction for the write that spends a cap among ``limits``, counted exactly.

        The caps are counted again inside it, serialised with every other such transaction
        of the key or the tenant (module docstring): the caller's write there cannot be
        raced past a cap. It commits when the block ends; the block does no provider I/O.

        Raises:
            RateLimitedError: ``quota_exceeded``, as :meth:`check` (audited, counted), before
                the block runs; nothing is written.
        """
        now = now or self.clock()
        async with self._serialised(key_id, tenant_id):
            async with self._sessionmaker.begin() as s:
                reached = await self._reached(s, key_id, tenant_id, now, limits, lock=True)
                if not reached:
                    yield s
        if not reached:
            return
        # Out of the (read-only) transaction and the locks: the audit write waits on neither.
        await self._refuse(reached, key_id, tenant_id, now, refused)

    def _serialised(self, key_id: str, tenant_id: str) -> AbstractAsyncContextManager[None]:
        """On SQLite (one process), each owner's in-process lock, around the transaction.

        PostgreSQL's advisory locks serialise across instances instead (:meth:`_reached`).
        """
        if self._dialect() != "sqlite":
            return contextlib.nullcontext()
        return self._locks.held((f"key:{key_id}", f"tenant:{tenant_id}"))

    def _dialect(self) -> str:
        bind = self._sessionmaker.kw.get("bind")
        return "" if bind is None else str(bind.dialect.name)

    async def _reached(
        self,
        s: AsyncSession,
        key_id: str,
        tenant_id: str,
        now: datetime,
        limits: Collection[str],
        *,
        lock: bool = False,
    ) -> list[tuple[Standing, CapStanding]]:
        """The caps among ``limits`` of the key and the tenant that are reached.

        ``lock`` (PostgreSQL): each owner with such a cap is locked for the rest of the
        transaction before its spending is counted, the key's first.
        """
        owners: list[Standing] = []
        scopes: tuple[tuple[Scope, str], ...] = (("key", key_id), ("tenant", tenant_id))
        for scope, owner in scopes:
            stored = await (
                quota_usage.key_quotas(s, owner)
                if scope == "key"
                else quota_usage.tenant_quotas(s, owner)
            )
            quotas = Quotas.of(stored)
            if quotas is None or all(getattr(quotas, limit) is None for limit in limits):
                continue  # nothing to count, nor to wait for
            if lock and dialect_name(s) == "postgresql":
                await lock_owner(s, f"{scope}:{owner}")
            spent = await quota_usage.spent(
                s,
                day_start=day_start(now),
                month_start=month_start(now),
                key_id=owner if scope == "key" else None,
                tenant_id=owner if scope == "tenant" else None,
            )
            owners.append(Standing.of(scope, owner, quotas, spent, now))
        return [
            (owner, cap)
            for owner in owners
            for cap in owner.caps
            if cap.limit in limits and cap.reached
        ]

    async def _capped(
        self,
        key_id: str,
        tenant_id: str,
        now: datetime | None,
        *,
        limits: Collection[str],
        refused: Literal["offer", "session"],
    ) -> None:
        """Refuse if a cap among ``limits`` of the key or the tenant is reached.

        A quick check, before any other work: :meth:`consuming` is the exact one.
        """
        now = now or self.clock()
        async with self._sessionmaker() as s:
            reached = await self._reached(s, key_id, tenant_id, now, limits)
        if reached:
            await self._refuse(reached, key_id, tenant_id, now, refused)

    async def _refuse(
        self,
        reached: Sequence[tuple[Standing, CapStanding]],
        key_id: str,
        tenant_id: str,
        now: datetime,
        refused: Literal["offer", "session"],
    ) -> None:
        """Audit, count and log the refusal, and raise it (``refused``: what is refused).

        Of several caps reached, the one that frees up last is named (a live-call cap, which
        frees up at no known time, counts as freeing up soon; among equals, the key's comes
        first).

        Raises:
            RateLimitedError: always.
        """
        soon = now + timedelta(seconds=LIVE_RETRY_AFTER_S)
        # max() keeps the first of equal keys: of two live-call caps, the key's is named.
        owner, cap = max(reached, key=lambda pair: pair[1].resets_at or soon)
        self._metrics.quota_refused(f"{owner.scope}.{cap.limit}", tenant_id)
        await audit.append(self._sessionmaker, exceeded_entry(owner, cap))
        logger.warning(
            "%s refused over quota key_id=%s cap=%s.%s used=%d allowed=%d",
            refused,
            key_id,
            owner.scope,
            cap.limit,
            cap.used,
            cap.allowed,
        )
        raise refusal_of(owner, cap, now)
