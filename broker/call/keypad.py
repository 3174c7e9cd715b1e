"""A phone call's keypad: each key the caller presses is recorded, kept, maybe a turn.

Every key goes in the session's event log as ``broker.dtmf`` ``{digit}`` (the timeline) and in
the call's keys so far (:class:`broker.tools.dtmf.DtmfDigits`, which ``dtmf = true`` tools
get). A line with a keypad turn (:class:`KeypadTurn`, the line's ``dtmf_turn``) collects keys
up to its terminator; the terminator makes them a turn: a user message of the broker's
(``dtmf_prompt``, default "The caller pressed 1234 on the keypad.") that the model answers,
so a caller can reach a tool without speaking. The message is the broker's: the controller
adds it as a note (:mod:`sideband.notes`), never mistaken for a page item.

Keys often carry PINs and card numbers, so a line may keep them out of the record
(``dtmf_record = "masked"``, :class:`DtmfRecord`): the ``broker.dtmf`` event and the stored
``input_audio_buffer.dtmf_event_received`` then carry ``"*"`` and ``masked: true`` in place of
the key (how many keys, and when, stay on the timeline), and the stored copies of a keypad
turn's message (the note sent, the provider's echoes of it) carry ``*`` per digit. The call's
``dtmf = true`` tools still get the real keys, and the model the real message: both need them.
What the model says or passes to a tool is the model's, and is recorded as it is.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Any, Final

from broker.record.event_classes import EventClass
from broker.record.event_log import EventRecorder
from broker.record.stored_texts import StoredTexts
from broker.tools.dtmf import KEYS, MAX_DIGITS, DtmfDigits

logger = logging.getLogger(__name__)

DTMF_EVENT: Final = "broker.dtmf"
DEFAULT_PROMPT: Final = "The caller pressed {digits} on the keypad."
DIGITS_PLACEHOLDER: Final = "{digits}"
MAX_KEPT_EVENTS: Final = 1000
"""``broker.dtmf`` events kept per call; past it they are coalescible (capped): a caller
holding keys down must not grow the log without bound."""
PROVIDER_DTMF_EVENT: Final = "input_audio_buffer.dtmf_event_received"
MASK: Final = "*"
"""What a masked key is recorded as (with ``masked: true``: a real ``*`` key has none)."""
MASKED_TURNS_KEPT: Final = 16
"""A masking keypad's latest turn messages, whose echoes it masks in the stored log."""


class DtmfRecord(enum.StrEnum):
    """What a phone line's event log keeps of the caller's keys (the line's ``dtmf_record``)."""

    DIGITS = "digits"
    """Every key as pressed."""
    MASKED = "masked"
    """Each key as ``"*"`` with ``masked: true``; a keypad turn's stored message masked too."""


@dataclass(frozen=True)
class KeypadTurn:
    """A line's keypad turn: keys up to ``terminator`` become a user message.

    Attributes:
        terminator: the key that ends a turn (``#`` usually); it is not part of the digits.
        prompt: the message, with ``{digits}`` replaced by the keys pressed before the
            terminator.
    """

    terminator: str
    prompt: str = DEFAULT_PROMPT

    def message(self, digits: str) -> str:
        return self.prompt.replace(DIGITS_PLACEHOLDER, digits)


class Keypad:
    """One call's keypad (the supervisor makes one per phone call's sideband).

    Args:
        session_id: the session.
        recorder: the session's event log.
        digits: where tools read the call's keys.
        turn: the line's keypad turn; ``None``: keys are recorded and kept only.
        record: what the event log keeps of the keys (the line's ``dtmf_record``).
    """

    def __init__(
        self,
        session_id: str,
        recorder: EventRecorder,
        digits: DtmfDigits,
        turn: KeypadTurn | None = None,
        record: DtmfRecord = DtmfRecord.DIGITS,
    ) -> None:
        self._session_id = session_id
        self._recorder = recorder
        self._digits = digits
        self._turn = turn
        self._masked = record is DtmfRecord.MASKED
        self._masked_turns = StoredTexts(MASKED_TURNS_KEPT)
        """The latest turn messages sent, each with its masked copy (masking only)."""
        self._pending = ""
        """Keys of the turn under way (since the last terminator)."""
        self._recorded = 0

    def pressed(self, digit: str) -> str | None:
        """The caller pressed ``digit``; the turn's user message if it ended one."""
        if digit not in KEYS:
            # The provider's event, not the caller's choice: nothing a tool could use.
            logger.warning("unknown DTMF key ignored session_id=%s", self._session_id)
            return None
        self._recorded += 1
        self._recorder.record(
            "broker",
            {"type": DTMF_EVENT, "digit": MASK, "masked": True}
            if self._masked
            else {"type": DTMF_EVENT, "digit": digit},
            None if self._recorded <= MAX_KEPT_EVENTS else EventClass.COALESCIBLE,
        )
        self._digits.pressed(self._session_id, digit)
        if self._turn is None:
            return None
        if digit != self._turn.terminator:
            self._pending = (self._pending + digit)[-MAX_DIGITS:]
            return None
        pending, self._pending = self._pending, ""
        if not pending:
            return None  # the terminator alone says nothing
        logger.info("keypad turn session_id=%s digits=%d", self._session_id, len(pending))
        message = self._turn.message(pending)
        if self._masked:
            self._masked_turns.keep_as(message, self._turn.message(MASK * len(pending)))
        return message

    def stored(self, event: dict[str, Any]) -> dict[str, Any]:
        """What the event log keeps of a sideband ``event``: itself, unless keys are masked.

        Masking, the provider's key event carries ``"*"`` (``masked: true``), and an item
        holding a keypad turn's message (the note sent, the provider's echoes) its masked
        copy. A copy when changed: the event itself goes on to be read as it came.
        """
        if not self._masked:
            return event
        if event.get("type") == PROVIDER_DTMF_EVENT:
            return {**event, "event": MASK, "masked": True}
        return self._masked_turns.apply(event)

    def forget(self) -> None:
        """The call's sideband here ended: its keys are no longer any tool's."""
        self._digits.forget(self._session_id)
