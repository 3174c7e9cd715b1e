"""The browser package, ``@sideband-broker/client``, served at ``/client/v1/``.

Always mounted (unlike the demo): a page on an app's own origin imports the client from the
broker it calls, so the module and its types get CORS for ``BROKER_CORS_ORIGINS`` (added by
``broker.api.cors``). ``v1`` is the package's major version: a breaking change gets a new
path, compatible fixes replace the files, so caches keep them a short while and revalidate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from aiohttp import hdrs, web

from broker.api.demo import WEB_ROOT
from broker.errors import NotFoundError

PREFIX: Final = "/client/v1/"
FILES: Final[Mapping[str, str]] = {
    "broker-client.js": "text/javascript; charset=utf-8",
    # TypeScript has no registered media type; this is the one Deno and esm.sh use.
    "broker-client.d.ts": "application/typescript; charset=utf-8",
}
"""The package's files by name, with their content types; nothing else is served here."""
CACHE_CONTROL: Final = "public, max-age=300, must-revalidate"


async def package_file(request: web.Request) -> web.FileResponse:
    """``GET /client/v1/{name}``: one of :data:`FILES`.

    Raises:
        NotFoundError: ``not_found`` for any other name.
    """
    name = request.match_info["name"]
    content_type = FILES.get(name)
    if content_type is None:
        raise NotFoundError("not_found", "no such file in the client package")
    return web.FileResponse(
        WEB_ROOT / name,
        headers={
            hdrs.CONTENT_TYPE: content_type,
            hdrs.CACHE_CONTROL: CACHE_CONTROL,
            "X-Content-Type-Options": "nosniff",
        },
    )
