"""Everything that talks to the provider: calls, the sideband socket, the per-call controller.

Never imports ``broker``: the broker injects what the controller needs.
"""

from sideband.azure import ApiKeyCredential, AzureOpenAIProvider, TokenCommand
from sideband.config_watch import ConfigOutcome
from sideband.connection import SidebandConnection
from sideband.contracts import (
    Acknowledging,
    AckPlan,
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
    CredentialError,
    MalformedEventError,
    ProviderError,
    ProviderTimeoutError,
    ProviderUnreachableError,
    SidebandClosedError,
    SidebandError,
)
from sideband.events import is_session_probe, is_user_activity
from sideband.provider import (
    CallAnswer,
    CredentialSource,
    OpenAICompatibleProvider,
    Provider,
    ProviderCapabilities,
    SidebandTarget,
)
from sideband.tamper import (
    ForgedOutput,
    OversizedFrame,
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
    "AckPlan",
    "Acknowledging",
    "AnswerGate",
    "ApiKeyCredential",
    "AttachKind",
    "AzureOpenAIProvider",
    "Backlog",
    "CallAnswer",
    "CallController",
    "CallEndedError",
    "CallNotFoundError",
    "CallObserver",
    "ConfigOutcome",
    "CredentialError",
    "CredentialSource",
    "Direction",
    "ForgedOutput",
    "FunctionCall",
    "MalformedEventError",
    "OpenAICompatibleProvider",
    "OversizedFrame",
    "OwnedSession",
    "PageItem",
    "PageItems",
    "PagePolicy",
    "PageResponse",
    "PageResponses",
    "Provider",
    "ProviderCapabilities",
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
    "TokenCommand",
    "ToolCallHandler",
    "ToolResult",
    "Undelivered",
    "UnprovenCall",
    "is_session_probe",
    "is_user_activity",
]
