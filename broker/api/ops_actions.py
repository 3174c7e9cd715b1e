"""Operators act on a live call (``admin``): hang it up, or change its instructions; audited."""

from __future__ import annotations

import logging

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from broker import app_state
from broker.api._auth import api_principal
from broker.api._bodies import read_json
from broker.auth.principals import Scope
from broker.db import queries
from broker.db.models import CALL_RUNNING_STATES
from broker.errors import ConflictError, UpstreamError
from broker.metrics import EndReason
from broker.record.event_classes import EventClass
from broker.record.event_log import append_event
from broker.session.service import end_unwatched_call

logger = logging.getLogger(__name__)

OPS_HANGUP_EVENT = "broker.ops_hangup"
INSTRUCTIONS_EVENT = "broker.instructions_updated"


class HangupRequest(BaseModel):
    """Body of ``POST /api/v1/sessions/{id}/hangup`` (optional)."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="ended by an operator", min_length=1, max_length=500)


async def hangup_session(request: web.Request) -> web.Response:
    """Hang the call up at the provider and end the session as ``ops_hangup``.

    Raises:
        NotFoundError: ``session_not_found``.
        ConflictError: ``session_not_live``: no call is running.
        UpstreamError: ``provider_error``: the provider did not hang up; the call goes on.
    """
    principal = await api_principal(request)
    principal.require(Scope.ADMIN)
    body = await read_json(request, HangupRequest) if request.body_exists else HangupRequest()
    session_id = request.match_info["session_id"]
    sessionmaker = request.app[app_state.SESSIONMAKER]
    row = await request.app[app_state.SESSIONS].get_row(session_id)
    if row.state not in CALL_RUNNING_STATES or row.call_id is None:
        raise ConflictError("session_not_live", f"the session is {row.state}, not in a call")
    try:
        # A supervised call ends like a leash decision: no tool call runs from now on, and
        # the supervisor records the end when the sideband closes.
        hung_up = await request.app[app_state.SUPERVISOR].end_call(
            session_id, row.call_id, EndReason.OPS_HANGUP
        )
    except KeyError:
        app = request.app
        hung_up = await end_unwatched_call(
            sessionmaker,
            app[app_state.PROVIDER],
            app[app_state.METRICS],
            session_id,
            row.call_id,
            EndReason.OPS_HANGUP,
        )
    if not hung_up:
        raise UpstreamError("provider_error", "the provider did not hang up; the call goes on")
    # Recorded either way: the operator acted, even if the call ended on its own meanwhile.
    await append_event(
        sessionmaker,
        session_id,
        {"type": OPS_HANGUP_EVENT, "reason": body.reason, "by": principal.key_id},
        EventClass.KEPT,
    )
    logger.warning(
        "call hung up by an operator session_id=%s call_id=%s by_key=%s",
        session_id,
        row.call_id,
        principal.key_id,
    )
    return web.json_response({"id": session_id, "hung_up": True})


class InstructionsRequest(BaseModel):
    """Body of ``POST /api/v1/sessions/{id}/instructions``."""

    model_config = ConfigDict(extra="forbid")

    instructions: str = Field(min_length=1, max_length=32_000)


async def update_instructions(request: web.Request) -> web.Response:
    """Change a live call's instructions over its sideband; stored and audited.

    Raises:
        NotFoundError: ``session_not_found``.
        ConflictError: ``sideband_not_connected``: no sideband of this process can send it.
    """
    principal = await api_principal(request)
    principal.require(Scope.ADMIN)
    body = await read_json(request, InstructionsRequest)
    session_id = request.match_info["session_id"]
    sessionmaker = request.app[app_state.SESSIONMAKER]
    await request.app[app_state.SESSIONS].get_row(session_id)  # 404 for an unknown session
    try:
        sent = await request.app[app_state.SUPERVISOR].update_instructions(
            session_id, body.instructions
        )
    except KeyError:
        sent = False
    if not sent:
        raise ConflictError(
            "sideband_not_connected", "the call has no connected sideband to send this on"
        )
    # Stored too: a resumed or re-attached sideband asserts the new instructions.
    async with sessionmaker.begin() as s:
        await queries.set_session_fields(s, session_id, instructions=body.instructions)
    await append_event(
        sessionmaker,
        session_id,
        {
            "type": INSTRUCTIONS_EVENT,
            "by": principal.key_id,
            "instructions": body.instructions,
        },
        EventClass.KEPT,
    )
    logger.warning(
        "instructions changed by an operator session_id=%s by_key=%s chars=%d",
        session_id,
        principal.key_id,
        len(body.instructions),
    )
    return web.json_response({"id": session_id, "updated": True})
