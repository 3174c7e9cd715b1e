"""The emulator's app factory: routes, error middleware, state keys and cleanup."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from ._flavors import API_PREFIX
from ._keys import CALL_REGISTRY, CLIENT_SECRETS, FAULTS, SETTINGS
from .admin import add_admin_routes
from .call_registry import CallRegistry
from .errors import ApiError, error_envelope
from .faults import Faults
from .secrets import ClientSecretStore
from .sessions import realtime_handler
from .settings import EmulatorSettings
from .signaling import (
    accept_call,
    create_call,
    create_client_secret,
    hangup_call,
    refer_call,
    reject_call,
)

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render every failure as the OpenAI error envelope (docs/protocol.md §1.1 "Errors")."""
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.to_response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = "not_found" if exc.status == 404 else f"http_{exc.status}"
        # Keep only Allow (405); the exception's own Content-Type would clash with JSON.
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return web.json_response(error_envelope(exc.reason, code), status=exc.status, headers=allow)
    except Exception:
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return web.json_response(
            error_envelope(
                "The server had an error processing your request.",
                "server_error",
                type_="server_error",
            ),
            status=500,
        )


async def _call_registry_ctx(app: web.Application) -> AsyncIterator[None]:
    registry = app[CALL_REGISTRY]
    yield
    # Runs after on_shutdown closed the sockets: ends peers and every call task.
    await registry.close()


async def _close_sidebands(app: web.Application) -> None:
    # Sideband handlers are long-lived; close them (1001 going away) so the server's
    # graceful shutdown does not wait for them until its timeout.
    app[CALL_REGISTRY].close_sidebands(1001)


def create_app(settings: EmulatorSettings) -> web.Application:
    """Build the emulator app for ``settings``.

    Routes: ``POST /v1/realtime/client_secrets``, ``POST /v1/realtime/calls``,
    ``POST /v1/realtime/calls/{call_id}/hangup`` (and ``…/accept``, ``…/reject``,
    ``…/refer`` for phone calls, :mod:`emulator.sip`), ``GET /v1/realtime`` (sideband WebSocket
    with ``?call_id=``, a WebSocket session with only ``?model=``: :mod:`emulator.sessions`)
    and the ``/_emulator/…`` admin routes (see :mod:`emulator.admin`). The ``azure`` flavour
    mounts the first four under ``/openai/v1`` instead. The app's cleanup ends every call
    (peers, sockets, tasks).
    """
    app = web.Application(middlewares=[error_middleware])
    app[SETTINGS] = settings
    app[FAULTS] = Faults(settings.faults)
    app[CALL_REGISTRY] = CallRegistry(settings, app[FAULTS])
    app[CLIENT_SECRETS] = ClientSecretStore()
    prefix = API_PREFIX[settings.flavor]
    app.router.add_post(f"{prefix}/realtime/client_secrets", create_client_secret)
    app.router.add_post(f"{prefix}/realtime/calls", create_call)
    app.router.add_post(f"{prefix}/realtime/calls/{{call_id}}/hangup", hangup_call)
    app.router.add_post(f"{prefix}/realtime/calls/{{call_id}}/accept", accept_call)
    app.router.add_post(f"{prefix}/realtime/calls/{{call_id}}/reject", reject_call)
    app.router.add_post(f"{prefix}/realtime/calls/{{call_id}}/refer", refer_call)
    app.router.add_get(f"{prefix}/realtime", realtime_handler)
    add_admin_routes(app.router)
    app.cleanup_ctx.append(_call_registry_ctx)
    app.on_shutdown.append(_close_sidebands)
    return app
