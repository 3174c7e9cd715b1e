"""Keeping the provider's session config the broker's: baseline, probes, restores. No I/O.

The broker owns the whole session config except :data:`PAGE_FIELDS`, a short documented list
a page may change (how turns are detected, noise reduction, playback speed). What the
provider's session *is* comes only from the provider: the guard never trusts the request the
broker sent as a picture of the result (the provider fills in defaults, reorders tool keys,
and keeps its default instructions when sent ``""``). So:

* The **baseline** is the provider's own answer (``session.updated``) to the broker's first
  assertion of the config on a call, taken once it agrees with what the broker asserted.
* Every later ``session.updated`` (a probe's answer, a re-apply's answer, or an echo of a
  page's change, if the provider sends those to sidebands at all) is compared with the
  baseline over the owned fields; any difference is drift, answered by a restore.
* A **probe** (``session.update`` carrying only ``type``) makes the provider answer with the
  full effective session, so drift is found even when no echo of the page's change ever
  reaches the sideband. The controller probes after a reconnect, before each
  ``response.create`` it sends, and periodically.

Which ``session.updated`` answers which of our updates cannot be known for sure (the event
names no client event); the guard pairs them first-in, first-out, and every one of them is
checked whoever caused it, so a mis-pairing can delay a baseline but never hide drift.
"""

from __future__ import annotations

import copy
import json
import logging
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, Literal

from sideband.events import new_event_id, session_probe, session_update
from sideband.tamper import (
    MAX_NAME_CHARS,
    OWNED_FIELDS,
    OwnedSession,
    SessionDrift,
    session_drift,
)

logger = logging.getLogger(__name__)

PAGE_FIELDS: Final = (
    "audio.input.turn_detection",
    "audio.input.noise_reduction",
    "audio.output.speed",
)
"""The only session fields a page may change; a change anywhere else is drift."""
BOOKKEEPING_FIELDS: Final = frozenset({"id", "object", "expires_at"})
"""The provider's own labels on a session object: not config, never compared."""
UNRESTORABLE_FIELDS: Final = frozenset({"type", "model"})
"""Fixed at call creation: a difference is reported, but no update can put them back."""
SEPARATE_FIELDS: Final = ("audio.output.voice", "tracing")
"""Restored in an update of their own: the provider refuses a voice change once the model
has spoken, and tracing once it is on; such a refusal must not take the rest of a restore
down with it."""

UpdateKind = Literal["assert", "reapply", "probe", "change", "abandoned"]
"""What one of our ``session.update`` events was: the first assertion, a restore, a probe, a
change of the owned config (:meth:`SessionGuard.config_changed`), or a change given up on
(refused or unanswered in time, and reverted) whose late answer is ours, not the page's."""
CHANGEABLE_FIELDS: Final = ("instructions", "tools")
"""The owned fields the broker may change on a live call (:meth:`SessionGuard.config_changed`)."""


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _flatten(session: Mapping[str, Any]) -> dict[str, Any]:
    """Owned fields by dotted path: top-level keys, and ``audio.<side>.<key>`` leaves."""
    flat: dict[str, Any] = {}
    for key, value in session.items():
        if key in BOOKKEEPING_FIELDS:
            continue
        if key == "audio" and isinstance(value, Mapping):
            for side, side_value in value.items():
                if isinstance(side_value, Mapping):
                    for leaf, leaf_value in side_value.items():
                        flat[f"audio.{side}.{leaf}"] = leaf_value
                else:
                    flat[f"audio.{side}"] = side_value
            continue
        flat[key] = value
    for path in PAGE_FIELDS:
        flat.pop(path, None)
    return flat


def owned_view(session: Mapping[str, Any]) -> dict[str, Any]:
    """The owned part of an effective session, flattened (see :func:`_flatten`)."""
    return _flatten(session)


def config_drift(baseline: Mapping[str, Any], effective: Mapping[str, Any]) -> SessionDrift | None:
    """Compare an effective session with the baseline (an :func:`owned_view`).

    Tools are compared by name and definition in any order (:func:`session_drift`'s rules);
    every other field as canonical JSON, so key order never counts. A field the echo leaves
    out is not counted (a session update cannot remove one); a field the baseline lacks
    counts only if it now holds a value.

    Returns:
        ``None`` when every owned field matches.
    """
    actual = _flatten(effective)
    tools = session_drift(
        OwnedSession(instructions="", tools=tuple(baseline.get("tools") or ()), tool_choice=None),
        {"tools": actual["tools"]} if "tools" in actual else {},
    )
    fields: list[str] = []
    for path in sorted(set(baseline) | set(actual)):
        if path == "tools" or path not in actual:
            continue
        if path not in baseline:
            if actual[path] is not None:
                fields.append(path[:MAX_NAME_CHARS])
            continue
        if _canonical(actual[path]) != _canonical(baseline[path]):
            fields.append(path[:MAX_NAME_CHARS])
    if tools is not None:
        fields.append("tools")
    # The fields the broker sets itself first, in their usual order; the rest sorted.
    first = [name for name in OWNED_FIELDS if name in fields]
    fields = first + [name for name in fields if name not in OWNED_FIELDS]
    if not fields:
        return None
    return SessionDrift(
        fields=tuple(fields),
        tools_added=tools.tools_added if tools else (),
        tools_removed=tools.tools_removed if tools else (),
        tools_changed=tools.tools_changed if tools else (),
    )


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for path, value in flat.items():
        parts = path.split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = copy.deepcopy(value)
    return nested


