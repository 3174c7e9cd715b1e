"""How a tool runs: an in-process async function, or an HTTP POST to a tool backend.

Every executor gets the arguments object and a :class:`ToolContext`; it returns the output string
the model will read, or raises :class:`ToolExecutionError` with a message safe to show the model.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

import httpx

MAX_OUTPUT_BYTES: Final = 64 * 1024


@dataclass(frozen=True)
class ToolContext:
    """Who is asking: handed to every executor (HTTP tools get it as headers)."""

    session_id: str
    call_id: str
    tool: str


class ToolExecutionError(Exception):
    """The tool failed; ``code`` is stable, the message is safe to give the model."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Executor(Protocol):
    async def __call__(self, arguments: dict[str, Any], context: ToolContext) -> str: ...


PythonTool = Callable[[dict[str, Any], ToolContext], Awaitable[Any]]


def encode_output(result: Any) -> str:
    """A tool's result as the output string: strings pass through, anything else is JSON once."""
    text = result if isinstance(result, str) else json.dumps(result, separators=(",", ":"))
    if len(text.encode()) > MAX_OUTPUT_BYTES:
        raise ToolExecutionError(
            "output_too_large", f"tool output exceeds {MAX_OUTPUT_BYTES} bytes"
        )
    return text


class PythonExecutor:
    """Calls ``async def tool(arguments, context) -> Any`` in the broker process."""

    def __init__(self, func: PythonTool) -> None:
        self._func = func

    def __repr__(self) -> str:
        return f"PythonExecutor({getattr(self._func, '__qualname__', self._func)!r})"

    async def __call__(self, arguments: dict[str, Any], context: ToolContext) -> str:
        return encode_output(await self._func(arguments, context))


class HttpExecutor:
    """POSTs the arguments object as JSON to a tool backend.

    Headers ``X-Session-ID``, ``X-Call-ID`` and ``X-Tool-Name`` say who is asking. A 2xx body is
    the output (verbatim if it is text); anything else is a failure the model is told about.
    """

    def __init__(self, url: str, http: httpx.AsyncClient) -> None:
        self.url = url
        self._http = http

    def __repr__(self) -> str:
        return f"HttpExecutor({self.url!r})"

    async def __call__(self, arguments: dict[str, Any], context: ToolContext) -> str:
        headers = {
            "X-Session-ID": context.session_id,
            "X-Call-ID": context.call_id,
            "X-Tool-Name": context.tool,
        }
        try:
            resp = await self._http.post(self.url, json=arguments, headers=headers)
        except httpx.TimeoutException as exc:
            raise ToolExecutionError("tool_timeout", "the tool backend did not answer") from exc
        except httpx.HTTPError as exc:
            raise ToolExecutionError("tool_unreachable", "the tool backend is unreachable") from exc
        if not resp.is_success:
            raise ToolExecutionError(
                "tool_http_error", f"the tool backend answered {resp.status_code}"
            )
        return encode_output(resp.text)
