"""The ops dashboard: a static page at ``/ops/`` that watches and acts on sessions.

Always mounted (unlike the demo): the page holds no secret. The operator pastes an API key
into it, the page keeps it in ``sessionStorage`` and calls the ops API with it
(``Authorization: Bearer``), from this same origin. A file is served only if its exact name is
in the listing of ``web/ops/``, so no request path can reach outside that folder. The routes
are in ``broker/api/routes.py``'s table, like every other (and so under its body limit).

Every response carries a strict Content-Security-Policy: scripts, styles and connections come
from this origin only, nothing inline runs, and the page may not be framed. Event data shown on
the page is partly browser-controlled; the page renders it as text, and the policy is the net
under that rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Final

from aiohttp import hdrs, web

from broker.api.web_files import WEB_ROOT
from broker.errors import NotFoundError

OPS_ROOT: Final = WEB_ROOT / "ops"
"""``web/ops/``: the wheel's copy, or the checkout's (broker/api/web_files.py)."""
PREFIX: Final = "/ops/"
CONTENT_TYPES: Final[Mapping[str, str]] = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}
"""The kinds of file the dashboard is made of; any other file in the folder is not served."""
CONTENT_SECURITY_POLICY: Final = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS: Final[Mapping[str, str]] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def dashboard_files(root: Path = OPS_ROOT) -> dict[str, Path]:
    """The servable files of ``root`` by name.

    Flat, and only plain files of the kinds in :data:`CONTENT_TYPES`: subfolders, dotfiles and
    symlinks (which could point anywhere) are left out.
    """
    if not root.is_dir():
        return {}
    return {
        path.name: path
        for path in sorted(root.iterdir())
        if path.is_file()
        and not path.is_symlink()
        and not path.name.startswith(".")
        and path.suffix in CONTENT_TYPES
    }


def _file_response(path: Path) -> web.FileResponse:
    headers = {
        **SECURITY_HEADERS,
        hdrs.CONTENT_TYPE: CONTENT_TYPES[path.suffix],
        # The page must never come from a cache stale against the API it talks to; the
        # assets are revalidated (cheap: FileResponse answers If-Modified-Since).
        hdrs.CACHE_CONTROL: "no-store" if path.suffix == ".html" else "no-cache",
    }
    return web.FileResponse(path, headers=headers)


def _served(name: str) -> Path:
    # A lookup by exact name in the folder's listing: "..", encoded slashes and the like
    # match nothing, so no path outside the folder can be read. Listed per request (three
    # files): no state to hold, and an edited dashboard shows without a restart.
    path = dashboard_files().get(name)
    if path is None:
        raise NotFoundError("not_found", "no such file in the ops dashboard")
    return path


async def redirect(request: web.Request) -> web.Response:
    """``GET /ops``: to ``/ops/``, where the page's relative links resolve."""
    return web.Response(status=308, headers={hdrs.LOCATION: PREFIX, **SECURITY_HEADERS})


async def page(request: web.Request) -> web.FileResponse:
    """``GET /ops/``: the dashboard page (never cached).

    Raises:
        NotFoundError: ``not_found`` (the checkout has no ``web/ops/index.html``).
    """
    return _file_response(_served("index.html"))


async def asset(request: web.Request) -> web.FileResponse:
    """``GET /ops/{name}``: one file of ``web/ops/``.

    Raises:
        NotFoundError: ``not_found`` (not a dashboard file: unknown, hidden, another kind).
    """
    return _file_response(_served(request.match_info["name"]))
