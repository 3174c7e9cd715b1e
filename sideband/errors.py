"""Errors raised by the sideband package.

The tree::

    SidebandError
    ├── ProviderError              the provider answered an HTTP request with a non-success status
    │   └── CallNotFoundError      404: the call is unknown to (or invisible for) this key
    │       └── CallEndedError     404 on re-attaching to a call that was attached before: it ended
    ├── ProviderTimeoutError       the provider did not answer in time
    ├── ProviderUnreachableError   the provider could not be reached at all
    │   └── CredentialError        no credential to reach it with (a token command failed)
    ├── SidebandClosedError        the sideband WebSocket closed while the controller needed it
    │   └── FrameTooLargeError     ... because a provider frame was over the size limit (1009)
    └── MalformedEventError        a provider frame was not a JSON event
"""

from __future__ import annotations


class SidebandError(Exception):
    """Root of every error the sideband package raises."""


class ProviderError(SidebandError):
    """The provider answered with a non-success HTTP status.

    Attributes:
        status: the HTTP status the provider answered with.
        code: the provider's own error code (``error.code`` of its JSON envelope), if any.
    """

    def __init__(self, status: int, code: str | None, operation: str) -> None:
        self.status = status
        self.code = code
        self.operation = operation
        # Only the status and the provider's short code: the body may echo request data.
        super().__init__(f"provider {operation} failed with HTTP {status} ({code or 'no code'})")


class ProviderCapabilityError(ProviderError):
    """The provider cannot do what was asked: it lacks the capability (no request was made).

    Attributes:
        capability: the :class:`~sideband.provider.ProviderCapabilities` flag it lacks.
        status: 501 (nothing was asked of the provider; the broker maps capabilities to
            its own 422 ``provider_lacks_capability`` before it gets here).
        code: ``"provider_lacks_capability"``.
    """

    def __init__(self, provider: str, capability: str, operation: str) -> None:
        self.status = 501
        self.code = "provider_lacks_capability"
        self.operation = operation
        self.capability = capability
        SidebandError.__init__(self, f"provider {provider} has no {capability} ({operation})")


class CallNotFoundError(ProviderError):
    """The provider does not know the call (``404 call_id_not_found``)."""


class CallEndedError(CallNotFoundError):
    """A call this broker controlled is gone: re-attaching to it answers 404.

    Raised on a reconnect (or a restarted broker's re-attach), where a 404 means the call
    ended, unlike the first attach, where it is the known race right after creation.
    """


class ProviderTimeoutError(SidebandError):
    """The provider did not answer within the configured time."""

    def __init__(self, operation: str, timeout: float) -> None:
        self.operation = operation
        self.timeout = timeout
        super().__init__(f"provider {operation} timed out after {timeout:g}s")


class ProviderUnreachableError(SidebandError):
    """The provider could not be reached (connection refused, DNS, TLS)."""

    def __init__(self, operation: str, reason: str) -> None:
        self.operation = operation
        self.reason = reason
        super().__init__(f"provider {operation} unreachable: {reason}")


class CredentialError(ProviderUnreachableError):
    """The credential a request or dial needs could not be obtained (an Entra token command).

    Callers treat it as an unreachable provider: nothing was sent, and a later attempt may
    work. ``reason`` says what failed (exit status, timeout), never the command's output.
    """

    def __init__(self, operation: str, reason: str) -> None:
        self.operation = operation
        self.reason = reason
        SidebandError.__init__(self, f"provider {operation}: no credential ({reason})")


class SidebandClosedError(SidebandError):
    """The sideband WebSocket closed.

    Attributes:
        code: the WebSocket close code (``None`` when the transport failed without one).
        reason: the close reason or the transport error text.
    """

    def __init__(self, code: int | None, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"sideband closed (code={code}, reason={reason!r})")


class FrameTooLargeError(SidebandClosedError):
    """A provider frame was larger than the sideband accepts; the socket closed with 1009.

    Only the frame's header was read, so which event it was is unknown: the controller takes
    it for the answer to the retrieve it had outstanding, if any (docs/protocol.md §9.2).

    Attributes:
        limit: the size limit in bytes the frame exceeded.
    """

    def __init__(self, limit: int, reason: str) -> None:
        self.limit = limit
        super().__init__(1009, reason)


class MalformedEventError(SidebandError):
    """A frame from the provider was not a JSON object with a string ``type``."""
