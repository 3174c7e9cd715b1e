"""Acting on a live call: an operator hangs it up or transfers it; its key or ops reconfigure.

Hanging up and transferring a phone call (``POST /api/v1/sessions/{id}/transfer``, SIP
``refer``) take ``admin``. Audited.

A tenant's admin acts on its own tenant's sessions only: another tenant's is not found (404).
Reconfiguring (``POST /api/v1/sessions/{id}/config``, and ``/instructions``, its alias for
the instructions alone) is for the key that created the session or an ``admin`` key of its
tenant (:meth:`broker.session.service.SessionService.reconfigure`).
"""

from __future__ import annotations

import re
from typing import Final

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from broker import app_state
from broker.api._auth import api_principal
from broker.api._bodies import read_json
from broker.api.schemas import (
    HungUp,
    InstructionsUpdated,
    SessionReconfigured,
    Transferred,
    respond,
)
from broker.auth.principals import Scope
from broker.session.service import MAX_TOOLS_PER_SESSION


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


class ConfigRequest(BaseModel):
    """Body of ``POST /api/v1/sessions/{id}/config``: at least one of the two."""

    # Documented, so that generated requests (schemathesis) are mostly valid ones.
    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    instructions: str | None = Field(default=None, min_length=1, max_length=32_000)
    tools: list[str] | None = Field(default=None, max_length=MAX_TOOLS_PER_SESSION)
    """The session's whole new tool set (names in the registry); ``[]``: none."""

    @field_validator("tools")
    @classmethod
    def _unique(cls, tools: list[str] | None) -> list[str] | None:
        return None if tools is None else list(dict.fromkeys(tools))

    @model_validator(mode="after")
    def _something(self) -> ConfigRequest:
        if self.instructions is None and self.tools is None:
            raise ValueError("give instructions, tools or both")
        return self


async def reconfigure_session(request: web.Request) -> web.Response:
    """Change a live call's instructions and/or tools.

    Once the provider took them they are stored and audited (``session.reconfigured``), and
    the new tools are the call's allowlist.

    Raises:
        NotFoundError: ``session_not_found`` (unknown, or another tenant's).
        ForbiddenError: ``insufficient_scope`` (neither the session's key nor an admin),
            ``tool_not_granted`` (outside the acting key's grants).
        ValidationFailedError: ``unknown_tool``, ``provider_lacks_capability``.
        ConflictError: ``session_not_live``, ``sideband_not_connected``.
        UpstreamError: ``provider_refused_update`` (502), ``provider_timeout`` (504).
    """
    principal = await api_principal(request)
    body = await read_json(request, ConfigRequest)
    session_id = request.match_info["session_id"]
    before = await request.app[app_state.SESSIONS].reconfigure(
        principal, session_id, instructions=body.instructions, tools=body.tools
    )
    tools = list(before.tools) if body.tools is None else body.tools
    return respond(
        SessionReconfigured(
            id=session_id,
            updated=True,
            tools=tools,
            instructions_changed=body.instructions is not None,
        )
    )


class InstructionsRequest(BaseModel):
    """Body of ``POST /api/v1/sessions/{id}/instructions``."""

    model_config = ConfigDict(extra="forbid")

    instructions: str = Field(min_length=1, max_length=32_000)


async def update_instructions(request: web.Request) -> web.Response:
    """Change a live call's instructions: ``/config`` with instructions alone.

    The same path, and the same rule of who may.

    Raises:
        As :func:`reconfigure_session`.
    """
    principal = await api_principal(request)
    body = await read_json(request, InstructionsRequest)
    session_id = request.match_info["session_id"]
    await request.app[app_state.SESSIONS].reconfigure(
        principal, session_id, instructions=body.instructions
    )
    return respond(InstructionsUpdated(id=session_id, updated=True))


MAX_TARGET_URI: Final = 256
TARGET_URI: Final = re.compile(
    # tel: an E.164 number (``+``, 2 to 15 digits), visual separators allowed.
    r"^tel:\+[1-9](?:[\-.]?[0-9]){1,14}$"
    # sip:/sips: an optional user part (RFC 3261 unreserved and escaped characters), a host
    # name or IPv4 address, an optional port and ``;name=value`` parameters. No spaces, no
    # angle brackets or quotes: the URI goes into a SIP header as it is.
    r"|^sips?:(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/%]+@)?"
    r"[A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9])?(?::[0-9]{1,5})?"
    r"(?:;[A-Za-z0-9\-_.!~*'()%]+(?:=[A-Za-z0-9\-_.!~*'()%]+)?)*$"
)


class TransferRequest(BaseModel):
    """Body of ``POST /api/v1/sessions/{id}/transfer``."""

    model_config = ConfigDict(extra="forbid")

    target_uri: str = Field(
        min_length=1,
        max_length=MAX_TARGET_URI,
        description="Where the call goes: ``tel:+<E.164>`` or a ``sip:``/``sips:`` URI.",
        examples=["tel:+14155550123", "sip:support@pbx.example.com"],
    )

    @field_validator("target_uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        if not TARGET_URI.match(value):
            raise ValueError("must be tel:+<E.164 number> or a sip:/sips: URI")
        return value


async def transfer_session(request: web.Request) -> web.Response:
    """Transfer a live phone call (SIP ``refer``) and end its session as ``transferred``.

    Audited (``call.referred``, the operator's key) once the provider took it.

    Raises:
        NotFoundError: ``session_not_found`` (unknown, or another tenant's).
        ValidationFailedError: ``invalid_request`` (not a tel:/sip: URI),
            ``provider_lacks_capability``.
        ConflictError: ``not_a_phone_call``, ``session_not_live``.
        UpstreamError: ``provider_error`` (502: refused), ``provider_timeout`` (504); the
            call goes on.
    """
    principal = await api_principal(request)
    principal.require(Scope.ADMIN)
    body = await read_json(request, TransferRequest)
    session_id = request.match_info["session_id"]
    await request.app[app_state.SESSIONS].transfer(principal, session_id, body.target_uri)
    return respond(Transferred(id=session_id, transferred=True, target_uri=body.target_uri))
