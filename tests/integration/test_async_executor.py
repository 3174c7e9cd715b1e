"""The ``http_async`` executor against a real HTTP backend (no broker around it): how it
reads a ``202`` (a ``Location``, a JSON ``status_url``, another origin) and a failing poll."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from broker.tools.async_executor import HttpAsyncExecutor
from broker.tools.breaker import verdict_of
from broker.tools.codes import ToolErrorCode
from broker.tools.executors import ToolContext, ToolExecutionError
from broker.tools.registry import ToolRegistry, load_registry
from tests.support.async_tool_backend import AsyncToolBackend, report


@pytest.fixture
async def backend() -> AsyncIterator[AsyncToolBackend]:
    running = AsyncToolBackend(work_seconds=0.3)
    await running.start()
    yield running
    await running.close()


@pytest.fixture
async def registry(backend: AsyncToolBackend, tmp_path: Path) -> AsyncIterator[ToolRegistry]:
    path = tmp_path / "tools.toml"
    path.write_text(backend.config_toml())
    async with httpx.AsyncClient() as http:
        yield load_registry(path, http, env={})


async def run(registry: ToolRegistry, tool: str, report_id: str) -> str:
    executor = registry[tool].executor
    assert isinstance(executor, HttpAsyncExecutor)
    return await executor({"report_id": report_id}, ToolContext("sess_x", f"call_{tool}", tool))


async def test_a_status_url_in_a_json_body_is_polled_until_done(
    registry: ToolRegistry, backend: AsyncToolBackend
) -> None:
    assert await run(registry, "json_report", "J-1") == report("J-1")
    polls = backend.polls()
    assert len(polls) >= 2 and all(p.verified for p in polls)  # 202 at least once, then 200
    # Signed as the POST, under the call's key; no callback URL without a public URL.
    assert {p.headers["Idempotency-Key"] for p in polls} == {"sess_x:call_json_report"}
    assert "X-Callback-URL" not in backend.posts_to("json_report")[0].headers


async def test_a_failing_poll_fails_the_call_as_an_http_answer_would(
    registry: ToolRegistry,
) -> None:
    """503 on the status URL: tool_http_error with the status (a breaker failure)."""
    with pytest.raises(ToolExecutionError) as err:
        await run(registry, "failing_report", "F-1")
    assert err.value.code is ToolErrorCode.TOOL_HTTP_ERROR
    assert err.value.http_status == 503
    assert verdict_of(err.value.code, err.value.http_status) is False


async def test_a_status_url_on_another_origin_is_never_polled(
    registry: ToolRegistry, backend: AsyncToolBackend
) -> None:
    with pytest.raises(ToolExecutionError) as err:
        await run(registry, "elsewhere_report", "E-1")
    assert err.value.code is ToolErrorCode.TOOL_BAD_RESPONSE
    assert "another origin" in err.value.message
    assert backend.polls() == []


async def test_a_202_with_nowhere_to_look_fails_at_once(registry: ToolRegistry) -> None:
    """No status URL and no callback possible (no public URL): tool_bad_response, no wait."""
    with pytest.raises(ToolExecutionError) as err:
        await run(registry, "callback_report", "C-1")
    assert err.value.code is ToolErrorCode.TOOL_BAD_RESPONSE
