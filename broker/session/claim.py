"""Taking a session with its single-use token, and recording its call as live.

A browser's offer spends its client secret (:mod:`broker.session.offer`); a trusted session's
backend spends its connect token (:mod:`broker.session.trusted`). Both are client secrets
(``jti`` recorded in ``used_client_secrets``), and both take their session the same way:

1. :func:`unspent_session`: the replay check, then the session (one read);
2. :func:`claim_session`: the token spent and the session moved ``created → offered``, in
   one transaction, so a replay and a second claim roll each other back;
3. the provider call is made (each its own way);
4. :func:`record_live`: ``offered → live`` with the call's id, its lease and its audit
   record, in one transaction.

What each refusal says is the caller's (``replayed``, ``taken``): a browser and a backend are
told of their own token.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import Final

from sqlalchemy import CursorResult, delete
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.audit import trail as audit
from broker.audit.records import AuditEntry
from broker.auth.principals import BrowserPrincipal
from broker.call.ownership import CallOwnership
from broker.db import queries
from broker.db.dialect import conflict_insert, dialect_name
from broker.db.models import SessionRow, SessionState, UsedClientSecret, utcnow
from broker.errors import ConflictError, UnauthorizedError

_SPENT_SECRET_GRACE: Final = timedelta(minutes=1)
"""How long a spent secret is kept past ``exp``: python-jose accepts a token during the second
after ``exp``, and replicas' clocks drift; pruning at ``exp`` would reopen a replay window."""


async def secret_spent(s: AsyncSession, jti: str) -> bool:
    return await s.get(UsedClientSecret, jti) is not None


async def spend_secret(s: AsyncSession, token: BrowserPrincipal, *, prune: bool) -> bool:
    """Record the token as used; ``False`` if it already was (a replay).

    ON CONFLICT DO NOTHING: two requests racing with one token must not turn into an
    IntegrityError; the loser sees no row inserted. With ``prune``, spent secrets well past
    their ``exp`` are deleted too: verification refuses them as expired before this table
    is consulted, so keeping them a while longer changes nothing.
    """
    now = utcnow()
    result = await s.execute(
        conflict_insert(UsedClientSecret, dialect_name(s))
        .values(
            jti=token.token_id,
            session_id=token.session_id,
            used_at=now,
            expires_at=datetime.fromtimestamp(token.expires_at, UTC),
        )
        .on_conflict_do_nothing(index_elements=["jti"])
    )
    if prune:
        await s.execute(
            delete(UsedClientSecret).where(UsedClientSecret.expires_at < now - _SPENT_SECRET_GRACE)
        )
    assert isinstance(result, CursorResult)
    return bool(result.rowcount)


async def unspent_session(
    sessionmaker: async_sessionmaker[AsyncSession],
    token: BrowserPrincipal,
    replayed: Callable[[], UnauthorizedError],
) -> SessionRow | None:
    """The token's session (``None``: there is none), once the token is known unspent.

    One read for both (a claim's latency is mostly round trips to the database); the replay
    check comes first, whatever the session's state.

    Raises:
        UnauthorizedError: ``replayed()``, the token was spent.
    """
    async with sessionmaker() as s:
        spent = await secret_spent(s, token.token_id)
        row = None if spent else await queries.get_session_row(s, token.session_id)
    if spent:
        raise replayed()
    return row


async def claim_session(
    sessionmaker: async_sessionmaker[AsyncSession],
    token: BrowserPrincipal,
    *,
    replayed: Callable[[], UnauthorizedError],
    taken: Callable[[], ConflictError],
    prune: bool = False,
    transaction: Callable[[], AbstractAsyncContextManager[AsyncSession]] | None = None,
) -> None:
    """Spend ``token`` and move its session ``created → offered`` (``offer_jti``: the token).

    One transaction: a refusal rolls the spend back with the failed claim. ``prune``: see
    :func:`spend_secret`. ``transaction``: opens it (default: ``sessionmaker.begin``); the
    live-call cap's :meth:`~broker.auth.quotas.QuotaGuard.consuming`, since the claim makes
    the call count as live.

    Raises:
        UnauthorizedError: ``replayed()``, the token was spent meanwhile.
        ConflictError: ``taken()``, the session is no longer ``created``.
        RateLimitedError: ``quota_exceeded``, from ``transaction`` (nothing is spent).
    """
    async with (transaction or sessionmaker.begin)() as s:
        if not await spend_secret(s, token, prune=prune):
            raise replayed()
        claimed = await queries.transition_session(
            s,
            token.session_id,
            [SessionState.CREATED],
            SessionState.OFFERED,
            offer_jti=token.token_id,
        )
        if not claimed:
            raise taken()


async def record_live(
    sessionmaker: async_sessionmaker[AsyncSession],
    ownership: CallOwnership,
    session_id: str,
    call_id: str,
    entry: AuditEntry,
    during: str,
) -> int:
    """``offered → live`` with ``call_id``; returns the call's lease's fencing token.

    The call is owned from its first moment: the transition, the lease and ``entry`` (audited
    only if the session went live) commit together.

    Raises:
        ConflictError: ``session_not_offered`` (409), the session changed during the
            ``during`` (``offer``, ``connect``): the caller ends the provider's call.
    """
    async with sessionmaker.begin() as s:
        live = await queries.transition_session(
            s, session_id, [SessionState.OFFERED], SessionState.LIVE, call_id=call_id
        )
        token = await queries.grant_lease(s, session_id, ownership.instance_id, ownership.ttl_s)
        if live:
            await audit.add(s, entry)
    if not live:
        raise ConflictError("session_not_offered", f"the session changed during the {during}")
    return token
