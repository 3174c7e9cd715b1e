"""Operators act on a live call (``admin``): hang it up, or change its instructions; audited.

A tenant's admin acts on its own tenant's sessions only: another tenant's is not found (404).
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from broker import app_state
from broker.api._auth import api_principal
from broker.api._bodies import read_json
from broker.api.schemas import HungUp, InstructionsUpdated, respond
from broker.auth.principals import Scope


class HangupRequest(BaseModel):
    """Body of ``POST /api/v1/sessions/{id}/hangup`` (optional)."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="ended by an operator", min_length=1, max_length=500)


async def hangup_session(request: web.Request) -> web.Response:
    """Hang the call up at the provider and end the session as ``ops_hangup``.

    Raises:
        NotFoundError: ``session_not_found`` (unknown, or another tenant's).
        ConflictError: ``session_not_live``: no call is running.
        UpstreamError: ``provider_error``: the provider did not hang up; the call goes on.
    """
    principal = await api_principal(request)
    principal.require(Scope.ADMIN)
    body = await read_json(request, HangupRequest) if request.body_exists else HangupRequest()
    session_id = request.match_info["session_id"]
    await request.app[app_state.SESSIONS].end_by_operator(principal, session_id, body.reason)
    return respond(HungUp(id=session_id, hung_up=True))


class InstructionsRequest(BaseModel):
    """Body of ``POST /api/v1/sessions/{id}/instructions``."""

    model_config = ConfigDict(extra="forbid")

    instructions: str = Field(min_length=1, max_length=32_000)


async def update_instructions(request: web.Request) -> web.Response:
    """Change a live call's instructions over its sideband; stored and audited.

    Raises:
        NotFoundError: ``session_not_found`` (unknown, or another tenant's).
        ConflictError: ``sideband_not_connected``: no sideband of this process can send it.
    """
    principal = await api_principal(request)
    principal.require(Scope.ADMIN)
    body = await read_json(request, InstructionsRequest)
    session_id = request.match_info["session_id"]
    await request.app[app_state.SESSIONS].update_instructions(
        principal, session_id, body.instructions
    )
    return respond(InstructionsUpdated(id=session_id, updated=True))
