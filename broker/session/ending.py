"""The one way a session ends, whoever ends it.

Six places end sessions: the sideband supervisor (a leash limit, tamper, the provider
closing the call, a hangup it was asked for), the duration backstop, the session reaper, a
failed offer, and a page's or an operator's hangup of a call no sideband watches. Each calls
:func:`end_session`, which in one transaction moves the session into ``ended`` or
``failed`` (only from the states the caller expects: the move succeeds once per session),
queues its ``session.ended`` webhook (when the session asked for one), writes its
``session.ended`` audit record and the event that says why; after the commit it counts the
end in ``broker_sessions_ended_total``. An end is thus never announced, audited, logged or
counted twice, nor recorded without the others.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Final

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.audit import trail as audit
from broker.call.hangup import hang_up
from broker.db import queries
from broker.db.models import CALL_RUNNING_STATES, SessionState, SidebandState
from broker.metrics import BrokerMetrics
from broker.record.event_log import EventLog
from broker.record.redaction import redact_event
from broker.session import audit_entries
from broker.session.end_reason import EndReason
from sideband import Provider

logger = logging.getLogger(__name__)

END_REASON_CHARS: Final = 200
"""The ``end_reason`` column's size; an offer failure's detail may be longer."""
WRITE_ATTEMPTS: Final = 3
"""A sideband's event recorder may take the event's ``seq`` first: the end is tried again."""


async def end_session(
    sessionmaker: async_sessionmaker[AsyncSession],
    metrics: BrokerMetrics,
    session_id: str,
    reason: EndReason,
    *,
    detail: str | None = None,
    from_states: Sequence[SessionState] = CALL_RUNNING_STATES,
    event: dict[str, Any] | None = None,
    sideband_state: SidebandState | None = None,
    actor: str | None = None,
) -> bool:
    """End the session for ``reason`` if it is in one of ``from_states``; whether this did.

    Args:
        sessionmaker: the app's (bound to its event log).
        metrics: counts the end.
        session_id: the session.
        reason: why; ``offer_failed`` fails the session, every other reason ends it.
        detail: what the stored ``end_reason`` adds to the reason (:meth:`EndReason.text`).
        from_states: the states the caller expects the session in (default: a running call).
        event: the broker event that says why, written with the end (a kept event); not
            written if the session had already ended.
        sideband_state: the sideband's state to record in the same transaction, whether or
            not this call is what ends the session (the supervisor's sideband is closed
            either way).
        actor: who ended it, for its ``session.ended`` audit record (default: as the reason
            says, :func:`broker.session.audit_entries.end_actor`); an operator's key.
    """
    state = (
        SessionState.FAILED
        if reason in (EndReason.OFFER_FAILED, EndReason.ACCEPT_FAILED)
        else SessionState.ENDED
    )
    text = reason.text(detail)[:END_REASON_CHARS]
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        try:
            async with sessionmaker.begin() as s:
                if sideband_state is not None:
                    await queries.set_sideband_state(s, session_id, sideband_state)
                ended = await queries.mark_session_ended(s, session_id, from_states, state, text)
                if ended:
                    await queries.queue_session_ended(s, session_id)
                    row = await queries.get_session_row(s, session_id)
                    if row is not None:
                        await audit.add(s, audit_entries.session_ended(row, reason, actor))
                    if event is not None:
                        await queries.add_broker_event(s, session_id, redact_event(event))
                log = EventLog.of(s)
        except IntegrityError:
            # Rolled back whole, so trying again cannot end the session twice.
            if attempt == WRITE_ATTEMPTS:
                raise
            continue
        if not ended:
            return False
        if event is not None:
            log.wakeups.notify(session_id)
        metrics.session_ended(reason)
        return True
    raise AssertionError("unreachable: the last attempt returns or raises")


async def end_unwatched_call(
    sessionmaker: async_sessionmaker[AsyncSession],
    provider: Provider,
    metrics: BrokerMetrics,
    session_id: str,
    call_id: str,
    reason: EndReason,
    actor: str | None = None,
) -> bool:
    """Hang up a call no sideband of this process watches (bridge-only, degraded) and end it.

    Returns ``False`` if the provider did not hang up (the call goes on; nothing recorded).
    """
    if not await hang_up(provider, call_id):
        return False
    await end_session(sessionmaker, metrics, session_id, reason, actor=actor)
    return True
