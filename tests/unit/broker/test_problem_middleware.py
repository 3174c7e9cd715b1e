"""The one rendering of errors, for the failures that are load, not bugs."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from broker.errors import OverloadedError, problem_middleware


async def _client(error: Exception) -> TestClient[web.Request, web.Application]:
    async def handler(_request: web.Request) -> web.Response:
        raise error

    app = web.Application(middlewares=[problem_middleware])
    app.router.add_get("/", handler)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


async def test_a_dry_connection_pool_is_a_503_overloaded_not_a_500() -> None:
    client = await _client(PoolTimeoutError("QueuePool limit of size 5 overflow 10 reached"))
    try:
        resp = await client.get("/")
        body = await resp.json(content_type=None)
    finally:
        await client.close()
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "2"
    assert (body["code"], body["reason"]) == ("overloaded", "database_pool")
    assert "QueuePool" not in body["detail"]  # the pool's message is not the client's business


async def test_overloaded_carries_its_reason_and_retry_after() -> None:
    client = await _client(OverloadedError("full", retry_after=9, reason="live_calls"))
    try:
        resp = await client.get("/")
        body = await resp.json(content_type=None)
    finally:
        await client.close()
    assert (resp.status, resp.headers["Retry-After"]) == (503, "9")
    assert (body["code"], body["reason"], body["retry_after"]) == ("overloaded", "live_calls", 9)
