"""The tool registry: what tools exist, their schemas, timeouts and executors, from TOML.

Format (``BROKER_CONFIG``)::

    [tools.lookup_order]
    description = "Look up an order by its id."
    timeout = 5.0                                  # seconds, default 10
    python = "broker.tools.demo:lookup_order"      # or: http = "https://tools.internal/lookup"
    [tools.lookup_order.parameters]                # JSON Schema of the arguments object
    type = "object"
    required = ["order_id"]
    properties.order_id = { type = "string" }
"""

from __future__ import annotations

import importlib
import inspect
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from broker.tools.executors import Executor, HttpExecutor, PythonExecutor, PythonTool

_NAME_RE: Final = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
DEFAULT_TIMEOUT: Final = 10.0
MAX_TIMEOUT: Final = 300.0


class ToolConfigError(ValueError):
    """The tools file is invalid; the message names the file and the tool."""


@dataclass(frozen=True)
class ToolSpec:
    """One tool the broker can run.

    Attributes:
        parameters: JSON Schema of the arguments object (sent to the provider as-is).
        validator: compiled from ``parameters`` once, at load.
    """

    name: str
    description: str
    parameters: Mapping[str, Any]
    timeout: float
    executor: Executor
    validator: Draft202012Validator = field(repr=False, compare=False)

    def provider_definition(self) -> dict[str, Any]:
        """The ``tools[]`` entry of a realtime session config."""
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": dict(self.parameters),
        }


class ToolRegistry(Mapping[str, ToolSpec]):
    """Tools by name; immutable after load."""

    def __init__(self, tools: Mapping[str, ToolSpec]) -> None:
        self._tools = dict(tools)

    def __getitem__(self, name: str) -> ToolSpec:
        return self._tools[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tools)

    def __len__(self) -> int:
        return len(self._tools)


def load_registry(path: Path, http: httpx.AsyncClient) -> ToolRegistry:
    """Load and validate a tools file; every problem is reported before the broker starts.

    Raises:
        ToolConfigError: unreadable file, bad TOML, or an invalid tool entry.
    """
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ToolConfigError(f"{path}: cannot read tools config: {exc}") from exc
    tools = data.get("tools", {})
    if not isinstance(tools, dict):
        raise ToolConfigError(f"{path}: [tools] must be a table")
    return ToolRegistry({name: _tool(path, name, entry, http) for name, entry in tools.items()})


def _tool(path: Path, name: str, entry: Any, http: httpx.AsyncClient) -> ToolSpec:
    where = f"{path}: tool {name!r}"
    if not _NAME_RE.match(name):
        raise ToolConfigError(f"{where}: names are 1-64 of [a-zA-Z0-9_-]")
    if not isinstance(entry, dict):
        raise ToolConfigError(f"{where}: must be a table")
    description = entry.get("description", "")
    parameters = entry.get("parameters", {"type": "object", "properties": {}})
    timeout = entry.get("timeout", DEFAULT_TIMEOUT)
    if not isinstance(description, str):
        raise ToolConfigError(f"{where}: description must be a string")
    if not isinstance(parameters, dict) or parameters.get("type") != "object":
        raise ToolConfigError(f"{where}: parameters must be a JSON Schema with type 'object'")
    try:
        Draft202012Validator.check_schema(parameters)
    except SchemaError as exc:
        raise ToolConfigError(f"{where}: invalid parameters schema: {exc.message}") from exc
    if not isinstance(timeout, int | float) or not 0 < timeout <= MAX_TIMEOUT:
        raise ToolConfigError(f"{where}: timeout must be in (0, {MAX_TIMEOUT:g}] seconds")
    return ToolSpec(
        name=name,
        description=description,
        parameters=parameters,
        timeout=float(timeout),
        executor=_executor(where, entry, http),
        validator=Draft202012Validator(parameters),
    )


def _executor(where: str, entry: dict[str, Any], http: httpx.AsyncClient) -> Executor:
    target, url = entry.get("python"), entry.get("http")
    if (target is None) == (url is None):
        raise ToolConfigError(f"{where}: set exactly one of 'python' or 'http'")
    if url is not None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ToolConfigError(f"{where}: http must be an http(s) URL")
        return HttpExecutor(url, http)
    if not isinstance(target, str) or ":" not in target:
        raise ToolConfigError(f"{where}: python must be 'module:function'")
    module_name, _, attr = target.partition(":")
    try:
        func = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ToolConfigError(f"{where}: cannot import {target}: {exc}") from exc
    if not callable(func) or not inspect.iscoroutinefunction(func):
        raise ToolConfigError(f"{where}: {target} must be an async function")
    tool: PythonTool = func
    return PythonExecutor(tool)
