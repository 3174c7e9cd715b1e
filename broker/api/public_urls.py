"""The absolute URLs a page calls for a session: built from ``BROKER_PUBLIC_URL``.

Pages live on other origins than the broker, so the create response carries absolute URLs
(``offer_url``, ``bridge_url``, ``end_url``) that an app backend passes through unchanged.
"""

from __future__ import annotations

import ipaddress
from typing import Final
from urllib.parse import quote

from aiohttp import web

from broker import app_state

API_PREFIX: Final = "/api/v1/sessions/"


def public_base_url(request: web.Request) -> str:
    """``BROKER_PUBLIC_URL``, or for development the address and port this request reached.

    The fallback reads the socket, not the ``Host`` header, so a client cannot steer the
    URLs; it is right on a laptop and wrong behind a proxy, hence the setting.
    """
    configured = request.app[app_state.SETTINGS].public_url
    if configured is not None:
        return configured
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if not sockname or not isinstance(sockname, tuple):
        settings = request.app[app_state.SETTINGS]
        host, port = settings.host, settings.port
    else:
        host, port = str(sockname[0]), int(sockname[1])
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass  # a name, used as it is
    return f"http://{host}:{port}"


def session_urls(request: web.Request, session_id: str) -> dict[str, str]:
    """``offer_url``, ``bridge_url`` (the tool name is appended) and ``end_url``."""
    base = public_base_url(request) + API_PREFIX + quote(session_id, safe="")
    return {
        "offer_url": f"{base}/realtime-offer",
        "bridge_url": f"{base}/tools/",
        "end_url": f"{base}/end",
    }


def connect_url(request: web.Request, session_id: str) -> str:
    """A trusted session's WebSocket for its backend (``ws:``/``wss:`` as the base is)."""
    base = public_base_url(request) + API_PREFIX + quote(session_id, safe="")
    return "ws" + base.removeprefix("http") + "/connect"
