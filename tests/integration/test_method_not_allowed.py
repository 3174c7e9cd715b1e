"""A 405 says which methods the resource takes (``Allow``), on every route."""

from __future__ import annotations

import re
from collections import defaultdict

from aiohttp import hdrs

from broker.api import cors
from broker.api.routes import ROUTES
from tests.support.broker_server import RunningBroker


def _allowed_by_path() -> dict[str, set[str]]:
    allowed: dict[str, set[str]] = defaultdict(set)
    for route in ROUTES:
        allowed[route.path].add(route.method)
        if route.method == hdrs.METH_GET:
            allowed[route.path].add(hdrs.METH_HEAD)
        if route.name in cors.BROWSER_RESOURCES:
            allowed[route.path].add(hdrs.METH_OPTIONS)
    return allowed


async def test_every_405_carries_allow_with_the_resources_methods(broker: RunningBroker) -> None:
    allowed = _allowed_by_path()
    assert len(allowed) > 10
    # A method no route takes (PATCH and PUT are taken: a key's tool grants, quotas).
    assert all(hdrs.METH_TRACE not in methods for methods in allowed.values())
    for path, methods in allowed.items():
        url = re.sub(r"\{[^}]+\}", "x", path)
        reply = await broker.request(hdrs.METH_TRACE, url)
        assert reply.status == 405, (path, reply.status, reply.text)
        assert reply.headers["Content-Type"].startswith("application/problem+json")
        assert reply.code == "method_not_allowed"
        allow = {m.strip() for m in reply.headers[hdrs.ALLOW].split(",")}
        assert allow == methods, path


async def test_a_method_the_resource_lacks_is_405_with_allow_not_404(
    broker: RunningBroker,
) -> None:
    reply = await broker.request("DELETE", "/api/v1/sessions")
    assert reply.status == 405
    assert {m.strip() for m in reply.headers[hdrs.ALLOW].split(",")} == {"GET", "HEAD", "POST"}
