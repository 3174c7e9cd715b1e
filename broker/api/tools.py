"""The tool kill switch: operators list the tools and switch one off (or on) for every session.

A switched-off tool's new calls are denied with ``tool_disabled`` (the model gets an output
saying so) from the next call on, in sessions already live and in every broker process: the
dispatcher reads the switch from the database for each call. Calls already running finish.

The switch acts on every tenant's sessions, so only a cross-tenant ``admin`` throws it: a
tenant's admin gets ``403 cross_tenant_required`` once another tenant exists (on a
single-team broker its admin keys keep the switch). The list is readable by any tenant.
"""

from __future__ import annotations

import logging

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from broker import app_state
from broker.api._auth import api_principal
from broker.api._bodies import read_json
from broker.api._times import iso
from broker.api.schemas import ToolList, ToolSwitch, respond
from broker.auth.principals import Scope
from broker.auth.tenants import require_every_tenants_admin
from broker.db import queries
from broker.errors import NotFoundError
from broker.tools import kill_switch

logger = logging.getLogger(__name__)


class DisableToolRequest(BaseModel):
    """Body of ``POST /api/v1/tools/{tool}/disable`` (optional)."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=500)


def _known_tool(request: web.Request) -> str:
    tool = request.match_info["tool"]
    if tool not in request.app[app_state.TOOLS]:
        raise NotFoundError("unknown_tool", "the broker has no tool of that name")
    return tool


async def list_tools(request: web.Request) -> web.Response:
    """``GET /api/v1/tools`` (``monitor:read``): every configured tool and its switch."""
    (await api_principal(request)).require(Scope.MONITOR_READ)
    async with request.app[app_state.SESSIONMAKER]() as s:
        off = {row.tool: row for row in await queries.disabled_tools(s)}
    registry = request.app[app_state.TOOLS]
    tools: list[ToolSwitch] = []
    for name in sorted(registry):
        row = off.get(name)
        tools.append(
            ToolSwitch(
                name=name,
                disabled=row is not None,
                disabled_at=iso(row.disabled_at) if row else None,
                disabled_by=row.disabled_by if row else None,
                reason=row.reason if row else None,
            )
        )
    return respond(ToolList(tools=tools))


async def disable_tool(request: web.Request) -> web.Response:
    """``POST /api/v1/tools/{tool}/disable`` (``admin``; cross-tenant, with several tenants)."""
    principal = await api_principal(request)
    principal.require(Scope.ADMIN)
    await require_every_tenants_admin(
        request.app[app_state.SESSIONMAKER], principal, "the kill switch"
    )
    tool = _known_tool(request)
    body = await read_json(request, DisableToolRequest) if request.body_exists else None
    row = await kill_switch.switch_off(
        request.app[app_state.SESSIONMAKER], tool, principal.key_id, body.reason if body else None
    )
    logger.warning("tool switched off tool=%s by_key=%s", tool, principal.key_id)
    return respond(
        ToolSwitch(
            name=tool,
            disabled=True,
            disabled_at=iso(row.disabled_at),
            disabled_by=row.disabled_by,
            reason=row.reason,
        )
    )


async def enable_tool(request: web.Request) -> web.Response:
    """``POST /api/v1/tools/{tool}/enable`` (``admin``; cross-tenant, with several tenants)."""
    principal = await api_principal(request)
    principal.require(Scope.ADMIN)
    await require_every_tenants_admin(
        request.app[app_state.SESSIONMAKER], principal, "the kill switch"
    )
    tool = _known_tool(request)
    was_off = await kill_switch.switch_on(
        request.app[app_state.SESSIONMAKER], tool, principal.key_id
    )
    if was_off:
        logger.warning("tool switched on tool=%s by_key=%s", tool, principal.key_id)
    return respond(ToolSwitch(name=tool, disabled=False))
