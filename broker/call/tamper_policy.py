"""The broker's answer to a tampering browser: record it, log it, apply the session's policy.

The sideband controller has already acted on the wire when this runs (config re-applied,
forged output deleted, tainted response cancelled, see :mod:`sideband.tamper`). What is left
is the broker's part: one ``broker.tamper`` session event, one ``tamper.detected`` audit
record (the page's attempt, by the page), one warning line, and with the ``hangup`` policy
the end of the call (end reason ``tamper``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

from broker.audit.records import Actor, AuditEntry, AuditKind
from broker.record.event_log import EventRecorder
from broker.session.end_reason import EndReason
from broker.session.limits import TamperPolicy
from sideband import (
    ForgedOutput,
    OversizedFrame,
    PageItem,
    PageResponse,
    SessionDrift,
    TaintedResponse,
    Tamper,
    UnprovenCall,
)

logger = logging.getLogger(__name__)

TAMPER_EVENT: Final = "broker.tamper"
MAX_TAMPERS_REVERTED: Final = 5
"""Even under ``revert``, a browser that keeps tampering is cut off: each attempt costs the
broker a re-apply, an event and a log line, so an endless stream of them is a denial of
service, and no honest page rewrites its session five times."""


def tamper_event(tamper: Tamper, policy: TamperPolicy) -> dict[str, Any]:
    """The session event for one detection: what changed, never the browser's content.

    Instructions and tool schemas are left out on purpose: the browser chose them, they may
    be large, and they may be exactly what an attacker wants written into our logs.
    """
    event: dict[str, Any] = {"type": TAMPER_EVENT, "kind": tamper.kind, "policy": policy.value}
    # Each detection's dataclass holds only what may be recorded (names, ids, flags; see
    # sideband.tamper), so its fields are the event's.
    for field in dataclasses.fields(tamper):
        value = getattr(tamper, field.name)
        event[field.name] = list(value) if isinstance(value, tuple) else value
    return event


def tamper_record(session_id: str, event: dict[str, Any], hangup: bool) -> AuditEntry:
    """The ``tamper.detected`` audit record of one detection, by the page.

    Its body is the session event's (kind, policy, and what was refused or undone: fields
    put back, an item deleted, a response cancelled; never the page's content) and whether
    the policy hangs the call up for it.
    """
    body = {key: value for key, value in event.items() if key != "type"}
    body["hangup"] = hangup
    return AuditEntry(AuditKind.TAMPER_DETECTED, Actor.PAGE, body, session_id=session_id)


_CONSEQUENCES: Final = (TaintedResponse, UnprovenCall, PageResponse)
"""Detections that are no attempt of their own: never counted towards the cut-off, never
a hangup under ``on_tamper: hangup``."""


def _is_attempt(tamper: Tamper) -> bool:
    """Whether the detection is a page's attempt (a hangup under ``on_tamper: hangup``)."""
    # An oversized frame that answered the broker's own retrieve may be an honest call's
    # long audio turn; one the broker did not ask for was the page's doing.
    if isinstance(tamper, OversizedFrame):
        return tamper.item_id is None
    return not isinstance(tamper, _CONSEQUENCES)


def _counts(tamper: Tamper) -> bool:
    """Whether the detection counts towards the cut-off."""
    # Every oversized frame costs the broker a re-attach, and a page that times its own huge
    # frames to the broker's retrieves gets them blamed on those: no honest call loses five
    # sockets this way, so each one counts, blamed or not.
    return isinstance(tamper, OversizedFrame) or _is_attempt(tamper)


class TamperResponder:
    """The broker's :class:`sideband.TamperHandler` for one session.

    Args:
        session_id: the session, for the log line.
        policy: the session's ``tamper_policy``.
        recorder: the session's event log.
        end_call: ends the call with a reason (provider hangup); idempotent.
        count: told each detection's kind (the tamper metric); never raises.
        audit: records an audit entry in a transaction of its own (a detection changes no
            row to write it with); ``None``: not audited (a test's responder).
    """

    def __init__(
        self,
        session_id: str,
        policy: TamperPolicy,
        recorder: EventRecorder,
        end_call: Callable[[EndReason], Awaitable[None]],
        count: Callable[[str], None] = lambda kind: None,
        *,
        audit: Callable[[AuditEntry], Awaitable[None]] | None = None,
    ) -> None:
        self._audit = audit
        self._session_id = session_id
        self._policy = policy
        self._recorder = recorder
        self._end_call = end_call
        self._count_kind = count
        self._count = 0

    async def tampered(self, tamper: Tamper) -> None:
        self._count_kind(tamper.kind)
        attempt = _is_attempt(tamper)
        if _counts(tamper):
            self._count += 1
        if self._count > MAX_TAMPERS_REVERTED:
            # Already recorded MAX_TAMPERS_REVERTED times and on its way out: stay quiet.
            await self._end_call(EndReason.TAMPER_REPEATED)
            return
        event = tamper_event(tamper, self._policy)
        self._recorder.record("broker", event)
        hangup = self._policy is TamperPolicy.HANGUP and attempt
        if self._audit is not None:
            # Written before the policy acts, so the trail reads tamper.detected, then the
            # session.ended it caused. Its own short transaction, in this handler's task (the
            # controller runs each detection as a task: the reader does not wait for it).
            await self._audit(tamper_record(self._session_id, event, hangup))
        logger.warning(
            "browser tampered with the session session_id=%s kind=%s detail=%s policy=%s",
            self._session_id,
            tamper.kind,
            _summary(tamper),
            self._policy.value,
        )
        # A tainted response is the consequence of a forged output, which already applied
        # the policy; it is recorded, not punished twice. An unproven call may be the
        # model's own (made while no sideband watched), and a page-started response is the
        # page_responses policy at work: recorded, never a reason to hang up.
        if hangup:
            await self._end_call(EndReason.TAMPER)
        elif self._count == MAX_TAMPERS_REVERTED:
            await self._end_call(EndReason.TAMPER_REPEATED)


def _summary(tamper: Tamper) -> str:
    if isinstance(tamper, SessionDrift):
        return "fields=" + ",".join(tamper.fields)
    if isinstance(tamper, ForgedOutput):
        return f"item_id={tamper.item_id} deleted={tamper.deleted}"
    if isinstance(tamper, PageItem):
        return f"item_type={tamper.item_type} role={tamper.role} deleted={tamper.deleted}"
    if isinstance(tamper, UnprovenCall):
        return f"reason={tamper.reason} answered={tamper.answered}"
    if isinstance(tamper, PageResponse):
        return f"response_id={tamper.response_id} cancelled={tamper.cancelled}"
    if isinstance(tamper, OversizedFrame):
        return f"item_id={tamper.item_id} limit={tamper.limit}"
    return f"response_id={tamper.response_id} cancelled={tamper.cancelled}"