@dataclass(frozen=True)
class GuardVerdict:
    """What one ``session.updated`` means.

    Attributes:
        drift: how the session differs from what the broker owns (``None``: it does not).
        restores: ``session.update`` events to send now, in order (empty: nothing to do).
        repeated: the drift is what our own restore left behind (the provider normalises
            something, or refuses a field): reported once already, not restored again.
        answered: the event id of our update this ``session.updated`` was paired with.
        change_applied: for the answer to a config change, whether it carries the new config
            (``None``: not such an answer). One that does not is neither drift nor restored
            here: the change is reverted by whoever made it.
    """

    drift: SessionDrift | None = None
    restores: tuple[dict[str, Any], ...] = ()
    repeated: bool = False
    answered: str | None = None
    change_applied: bool | None = None


@dataclass(frozen=True)
class ConfigChange:
    """One change of the owned config: the update to send, and what to put back without it.

    Attributes:
        update: the tracked ``session.update`` carrying only the changed fields.
        previous: the owned config before the change.
        previous_baseline: the changed fields' baseline values before the change (empty: no
            baseline then).
    """

    update: dict[str, Any]
    previous: OwnedSession
    previous_baseline: dict[str, Any]


class SessionGuard:
    """One call's view of its session config; the controller sends what it returns.

    Args:
        owned: what the broker asserts (instructions, tools, tool choice).
    """

    def __init__(self, owned: OwnedSession) -> None:
        self.owned = owned
        self.baseline: dict[str, Any] | None = None
        """The owned view of the provider's answer to our first assertion (``None``: not yet)."""
        self._waiting: deque[tuple[str, UpdateKind]] = deque()
        """Our ``session.update`` events not yet answered, oldest first: (event id, kind)."""
        self._last_restored: SessionDrift | None = None

    @property
    def asserted(self) -> bool:
        """Whether a baseline exists (the first assertion was answered and agreed)."""
        return self.baseline is not None

    def assertion(self) -> dict[str, Any]:
        """The ``session.update`` asserting the owned config (first attach, or no baseline)."""
        return self._track(session_update(self.owned.as_update()), "assert")

    def probe(self) -> dict[str, Any]:
        """A ``session.update`` that changes nothing; its answer is the full session."""
        return self._track(session_probe(), "probe")

    def config_changed(
        self,
        *,
        instructions: str | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> ConfigChange:
        """The broker changes the owned instructions and/or tools (their provider definitions).

        The owned config and the baseline switch now, before the update is sent, so neither
        the provider's answer nor a page's later attempt to put the old config back is taken
        for the new config: the latter is drift, restored to the new one. The update carries
        only the changed fields (the tool choice stays as it is).
        """
        changes: dict[str, Any] = {}
        if instructions is not None:
            changes["instructions"] = instructions
        if tools is not None:
            changes["tools"] = tuple(dict(tool) for tool in tools)
        if not changes:
            raise ValueError("a config change changes instructions, tools or both")
        previous = self.owned
        previous_baseline: dict[str, Any] = {}
        self.owned = replace(previous, **changes)
        if self.baseline is not None:
            for name, value in changes.items():
                previous_baseline[name] = copy.deepcopy(self.baseline.get(name))
                self.baseline[name] = [dict(t) for t in value] if name == "tools" else value
        payload = {
            name: [dict(t) for t in value] if name == "tools" else value
            for name, value in changes.items()
        }
        update = self._track(session_update(payload), "change")
        return ConfigChange(update=update, previous=previous, previous_baseline=previous_baseline)

    def revert(self, change: ConfigChange) -> dict[str, Any]:
        """A change was refused or went unanswered: the owned config and baseline go back.

        Returns the ``session.update`` that asserts the old config again (to send: an
        unanswered change may have been applied). Its late answer, if any, is the broker's
        own, neither drift nor a restore's echo.
        """
        self.owned = change.previous
        if self.baseline is not None:
            for name, value in change.previous_baseline.items():
                self.baseline[name] = value
        event_id = change.update["event_id"]
        for index, entry in enumerate(self._waiting):
            if entry[0] == event_id:
                self._waiting[index] = (event_id, "abandoned")
                break
        payload: dict[str, Any] = {}
        if "instructions" in change.update["session"]:
            payload["instructions"] = self._restorable_instructions()
        if "tools" in change.update["session"]:
            payload["tools"] = [dict(tool) for tool in self.owned.tools]
        return self._track(session_update(payload), "reapply")

    def carries(self, session: Mapping[str, Any], change: ConfigChange) -> bool:
        """Whether a session view holds every field ``change`` set (as the owned config)."""
        changed = [name for name in CHANGEABLE_FIELDS if name in change.update["session"]]
        if any(name not in session for name in changed):
            return False
        drift = session_drift(
            replace(self.owned, tool_choice=None), {name: session[name] for name in changed}
        )
        return drift is None

    def unsent(self, event: dict[str, Any]) -> None:
        """One of our updates never left (the socket was gone): no answer will come."""
        self._forget(event["event_id"])

    def refused(self, event_id: str) -> bool:
        """An ``error`` answered one of our updates; ``True`` if it was ours."""
        return self._forget(event_id)

    def connection_lost(self) -> None:
        """Nothing sent on the lost socket will be answered."""
        self._waiting.clear()
        self._last_restored = None

    def updated(
        self, session: Mapping[str, Any], change: ConfigChange | None = None
    ) -> GuardVerdict:
        """Judge one ``session.updated``; returns the drift and the restores to send.

        ``change``: the config change awaiting its answer, if any (see :class:`GuardVerdict`).
        """
        event_id, kind = self._waiting.popleft() if self._waiting else (None, None)
        if kind == "abandoned":
            # The late answer to a change given up on: the revert sent after it is answered
            # next and judged then.
            return GuardVerdict(answered=event_id)
        if kind == "change" and change is not None and change.update["event_id"] == event_id:
            if not self.carries(session, change):
                return GuardVerdict(answered=event_id, change_applied=False)
            if self.baseline is not None:
                # The provider's own view of the new fields, as the first baseline is taken.
                view = owned_view(session)
                for name in change.update["session"]:
                    if name in CHANGEABLE_FIELDS and name in view:
                        self.baseline[name] = view[name]
            return replace(self._judge(session, kind), answered=event_id, change_applied=True)
        return replace(self._judge(session, kind), answered=event_id)

    def judge(self, session: Mapping[str, Any]) -> GuardVerdict:
        """Judge a session view that answers none of our updates (``session.created``)."""
        return self._judge(session, None)

    def _judge(self, session: Mapping[str, Any], kind: UpdateKind | None) -> GuardVerdict:
        drift = self._drift(session)
        if drift is None:
            if self.baseline is None and kind == "assert":
                self.baseline = owned_view(session)
                logger.debug("session baseline taken fields=%d", len(self.baseline))
            self._last_restored = None
            return GuardVerdict()
        if kind == "reapply" and _same(drift, self._last_restored):
            # Our own restore came back differing the same way: restoring again would loop.
            return GuardVerdict(drift=drift, repeated=True)
        self._last_restored = drift
        if self.baseline is None:
            # Not yet a baseline: the answer to this re-assertion is the next candidate.
            return GuardVerdict(drift=drift, restores=(self.assertion(),))
        return GuardVerdict(drift=drift, restores=self._restores(drift))

    def _drift(self, session: Mapping[str, Any]) -> SessionDrift | None:
        if self.baseline is not None:
            return config_drift(self.baseline, session)
        # Until the provider has answered our assertion, the request is all we can compare
        # with, and only on what we set ourselves. The provider keeps its default
        # instructions when sent "" (recorded real traffic), so "" matches anything.
        effective = dict(session)
        if self.owned.instructions == "":
            effective.pop("instructions", None)
        return session_drift(self.owned, effective)

    def _restorable_instructions(self) -> str:
        if self.baseline is not None and isinstance(self.baseline.get("instructions"), str):
            # What the provider made of ours (it keeps its default for "", say): restoring
            # that, not our request, is what puts the session back as it was.
            return str(self.baseline["instructions"])
        return self.owned.instructions

    def _restores(self, drift: SessionDrift) -> tuple[dict[str, Any], ...]:
        assert self.baseline is not None
        main: dict[str, Any] = dict(self.owned.as_update())
        main["instructions"] = self._restorable_instructions()
        separate: list[dict[str, Any]] = []
        flat: dict[str, Any] = {}
        for path in drift.fields:
            if path in UNRESTORABLE_FIELDS or path in ("instructions", "tools", "tool_choice"):
                continue
            if path not in self.baseline:
                # Something the page switched on that the provider did not report before:
                # the best restore is to switch it off.
                value: Any = None
            else:
                value = self.baseline[path]
            if path in SEPARATE_FIELDS:
                separate.append(_nest({path: value}))
            else:
                flat[path] = value
        main.update(_merge(main, _nest(flat)))
        restores = [self._track(session_update(main), "reapply")]
        restores.extend(self._track(session_update(extra), "reapply") for extra in separate)
        return tuple(restores)

    def _track(self, event: dict[str, Any], kind: UpdateKind) -> dict[str, Any]:
        event.setdefault("event_id", new_event_id())
        self._waiting.append((event["event_id"], kind))
        return event

    def _forget(self, event_id: str) -> bool:
        for entry in self._waiting:
            if entry[0] == event_id:
                self._waiting.remove(entry)
                return True
        return False


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def _same(drift: SessionDrift, other: SessionDrift | None) -> bool:
    return other is not None and replace(drift, reapplied=False) == replace(other, reapplied=False)
