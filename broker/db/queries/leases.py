"""Broker instances and the leases by which one of them owns each running call.

Every time here is seconds on the database's clock (:func:`broker.db.dialect.db_now`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from broker.db.dialect import conflict_insert, db_now, dialect_name
from broker.db.models import (
    CALL_RUNNING_STATES,
    TERMINAL_STATES,
    BrokerInstance,
    CallLease,
    SessionRow,
    SidebandState,
)
from broker.db.queries._common import changed

WATCHED_SIDEBAND_STATES = (
    SidebandState.CONNECTING,
    SidebandState.CONNECTED,
    SidebandState.RECONNECTING,
)
"""A running call with no lease row in one of these is watched by a broker of the previous
release (no leases): left to it."""


def _now(s: AsyncSession) -> ColumnElement[float]:
    return db_now(dialect_name(s))


async def wait_for_locks_at_most(s: AsyncSession, seconds: float) -> None:
    """Bound how long this transaction waits for a row lock (PostgreSQL; SQLite has none).

    A take waits on a lease another instance has locked mid-commit; it must not stall the
    taker's own renewals if that instance is stuck.
    """
    if dialect_name(s) == "postgresql":
        await s.execute(text(f"SET LOCAL lock_timeout = '{max(1, round(seconds * 1000))}ms'"))


# ---- instances --------------------------------------------------------------------------


async def register_instance(
    s: AsyncSession,
    instance_id: str,
    ttl_s: float,
    *,
    shared_signing_key: bool,
    key_fingerprint: str,
    version: str,
) -> None:
    now = _now(s)
    await s.execute(
        conflict_insert(BrokerInstance, dialect_name(s))
        .values(
            id=instance_id,
            started_at=now,
            expires_at=now + ttl_s,
            draining=False,
            shared_signing_key=shared_signing_key,
            key_fingerprint=key_fingerprint,
            version=version[:40],
        )
        .on_conflict_do_nothing()
    )


async def heartbeat_instance(
    s: AsyncSession, instance_id: str, ttl_s: float, *, draining: bool
) -> None:
    await s.execute(
        update(BrokerInstance)
        .where(BrokerInstance.id == instance_id)
        .values(expires_at=_now(s) + ttl_s, draining=draining)
    )


async def remove_instance(s: AsyncSession, instance_id: str) -> None:
    await s.execute(delete(BrokerInstance).where(BrokerInstance.id == instance_id))


async def live_instances(s: AsyncSession) -> Sequence[BrokerInstance]:
    """Instances whose heartbeat has not run out (this one included)."""
    result = await s.scalars(select(BrokerInstance).where(BrokerInstance.expires_at > _now(s)))
    return result.all()


async def prune_instances(s: AsyncSession, older_than_s: float) -> None:
    await s.execute(
        delete(BrokerInstance).where(BrokerInstance.expires_at < _now(s) - older_than_s)
    )


# ---- leases -----------------------------------------------------------------------------


async def grant_lease(s: AsyncSession, session_id: str, owner_id: str, ttl_s: float) -> int:
    """Make ``owner_id`` the owner of a call that just went live; returns its fencing token.

    Runs in the transaction that moves the session to ``live``. A row left from before (a
    session cannot go live twice, but be safe) gets the next token.
    """
    token = await take_lease(s, session_id, owner_id, ttl_s, force=True)
    assert token is not None, "a forced take always takes"
    return token


def _new_owner(owner_id: str, expires_at: ColumnElement[float]) -> dict[str, Any]:
    """The values that pass a lease to ``owner_id`` under the next fencing token."""
    return {
        "owner_id": owner_id,
        "token": CallLease.token + 1,
        "expires_at": expires_at,
        "handoff": False,
        "successor_id": None,
        "successor_ready": False,
    }


async def renew_leases(s: AsyncSession, owner_id: str, ttl_s: float) -> dict[str, int]:
    """Extend ``owner_id``'s unexpired leases of running calls; ``{session_id: token}``.

    A lease that already ran out is not renewed: another instance may be taking it now. Nor
    is one whose call ended: it runs out by itself (and is pruned later).
    """
    now = _now(s)
    running = select(SessionRow.id).where(
        SessionRow.state.in_([str(x) for x in CALL_RUNNING_STATES])
    )
    rows = await s.execute(
        update(CallLease)
        .where(
            CallLease.owner_id == owner_id,
            CallLease.expires_at > now,
            CallLease.session_id.in_(running),
        )
        .values(expires_at=now + ttl_s)
        .returning(CallLease.session_id, CallLease.token)
    )
    return {row.session_id: int(row.token) for row in rows}


async def ended_among(s: AsyncSession, session_ids: Collection[str]) -> set[str]:
    """Which of ``session_ids`` have ended (or are gone)."""
    if not session_ids:
        return set()
    running = await s.scalars(
        select(SessionRow.id).where(
            SessionRow.id.in_(list(session_ids)),
            SessionRow.state.in_([str(x) for x in CALL_RUNNING_STATES]),
        )
    )
    return set(session_ids) - set(running.all())


async def orphaned_calls(s: AsyncSession, limit: int) -> Sequence[SessionRow]:
    """Running calls nobody owns: their lease ran out or was let go.

    A running call with no lease row at all was taken up by a broker of the previous release;
    it is an orphan only once that broker let its sideband go (or never had one).
    """
    now = _now(s)
    result = await s.scalars(
        select(SessionRow)
        .outerjoin(CallLease, CallLease.session_id == SessionRow.id)
        .where(
            SessionRow.state.in_([str(x) for x in CALL_RUNNING_STATES]),
            SessionRow.call_id.is_not(None),
            or_(
                CallLease.expires_at <= now,
                and_(
                    CallLease.session_id.is_(None),
                    SessionRow.sideband_state.not_in([str(x) for x in WATCHED_SIDEBAND_STATES]),
                ),
            ),
        )
        .order_by(SessionRow.live_at)
        .limit(limit)
    )
    return result.all()


async def take_lease(
    s: AsyncSession, session_id: str, owner_id: str, ttl_s: float, *, force: bool = False
) -> int | None:
    """Take the call if its lease ran out (or ``force``: this process is its only broker).

    Returns the new fencing token, or ``None`` if another instance holds (or just took) it.
    """
    now = _now(s)
    condition = [CallLease.session_id == session_id]
    if not force:
        condition.append(CallLease.expires_at <= now)
    token = await s.scalar(
        update(CallLease)
        .where(*condition)
        .values(_new_owner(owner_id, now + ttl_s))
        .returning(CallLease.token)
    )
    if token is not None:
        return int(token)
    inserted = await s.execute(
        conflict_insert(CallLease, dialect_name(s))
        .values(
            session_id=session_id,
            owner_id=owner_id,
            token=1,
            expires_at=now + ttl_s,
            handoff=False,
            successor_ready=False,
        )
        .on_conflict_do_nothing()
    )
    return 1 if changed(inserted) else None


async def release_leases(
    s: AsyncSession, owner_id: str, session_ids: Collection[str] | None = None
) -> int:
    """Let calls go at once (expired now): any instance may take them; returns how many."""
    condition = [CallLease.owner_id == owner_id]
    if session_ids is not None:
        condition.append(CallLease.session_id.in_(list(session_ids)))
    result = await s.execute(
        update(CallLease).where(*condition).values(expires_at=_now(s) - 1.0, handoff=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def ask_handoff(s: AsyncSession, owner_id: str) -> int:
    """Offer every call of a stopping instance to the others; returns how many."""
    result = await s.execute(
        update(CallLease)
        .where(CallLease.owner_id == owner_id, CallLease.expires_at > _now(s))
        .values(handoff=True)
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def claim_successions(s: AsyncSession, successor_id: str, limit: int) -> list[str]:
    """Become the successor of calls offered for handoff; returns their session ids."""
    now = _now(s)
    offered = (
        select(CallLease.session_id)
        .where(
            CallLease.handoff.is_(True),
            CallLease.successor_id.is_(None),
            CallLease.owner_id != successor_id,
            CallLease.expires_at > now,
        )
        .limit(limit)
        .scalar_subquery()
    )
    rows = await s.scalars(
        update(CallLease)
        .where(CallLease.session_id.in_(offered), CallLease.successor_id.is_(None))
        .values(successor_id=successor_id)
        .returning(CallLease.session_id)
    )
    return list(rows.all())


async def give_up_succession(s: AsyncSession, session_id: str, successor_id: str) -> None:
    """The successor could not attach: another may try."""
    await s.execute(
        update(CallLease)
        .where(CallLease.session_id == session_id, CallLease.successor_id == successor_id)
        .values(successor_id=None, successor_ready=False)
    )


async def successor_ready(s: AsyncSession, session_id: str, successor_id: str) -> bool:
    result = await s.execute(
        update(CallLease)
        .where(CallLease.session_id == session_id, CallLease.successor_id == successor_id)
        .values(successor_ready=True)
    )
    return changed(result)


async def ready_successors(s: AsyncSession, owner_id: str) -> dict[str, str]:
    """``{session_id: successor_id}`` for this owner's calls whose successor is attached."""
    rows = await s.execute(
        select(CallLease.session_id, CallLease.successor_id).where(
            CallLease.owner_id == owner_id,
            CallLease.handoff.is_(True),
            CallLease.successor_ready.is_(True),
        )
    )
    return {row.session_id: row.successor_id for row in rows if row.successor_id is not None}


