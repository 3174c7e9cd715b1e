"""``POST /api/v1/sip/incoming``: the provider's ``realtime.call.incoming`` webhook.

No API key: the provider signs each delivery (Standard Webhooks, ``BROKER_SIP_WEBHOOK_SECRET``)
and nothing is read or done before the signature is verified (401 ``invalid_signature``:
unsigned, wrong, or a timestamp more than 300 s off). Answered within a second: the line's
action runs in a task of its own (:mod:`broker.sip.calls`). A repeated ``webhook-id`` is
answered 200 ``duplicate`` and nothing is done again; another event type is answered 200
``ignored`` (so the provider does not retry it). Phone calls off (no secret or no lines
file): 404 ``sip_not_configured``.
"""

from __future__ import annotations

from typing import Literal

from aiohttp import web
from pydantic import BaseModel

from broker import app_state
from broker.api._bodies import read_body
from broker.errors import NotFoundError
from broker.sip.calls import MAX_WEBHOOK_BYTES as MAX_WEBHOOK_BYTES


async def sip_incoming(request: web.Request) -> web.Response:
    calls = request.app.get(app_state.SIP)
    if calls is None:
        raise NotFoundError("sip_not_configured", "this broker takes no phone calls")
    body = await read_body(request, MAX_WEBHOOK_BYTES)
    received = await calls.incoming(request.headers, body)
    return web.json_response(received.body())


class SipIncomingAnswer(BaseModel):
    """The webhook's answer (the provider only needs the 200)."""

    status: Literal["taken", "duplicate", "ignored"]
    """``taken``: the line's action runs now; ``duplicate``: this ``webhook-id`` was taken
    before (nothing is done again); ``ignored``: not a ``realtime.call.incoming``."""
    action: Literal["accept", "reject", "refer", "unknown"] | None = None
    """What the line says (``unknown``: no line has the dialled number; it is rejected)."""
