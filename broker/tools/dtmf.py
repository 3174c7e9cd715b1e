"""The keys each phone caller pressed, for the tools that declare they want them (``dtmf``).

A phone call's sideband reports every key the caller presses
(``input_audio_buffer.dtmf_event_received``); the call's keypad (:mod:`broker.call.keypad`)
adds it here, and a tool whose config says ``dtmf = true`` gets the call's keys so far, in
order: ``ToolContext.dtmf`` for a Python tool, the ``X-DTMF-Digits`` header for an HTTP tool.

Per broker process, in memory: the keys live as long as the call's sideband here. A call
taken over by another instance (or a broker restart) starts with none there; the event log
keeps every key (``broker.dtmf``) regardless.
"""

from __future__ import annotations

from typing import Final

MAX_DIGITS: Final = 64
"""The most keys kept per call (the latest): a header's worth, and more than any menu needs."""
KEYS: Final = frozenset("0123456789*#ABCD")
"""The keys a DTMF event may carry (RFC 4733's sixteen events)."""


class DtmfDigits:
    """Each live call's keys so far, by session id."""

    def __init__(self) -> None:
        self._digits: dict[str, str] = {}

    def pressed(self, session_id: str, digit: str) -> None:
        """The caller of ``session_id`` pressed ``digit`` (one of :data:`KEYS`)."""
        self._digits[session_id] = (self._digits.get(session_id, "") + digit)[-MAX_DIGITS:]

    def of(self, session_id: str) -> str:
        """The call's keys so far, oldest first (``""``: none)."""
        return self._digits.get(session_id, "")

    def forget(self, session_id: str) -> None:
        """The call's sideband here ended."""
        self._digits.pop(session_id, None)
