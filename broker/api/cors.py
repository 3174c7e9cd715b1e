"""CORS for what a page on another origin uses: the browser endpoints and the package.

The endpoints are the realtime offer, the tool bridge and the end; the package is the client
module and its types at ``/client/v1/``.

Only exact origins from ``Settings.cors_origins`` get ``Access-Control-Allow-Origin`` (their
own origin echoed back, never ``*``). Browsers authenticate with ``Authorization: Bearer``, not
cookies, so ``Access-Control-Allow-Credentials`` is never sent. Every other endpoint is for
servers and operators and gets no CORS headers at all.
"""

from __future__ import annotations

from typing import Final

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from broker import app_state
from broker.errors import ForbiddenError

OFFER_RESOURCE: Final = "realtime-offer"
BRIDGE_RESOURCE: Final = "bridge-tool-call"
END_RESOURCE: Final = "browser-end"
BROWSER_RESOURCES: Final = frozenset({OFFER_RESOURCE, BRIDGE_RESOURCE, END_RESOURCE})
"""Route resource names (set in ``broker/api/routes.py``) that a browser page may call."""
CLIENT_PACKAGE_RESOURCE: Final = "client-package"
"""The package's files: a cross-origin module import needs CORS, but no preflight (a GET)."""
CORS_RESOURCES: Final = BROWSER_RESOURCES | {CLIENT_PACKAGE_RESOURCE}

ALLOWED_METHODS: Final = "POST"
ALLOWED_HEADERS: Final = "Authorization, Content-Type"
PREFLIGHT_MAX_AGE: Final = "600"


def _is_browser_resource(request: web.Request) -> bool:
    resource = request.match_info.route.resource
    return resource is not None and resource.name in CORS_RESOURCES


def _allowed_origin(request: web.Request) -> str | None:
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is not None and origin in request.app[app_state.SETTINGS].cors_origins:
        return origin
    return None


async def preflight(request: web.Request) -> web.Response:
    """``OPTIONS`` on a browser endpoint: 204 for an allowed origin.

    The allow-origin header itself is added by :func:`cors_middleware`, like on every other
    response of these endpoints.

    Raises:
        ForbiddenError: ``origin_not_allowed`` (no ``Origin``, or one not in the allowlist).
    """
    if _allowed_origin(request) is None:
        raise ForbiddenError("origin_not_allowed", "this origin may not call the broker")
    return web.Response(
        status=204,
        headers={
            hdrs.ACCESS_CONTROL_ALLOW_METHODS: ALLOWED_METHODS,
            hdrs.ACCESS_CONTROL_ALLOW_HEADERS: ALLOWED_HEADERS,
            hdrs.ACCESS_CONTROL_MAX_AGE: PREFLIGHT_MAX_AGE,
        },
    )


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Add CORS headers to browser-endpoint responses, errors included.

    Registered outside the problem middleware, so a 401 or 409 problem body stays readable by
    the page that caused it.
    """
    response = await handler(request)
    if not _is_browser_resource(request):
        return response
    # The answer depends on Origin even when it carries no CORS header: caches must know.
    response.headers.add(hdrs.VARY, hdrs.ORIGIN)
    origin = _allowed_origin(request)
    if origin is not None:
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
    return response
