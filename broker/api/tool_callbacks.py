"""``POST /api/v1/tool-callbacks/{callback_id}``: a long-running tool's backend posts its output.

No API key: the backend holds none. The callback id (256 random bits, given to the backend
in ``X-Callback-URL``) is the capability, and a signed tool's callback must also carry the
Standard Webhooks signature made with the tool's secret (:mod:`broker.tools.async_executor`
says why). The body is the output, under the rules of a ``200`` answer (non-empty text, JSON
when it says JSON, at most 64 KiB). Taken once: a second post is ``409``; an unknown or
expired id is ``404``; the call waiting for it (on any instance) reads it from the row.
"""

from __future__ import annotations

import logging
from typing import Final

from aiohttp import web

from broker import app_state
from broker.api._bodies import read_body
from broker.errors import ConflictError, NotFoundError, UnauthorizedError, ValidationFailedError
from broker.tools.async_executor import (
    CallbackError,
    CallbackStore,
    HttpAsyncExecutor,
    checked_output,
    verify_callback,
)
from broker.tools.executors import MAX_OUTPUT_BYTES

logger = logging.getLogger(__name__)

MAX_CALLBACK_BYTES: Final = MAX_OUTPUT_BYTES


async def receive_tool_callback(request: web.Request) -> web.Response:
    callback_id = request.match_info["callback_id"]
    store = CallbackStore(
        request.app[app_state.SESSIONMAKER], request.app[app_state.SETTINGS].public_url
    )
    body = await read_body(request, MAX_CALLBACK_BYTES)
    try:
        tool = await store.tool_of(callback_id)
        spec = request.app[app_state.TOOLS].get(tool)
        executor = spec.executor if spec is not None else None
        if not isinstance(executor, HttpAsyncExecutor):
            # The tool left the registry (a restart with another config): nobody can check it.
            raise CallbackError("unknown", "no such tool callback, or it expired")
        if executor.secret is not None:
            verify_callback(executor.secret, callback_id, request.headers, body)
        output = checked_output(body, request.headers.get("Content-Type", ""), request.charset)
        await store.receive(callback_id, output)
    except CallbackError as exc:
        raise _problem(exc) from None
    logger.info("tool callback received tool=%s", tool)
    return web.Response(status=204)


def _problem(exc: CallbackError) -> Exception:
    # Never names the id (it is the capability) or the expected signature.
    if exc.reason == "unsigned":
        return UnauthorizedError("invalid_signature", exc.message)
    if exc.reason == "replayed":
        return ConflictError("callback_already_received", exc.message)
    if exc.reason == "invalid":
        return ValidationFailedError("invalid_tool_output", exc.message)
    return NotFoundError("callback_not_found", exc.message)