async def hand_over(
    s: AsyncSession, session_id: str, owner_id: str, token: int, successor_id: str, ttl_s: float
) -> int | None:
    """Pass the lease to its ready successor; the new token, or ``None`` if not ours now."""
    new = await s.scalar(
        update(CallLease)
        .where(
            CallLease.session_id == session_id,
            CallLease.owner_id == owner_id,
            CallLease.token == token,
            CallLease.successor_id == successor_id,
        )
        .values(_new_owner(successor_id, _now(s) + ttl_s))
        .returning(CallLease.token)
    )
    return None if new is None else int(new)


async def lease_of(s: AsyncSession, session_id: str) -> CallLease | None:
    """The call's lease, if it is held now (unexpired)."""
    result = await s.scalars(
        select(CallLease).where(CallLease.session_id == session_id, CallLease.expires_at > _now(s))
    )
    return result.first()


async def leases_owned_by(
    s: AsyncSession, owner_id: str, session_ids: Collection[str]
) -> dict[str, int]:
    """Which of ``session_ids`` ``owner_id`` holds now, with their tokens."""
    if not session_ids:
        return {}
    rows = await s.execute(
        select(CallLease.session_id, CallLease.token).where(
            CallLease.session_id.in_(list(session_ids)),
            CallLease.owner_id == owner_id,
            CallLease.expires_at > _now(s),
        )
    )
    return {row.session_id: int(row.token) for row in rows}


async def prune_leases(s: AsyncSession, ended_before: datetime) -> int:
    """Drop the leases of sessions that ended before ``ended_before``.

    Kept a while after the end: the owner's last writes about the call (its final events)
    are fenced by the lease, and come just after the end.
    """
    ended = select(SessionRow.id).where(
        SessionRow.state.in_([str(x) for x in TERMINAL_STATES]),
        SessionRow.ended_at < ended_before,
    )
    result = await s.execute(delete(CallLease).where(CallLease.session_id.in_(ended)))
    return int(getattr(result, "rowcount", 0) or 0)


async def calls_leased_to(s: AsyncSession, owner_id: str) -> Sequence[SessionRow]:
    """Running calls whose lease names ``owner_id`` (a restarted instance's own, by name)."""
    result = await s.scalars(
        select(SessionRow)
        .join(CallLease, CallLease.session_id == SessionRow.id)
        .where(
            CallLease.owner_id == owner_id,
            SessionRow.state.in_([str(x) for x in CALL_RUNNING_STATES]),
            SessionRow.call_id.is_not(None),
        )
    )
    return result.all()
