"""Everything that talks to the provider: calls, the sideband socket, the per-call controller.

Never imports ``broker``: the broker injects what the controller needs.
"""

from sideband.connection import SidebandConnection
from sideband.controller import (
    CallController,
    CallObserver,
    Direction,
    FunctionCall,
    ToolCallHandler,
    ToolResult,
)
from sideband.errors import (
    CallNotFoundError,
    MalformedEventError,
    ProviderError,
    ProviderTimeoutError,
    ProviderUnreachableError,
    SidebandClosedError,
    SidebandError,
)
from sideband.provider import CallAnswer, OpenAICompatibleProvider, Provider, SidebandTarget

__all__ = [
    "CallAnswer",
    "CallController",
    "CallNotFoundError",
    "CallObserver",
    "Direction",
    "FunctionCall",
    "MalformedEventError",
    "OpenAICompatibleProvider",
    "Provider",
    "ProviderError",
    "ProviderTimeoutError",
    "ProviderUnreachableError",
    "SidebandClosedError",
    "SidebandConnection",
    "SidebandError",
    "SidebandTarget",
    "ToolCallHandler",
    "ToolResult",
]
