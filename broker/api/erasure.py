"""``DELETE /api/v1/sessions/{session_id}`` (``admin``): erase one ended conversation now.

The same erasure retention does (:mod:`broker.session.erasure`), by the acting key, audited
(``session.erased``, ``audit.erased``). The session stays readable as a tombstone: state,
times, usage, ``erased_at``; no events, transcript, tool arguments or outputs.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Final

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from broker import app_state
from broker.api._auth import api_principal
from broker.api._times import iso
from broker.api.events_stream import SETTLE_S
from broker.api.schemas import respond
from broker.audit.records import Actor
from broker.auth.principals import Scope
from broker.db.models import TERMINAL_STATES, SessionRow, SessionState
from broker.db.times import as_utc
from broker.errors import ConflictError, NotFoundError
from broker.session.erasure import erase_session_content

REASON: Final = "erased on request"
SETTLE_POLL_S: Final = 0.05


class SessionErased(BaseModel):
    """``200`` of ``DELETE /api/v1/sessions/{session_id}``: what this request erased."""

    model_config = ConfigDict(extra="forbid")

    id: str
    erased: bool
    erased_at: str
    already_erased: bool = Field(description="It had been erased before: nothing more was.")
    events: int = Field(description="Event-log rows deleted (the transcript is built from them).")
    tool_calls: int = Field(
        description="Tool calls whose arguments, outputs or errors were erased."
    )
    audit_bodies: int = Field(description="Audit record bodies erased (their headers stay).")


async def erase_session(request: web.Request) -> web.Response:
    """Erase an ended session's content; idempotent (a second call erases nothing more).

    Raises:
        ForbiddenError: ``insufficient_scope`` (no ``admin``).
        NotFoundError: ``session_not_found``: unknown, or another tenant's (no oracle).
        ConflictError: ``session_live``: not ended yet (hang it up first), or its last events
            are still being recorded.
    """
    principal = await api_principal(request)
    principal.require(Scope.ADMIN)
    session_id = request.match_info["session_id"]
    row = await request.app[app_state.SESSIONS].get_row(session_id)
    if not principal.sees_tenant(row.tenant_id):
        raise NotFoundError("session_not_found", "no such session")
    if SessionState(row.state) not in TERMINAL_STATES:
        raise _live()
    await _settled(request, row)
    erasure = await erase_session_content(
        request.app[app_state.SESSIONMAKER],
        request.app[app_state.AUDIT],
        session_id,
        REASON,
        Actor.key(principal.key_id),
    )
    return respond(
        SessionErased(
            id=session_id,
            erased=True,
            erased_at=iso(erasure.erased_at) or "",
            already_erased=erasure.already,
            events=erasure.events,
            tool_calls=erasure.tool_calls,
            audit_bodies=erasure.audit_bodies,
        )
    )


async def _settled(request: web.Request, row: SessionRow) -> None:
    """Wait (briefly) for a just-ended call's last events: erased before, they would stay.

    As the event stream decides its log complete: this process's sideband is done, and
    :data:`SETTLE_S` passed since the end for one another process ran.
    """
    supervisor = request.app[app_state.SUPERVISOR]
    loop = asyncio.get_running_loop()
    give_up = loop.time() + 2 * SETTLE_S
    while True:
        recent = row.ended_at is not None and (
            (datetime.now(UTC) - as_utc(row.ended_at)).total_seconds() < SETTLE_S
        )
        if not supervisor.running(row.id) and not recent:
            return
        if loop.time() >= give_up:
            raise _live()
        await asyncio.sleep(SETTLE_POLL_S)


def _live() -> ConflictError:
    return ConflictError(
        "session_live", "the session has not ended (or is still recording): hang it up first"
    )
