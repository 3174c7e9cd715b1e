"""Everything that talks to the provider: calls, the sideband socket, the per-call controller.

Never imports ``broker``: the broker injects what the controller needs.
"""

from sideband.connection import SidebandConnection
from sideband.contracts import (
    AnswerGate,
    AttachKind,
    Backlog,
    CallObserver,
    Direction,
    FunctionCall,
    ToolCallHandler,
    ToolResult,
    Undelivered,
)
from sideband.controller import CallController
from sideband.errors import (
    CallEndedError,
    CallNotFoundError,
    MalformedEventError,
    ProviderError,
    ProviderTimeoutError,
    ProviderUnreachableError,
    SidebandClosedError,
    SidebandError,
)
from sideband.events import is_session_probe, is_user_activity
from sideband.provider import CallAnswer, OpenAICompatibleProvider, Provider, SidebandTarget
from sideband.tamper import (
    ForgedOutput,
    OwnedSession,
    PageItem,
    PageItems,
    PagePolicy,
    PageResponse,
    PageResponses,
    SessionDrift,
    TaintedResponse,
    Tamper,
    TamperHandler,
    UnprovenCall,
)

__all__ = [
    "AnswerGate",
    "AttachKind",
    "Backlog",
    "CallAnswer",
    "CallController",
    "CallEndedError",
    "CallNotFoundError",
    "CallObserver",
    "Direction",
    "ForgedOutput",
    "FunctionCall",
    "MalformedEventError",
    "OpenAICompatibleProvider",
    "OwnedSession",
    "PageItem",
    "PageItems",
    "PagePolicy",
    "PageResponse",
    "PageResponses",
    "Provider",
    "ProviderError",
    "ProviderTimeoutError",
    "ProviderUnreachableError",
    "SessionDrift",
    "SidebandClosedError",
    "SidebandConnection",
    "SidebandError",
    "SidebandTarget",
    "TaintedResponse",
    "Tamper",
    "TamperHandler",
    "ToolCallHandler",
    "ToolResult",
    "Undelivered",
    "UnprovenCall",
    "is_session_probe",
    "is_user_activity",
]
