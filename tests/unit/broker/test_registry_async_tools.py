"""The registry's ``http_async`` tools: the executor kind, its keys, and the acknowledgement
defaults (``ack_after_ms``), checked at load."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from broker.tools.async_executor import DEFAULT_POLL_INTERVAL, HttpAsyncExecutor
from broker.tools.executors import HttpExecutor
from broker.tools.registry import (
    DEFAULT_ACK_AFTER_MS,
    DEFAULT_ACK_INSTRUCTIONS,
    ToolConfigError,
    ToolRegistry,
    load_registry,
)

SECRET = "unit-test-tool-secret-0123456789abcdef"


async def _load(tmp_path: Path, toml: str, *, out_of_band: bool = True) -> ToolRegistry:
    path = tmp_path / "tools.toml"
    path.write_text(toml)
    async with httpx.AsyncClient() as http:
        return load_registry(path, http, env={}, out_of_band_responses=out_of_band)


async def test_an_http_async_tool_loads_with_its_defaults(tmp_path: Path) -> None:
    """Signed like an http tool; polls every 0.5 s; acknowledged after 1500 ms by default."""
    registry = await _load(
        tmp_path, f'[tools.report]\nhttp_async = "https://tools.test/report"\nsecret = "{SECRET}"'
    )
    spec = registry["report"]
    assert isinstance(spec.executor, HttpAsyncExecutor)
    assert spec.executor.signed and spec.executor.url == "https://tools.test/report"
    assert spec.executor.poll_interval == DEFAULT_POLL_INTERVAL
    assert (spec.ack_after_ms, spec.ack_instructions) == (
        DEFAULT_ACK_AFTER_MS,
        DEFAULT_ACK_INSTRUCTIONS,
    )
    assert SECRET not in repr(spec.executor)


async def test_http_async_settings_are_taken_and_plain_tools_do_not_acknowledge(
    tmp_path: Path,
) -> None:
    registry = await _load(
        tmp_path,
        '[tools.report]\nhttp_async = "https://tools.test/r"\nunsigned = true\n'
        'poll_interval = 0.2\nack_after_ms = 1000\nack_instructions = "Say: one moment."\n'
        '[tools.plain]\nhttp = "https://tools.test/p"\nunsigned = true\n'
        '[tools.chatty]\nhttp = "https://tools.test/c"\nunsigned = true\nack_after_ms = 500\n',
    )
    report = registry["report"]
    assert isinstance(report.executor, HttpAsyncExecutor)
    assert not report.executor.signed
    assert report.executor.poll_interval == 0.2
    assert (report.ack_after_ms, report.ack_instructions) == (1000, "Say: one moment.")
    assert type(registry["plain"].executor) is HttpExecutor
    assert registry["plain"].ack_after_ms is None
    assert registry["chatty"].ack_after_ms == 500  # any executor kind may ask for one


async def test_without_out_of_band_responses_no_tool_is_acknowledged(tmp_path: Path) -> None:
    """The provider's capability is missing: not an error, the acknowledgements are off."""
    registry = await _load(
        tmp_path,
        '[tools.report]\nhttp_async = "https://tools.test/r"\nunsigned = true',
        out_of_band=False,
    )
    assert registry["report"].ack_after_ms is None


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            '[tools.x]\nhttp_async = "https://a"\nhttp = "https://a"\nunsigned = true',
            "exactly one of 'python', 'http' or 'http_async'",
        ),
        ('[tools.x]\nhttp_async = "ftp://a"\nunsigned = true', "http_async must be an http(s)"),
        ('[tools.x]\nhttp_async = "https://a"', "exactly one of secret_env, secret, or unsigned"),
        ('[tools.x]\nhttp_async = "https://a"\nsecret = "short"', "at least 32 characters"),
        ('[tools.x]\nhttp = "https://a"\nunsigned = true\npoll_interval = 1', "for http_async"),
        (
            '[tools.x]\nhttp_async = "https://a"\nunsigned = true\npoll_interval = 0',
            "poll_interval must be in",
        ),
        (
            '[tools.x]\nhttp_async = "https://a"\nunsigned = true\npoll_interval = 31',
            "poll_interval must be in",
        ),
        (
            '[tools.x]\nhttp_async = "https://a"\nunsigned = true\npoll_interval = true',
            "poll_interval must be in",
        ),
        (
            '[tools.x]\nhttp_async = "https://a"\nunsigned = true\nack_after_ms = -1',
            "ack_after_ms must be",
        ),
        (
            '[tools.x]\nhttp_async = "https://a"\nunsigned = true\nack_instructions = " "',
            "ack_instructions must be",
        ),
    ],
)
async def test_bad_http_async_configs_are_refused_at_load(
    tmp_path: Path, toml: str, message: str
) -> None:
    with pytest.raises(ToolConfigError, match=re.escape(message)):
        await _load(tmp_path, toml)
