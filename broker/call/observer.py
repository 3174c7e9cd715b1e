"""What the broker does with each event of a supervised call: the ``sideband.CallObserver``.

Every event is recorded in the session's event log; the provider's feed the call's leash
(activity), the dispatch clock and the usage metrics; the broker's own are timed (a tool
output going out) and counted (a config probe). Attaching and losing the sideband are
written on the session row, where the bridge reads who runs the session's tools, with their
audit records (``sideband.attached``, ``sideband.lost``) in the same transaction. A phone
call's keys go to its keypad (:mod:`broker.call.keypad`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final, Protocol

from broker.audit.records import Actor, AuditEntry, AuditKind
from broker.call.dispatch_clock import DispatchClock
from broker.call.keypad import Keypad
from broker.call.leash import Leash
from broker.db.models import SidebandState
from broker.metrics import BrokerMetrics, SidebandFailure, SidebandKind
from broker.record import usage
from broker.record.event_log import EventRecorder
from broker.record.stored_texts import StoredTexts
from sideband import AttachKind, Direction, is_session_probe
from sideband.events import parse_item_create, parse_observed_event

logger = logging.getLogger(__name__)

OBSERVED: Final = Leash.WATCHES | DispatchClock.WATCHES | usage.WATCHES
"""The provider events read here: each is parsed once, on arrival; the rest are only recorded."""


class SidebandStateWriter(Protocol):
    """Records the sideband's state on the session row, with ``entries`` in one transaction."""

    async def __call__(self, state: SidebandState, *entries: AuditEntry) -> None: ...


class SessionObserver:
    """The observer of one supervised call.

    Args:
        session_id: the session, for the log lines.
        recorder: the session's event log.
        leash: the call's leash (fed the provider's events).
        metrics: the app's metrics.
        set_sideband_state: records the sideband's state on the session row, with the audit
            entries given (in one transaction).
        instance_id: this broker instance, named in the audit records.
        keypad: a phone call's keypad; ``None``: keys are only recorded as they came.
    """

    def __init__(
        self,
        session_id: str,
        recorder: EventRecorder,
        leash: Leash,
        metrics: BrokerMetrics,
        set_sideband_state: SidebandStateWriter,
        *,
        instance_id: str | None = None,
        keypad: Keypad | None = None,
        on_attached: Callable[[], None] | None = None,
    ) -> None:
        self._session_id = session_id
        self._keypad = keypad
        self._on_attached = on_attached
        """Told once each attach is recorded (a phone call's greeting waits for it)."""
        self._instance_id = instance_id
        self._recorder = recorder
        self._leash = leash
        self._metrics = metrics
        self._set_sideband_state = set_sideband_state
        self._dispatch = DispatchClock()
        self._texts = StoredTexts()

    def keep_as(self, text: str, stored: str) -> None:
        """A message of the broker's holding ``text`` is logged holding ``stored``."""
        self._texts.keep_as(text, stored)

    def record(self, direction: Direction, event: dict[str, Any]) -> None:
        # A phone line may keep the caller's keys out of the log (its keypad masks them), and
        # a note may carry what only its substitute may show (an approved result's fields).
        stored = event if self._keypad is None else self._keypad.stored(event)
        self._recorder.record(direction, self._texts.apply(stored))
        if direction == "in" and event.get("type") in OBSERVED:
            seen = parse_observed_event(event)
            self._leash.saw(seen)
            self._dispatch.saw(seen)
            # Counted here; the session's totals are folded in as the recorder stores it.
            if (used := usage.usage_of_response_done(seen)) is not None:
                self._metrics.usage_reported(used.metric_tokens())
            elif (heard := usage.usage_of_transcription(seen)) is not None:
                self._metrics.transcription_reported(
                    heard.metric_transcription_tokens(), heard.transcription_ms
                )
        elif direction == "out":
            created = parse_item_create(event)
            if created is not None and (timed := self._dispatch.sent(created)) is not None:
                self._metrics.dispatch_finished(*timed)
            if is_session_probe(event):
                self._metrics.session_probed()

    def dtmf(self, digit: str) -> str | None:
        """The caller pressed ``digit`` (``sideband.KeypadObserver``)."""
        return None if self._keypad is None else self._keypad.pressed(digit)

    def _audit(self, kind: AuditKind, body: dict[str, Any]) -> AuditEntry:
        return AuditEntry(
            kind,
            Actor.BROKER,
            {**body, "instance_id": self._instance_id},
            session_id=self._session_id,
        )

    async def attached(self, kind: AttachKind) -> None:
        await self._set_sideband_state(
            SidebandState.CONNECTED, self._audit(AuditKind.SIDEBAND_ATTACHED, {"kind": kind})
        )
        self._recorder.record("broker", {"type": "broker.sideband_attached", "kind": kind})
        if self._on_attached is not None:
            self._on_attached()
        self._metrics.sideband_connected(SidebandKind(kind))
        if kind != "reconnect":
            # A reconnect does not reset the idle clock: a flapping socket is not activity.
            self._leash.sideband_attached()

    async def detached(self, close_code: int | None) -> None:
        self._recorder.record("broker", {"type": "broker.sideband_lost", "close_code": close_code})
        if close_code in (1000, 1001):
            # A clean close is how the provider says a call ended; the reconnect attempt
            # confirms it (404) in the common case, so this is neither a warning nor a failure.
            logger.info(
                "sideband closed by the provider session_id=%s close_code=%s; checking the call",
                self._session_id,
                close_code,
            )
        else:
            logger.warning(
                "sideband lost session_id=%s close_code=%s; reconnecting",
                self._session_id,
                close_code,
            )
            self._metrics.sideband_failed(SidebandFailure.LOST)
        await self._set_sideband_state(
            SidebandState.RECONNECTING,
            self._audit(AuditKind.SIDEBAND_LOST, {"close_code": close_code}),
        )
