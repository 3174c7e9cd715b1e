"""Why a session ended: the one list of reasons, for the row, the events and the metrics.

A session's stored ``end_reason`` is a member's value, or for two members that value with
detail after it: ``provider_closed:1000`` (the close code) and ``offer: the provider did not
answer in 10s`` (what failed). :meth:`EndReason.text` builds that text and
:meth:`EndReason.of` reads it back.
"""

from __future__ import annotations

import enum
from typing import Final


class EndReason(enum.StrEnum):
    """Why a session ended or failed."""

    MAX_DURATION = "max_duration"
    """The call reached its ``max_duration_s`` (the leash, or the duration backstop)."""
    IDLE_TIMEOUT = "idle_timeout"
    TOOL_BUDGET = "tool_budget"
    TAMPER = "tamper"
    """The page tampered with the session under ``on_tamper: hangup``."""
    TAMPER_REPEATED = "tamper_repeated"
    """The page kept tampering under ``on_tamper: revert`` and was cut off."""
    PROVIDER_CLOSED = "provider_closed"
    """The provider closed the sideband cleanly: the call is over (detail: the close code)."""
    HANGUP = "hangup"
    """The page hung up through the broker (``POST /api/v1/sessions/{id}/end``)."""
    OPS_HANGUP = "ops_hangup"
    """An operator hung the call up (``POST /api/v1/sessions/{id}/hangup``)."""
    TRANSFERRED = "transferred"
    """An operator transferred the phone call (SIP ``refer``): it left for another number."""
    CALL_GONE = "call_gone"
    """The provider no longer knew the call the sideband had attached (404)."""
    BACKEND_CLOSED = "backend_closed"
    """A trusted session's backend closed its WebSocket to the broker (or lost it)."""
    BACKEND_TOO_SLOW = "backend_too_slow"
    """A trusted session's backend fell too far behind the events relayed to it: it was
    disconnected rather than let it hold the call's controller up."""
    BROKER_STOPPED = "broker_stopped"
    """The broker instance holding a trusted session's WebSockets stopped: without it the
    session cannot go on (no other instance can take a WebSocket over)."""
    QUOTA_EXCEEDED = "quota_exceeded"
    """A token cap of the key or its tenant was reached under ``hard_cap``
    (:mod:`broker.auth.quotas`)."""
    EXPIRED = "expired"
    """Never offered before its client secret expired (the session reaper ended it)."""
    OFFER_FAILED = "offer_failed"
    """The offer failed after it claimed the session (detail: why); the session ``failed``."""
    ACCEPT_FAILED = "accept_failed"
    """A phone call could not be answered (detail: why, e.g. ``call_id_not_found``,
    ``timeout``); the session ``failed`` (:mod:`broker.sip.accept`)."""
    FAILED = "failed"
    """Stored by older brokers only (``sideband: …``); kept so their rows still read."""
    OTHER = "other"
    """A stored text no member describes."""

    def text(self, detail: str | None = None) -> str:
        """The session's ``end_reason``: the value, or the value's prefix and ``detail``.

        Raises:
            ValueError: ``detail`` for a reason that carries none.
        """
        if detail is None:
            return self.value
        if self not in _PREFIXES:
            raise ValueError(f"{self.value} carries no detail")
        return _PREFIXES[self] + detail

    @property
    def label(self) -> EndReason:
        """The ``reason`` label of ``broker_sessions_ended_total``.

        Both tamper ends count as ``tamper``: the label set predates ``tamper_repeated``.
        """
        return EndReason.TAMPER if self is EndReason.TAMPER_REPEATED else self

    @classmethod
    def of(cls, text: str | None) -> EndReason:
        """The member a stored ``end_reason`` was written for (``other`` if none)."""
        if not text:
            return cls.OTHER
        if text in _VALUES:
            return cls(text)
        for member, prefix in _PREFIXES.items():
            if text.startswith(prefix.rstrip()):
                return member
        if text.startswith(_LEGACY_SIDEBAND):
            return cls.CALL_GONE if "not found" in text else cls.FAILED
        return cls.OTHER


_PREFIXES: Final = {
    EndReason.PROVIDER_CLOSED: "provider_closed:",
    EndReason.OFFER_FAILED: "offer: ",
    EndReason.ACCEPT_FAILED: "accept_failed: ",
}
"""How detail follows the reasons that carry it (the offer's predates this enum)."""
_VALUES: Final = frozenset(reason.value for reason in EndReason)
_LEGACY_SIDEBAND: Final = "sideband:"
