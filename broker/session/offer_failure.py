"""What a failed offer leaves behind, built from one description so that all of it agrees.

The browser gets problem+json (:meth:`OfferFailure.error`), the session row an ``end_reason``
a person can read, the session's event log a ``broker.offer_failed`` event (both written by
:func:`~broker.session.ending.end_session`), and the metrics an
:class:`~broker.metrics.OfferOutcome`. Of the provider's error body only its ``error.code``
is ever used, and only when it looks like an identifier: the rest may echo the request (the
SDP, the instructions) or carry the provider's own diagnostics.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from broker.errors import BrokerError, UpstreamError
from broker.metrics import OfferOutcome
from broker.session.end_reason import EndReason
from sideband import ProviderError, ProviderTimeoutError, ProviderUnreachableError

OFFER_FAILED_EVENT: Final = "broker.offer_failed"
_SAFE_CODE_RE: Final = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_RETRY_HINT: Final = "the session has failed; create a new session to try again"
"""The offer spent the client secret and failed the session, so a retry needs a new one."""

ProviderFailure: TypeAlias = ProviderError | ProviderTimeoutError | ProviderUnreachableError

_OUTCOMES: Final = {
    "provider_error": OfferOutcome.PROVIDER_ERROR,
    "provider_timeout": OfferOutcome.PROVIDER_TIMEOUT,
    "provider_unreachable": OfferOutcome.PROVIDER_UNREACHABLE,
}


def safe_provider_code(code: str | None) -> str | None:
    """The provider's error code if it is a short identifier (``server_error``), else ``None``."""
    return code if code is not None and _SAFE_CODE_RE.fullmatch(code) else None


def offer_outcome(failure: BaseException | None) -> OfferOutcome:
    """The metrics outcome of an offer that raised ``failure`` (``None``: it was answered)."""
    if failure is None:
        return OfferOutcome.ANSWERED
    if isinstance(failure, UpstreamError):
        return _OUTCOMES.get(failure.code, OfferOutcome.ERROR)
    if isinstance(failure, BrokerError):
        return OfferOutcome.REFUSED
    return OfferOutcome.ERROR


@dataclass(frozen=True)
class OfferFailure:
    """Why an offer failed after the session was claimed.

    Attributes:
        code: the problem code: ``provider_error``, ``provider_timeout``,
            ``provider_unreachable``, or for a failure of the broker's own,
            ``call_not_recorded`` / ``internal_error``.
        detail: what failed, a person's reading; the session's ``end_reason`` is
            ``offer: {detail}``.
        provider_status: the provider's HTTP status, when it answered.
        provider_code: the provider's ``error.code``, when it gave a safe one.
        timeout_s: the timeout the provider exceeded.
    """

    code: str
    detail: str
    provider_status: int | None = None
    provider_code: str | None = None
    timeout_s: float | None = None

    @classmethod
    def from_provider(cls, exc: ProviderFailure) -> OfferFailure:
        """Describe a failed ``create_call``."""
        if isinstance(exc, ProviderTimeoutError):
            return cls(
                "provider_timeout",
                f"the provider did not answer in {exc.timeout:g}s",
                timeout_s=exc.timeout,
            )
        if isinstance(exc, ProviderUnreachableError):
            # The reason is an exception class name (ClientConnectorError): never a URL or key.
            return cls("provider_unreachable", f"the provider was unreachable ({exc.reason})")
        code = safe_provider_code(exc.code)
        return cls(
            "provider_error",
            f"the provider refused the call with HTTP {exc.status}"
            + (f" ({code})" if code else ""),
            provider_status=exc.status,
            provider_code=code,
        )

    @classmethod
    def unexpected(cls, exc: BaseException) -> OfferFailure:
        """Describe a failure of the broker's own (only the exception's type is kept)."""
        return cls("internal_error", type(exc).__name__)

    @property
    def end_reason(self) -> str:
        """The session's ``end_reason``."""
        return EndReason.OFFER_FAILED.text(self.detail)

    def event(self) -> dict[str, Any]:
        """The ``broker.offer_failed`` session event."""
        fields = {
            "code": self.code,
            "provider_status": self.provider_status,
            "provider_code": self.provider_code,
            "timeout_s": self.timeout_s,
        }
        return {"type": OFFER_FAILED_EVENT, **{k: v for k, v in fields.items() if v is not None}}

    def error(self) -> UpstreamError:
        """The error the browser gets: 502, or 504 for a timeout.

        Only for a failure made by :meth:`from_provider`; the broker's own failures are
        reported as they were raised.
        """
        if self.code == "provider_timeout":
            assert self.timeout_s is not None
            return UpstreamError(
                self.code,
                f"the provider did not answer in {self.timeout_s:g}s; {_RETRY_HINT}",
                timeout=True,
            )
        if self.code == "provider_error":
            return UpstreamError(
                self.code,
                f"the provider refused the call (HTTP {self.provider_status}); {_RETRY_HINT}",
                provider_status=self.provider_status,
                provider_code=self.provider_code,
            )
        assert self.code == "provider_unreachable", self.code
        return UpstreamError(self.code, f"the provider could not be reached; {_RETRY_HINT}")
