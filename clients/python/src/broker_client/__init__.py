"""A light client for the sideband broker's API, for app backends: ``httpx`` only.

``BrokerClient`` (blocking) and ``AsyncBrokerClient`` create, read, list, reconfigure and
hang up sessions; :mod:`broker_client.webhooks` verifies the broker's webhooks and tool calls with
the standard library alone.
"""

from broker_client.client import UNSET, AsyncBrokerClient, BrokerClient
from broker_client.errors import (
    AuthenticationError,
    BadRequestError,
    BrokerError,
    BrokerUnreachableError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    UnavailableError,
    UpstreamError,
    ValidationError,
)
from broker_client.models import (
    ClientSecret,
    CreatedSession,
    Session,
    SessionPage,
    SessionReconfigured,
    SessionSummary,
    Sideband,
    ToolCallRecord,
)
from broker_client.webhooks import (
    WebhookEvent,
    WebhookVerificationError,
    verify,
    verify_event,
    verify_tool_call,
)

__all__ = [
    "AsyncBrokerClient",
    "AuthenticationError",
    "BadRequestError",
    "BrokerClient",
    "BrokerError",
    "BrokerUnreachableError",
    "ClientSecret",
    "ConflictError",
    "CreatedSession",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitedError",
    "Session",
    "SessionPage",
    "SessionReconfigured",
    "SessionSummary",
    "Sideband",
    "ToolCallRecord",
    "UNSET",
    "UnavailableError",
    "UpstreamError",
    "ValidationError",
    "WebhookEvent",
    "WebhookVerificationError",
    "verify",
    "verify_event",
    "verify_tool_call",
]
