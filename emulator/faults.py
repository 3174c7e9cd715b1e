"""Fault injection: switches that make the emulator misbehave the way a real provider can.

:class:`FaultConfig` is a frozen set of switch values (the app's initial ones come from
``EmulatorSettings.faults``); :class:`Faults` is the app's live state, changed at runtime
through the ``/_emulator/faults`` admin routes and consulted by ``/calls`` (delay, 5xx) and by
the sideband layer (404 window, drops, delay, type filter, refused ``session.update``). Every
switch is off by default.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

_ERROR_SWITCHES: Final = ("create_call_error", "hangup_error", "sideband_attach_error")
_BOOL_SWITCHES: Final = (
    "sideband_misses_page_session_updates",
    "sideband_misses_page_items",
    "provider_item_ids",
    "keep_instructions_on_empty",
    "single_sideband",
    "hangup_answers_after_close",
    "accept_not_found",
    "single_active_response",
)
MAX_DELAY_MS: Final = 600_000  # ten minutes: longer only hides a typo until a test times out


class FaultValueError(ValueError):
    """A fault switch has an invalid name, type or value.

    Attributes:
        code: the provider-style error code (``unknown_parameter``, ``invalid_type``,
            ``invalid_value``).
        param: the offending switch, e.g. ``create_call_error.status``.
    """

    def __init__(self, code: str, message: str, param: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


def _int(value: object, param: str, *, low: int, high: int | None = None) -> int:
    # bool is an int subclass, but JSON `true` is never a count or a delay.
    if isinstance(value, bool) or not isinstance(value, int):
        raise FaultValueError(
            "invalid_type", f"Invalid type for '{param}': expected an integer.", param
        )
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise FaultValueError("invalid_value", f"'{param}' must be {bounds}.", param)
    return value


def _optional_int(value: object, param: str, *, low: int) -> int | None:
    return None if value is None else _int(value, param, low=low)


def _code(value: object, param: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        raise FaultValueError(
            "invalid_type", f"Invalid type for '{param}': expected a short string.", param
        )
    return value


def _object_of(raw: object, param: str, keys: set[str]) -> dict[str, Any]:
    """``raw`` as a switch's JSON object holding only ``keys``.

    Raises:
        FaultValueError: not an object, or an unknown key (named as ``param.key``).
    """
    if not isinstance(raw, dict):
        raise FaultValueError(
            "invalid_type", f"Invalid type for '{param}': expected an object or null.", param
        )
    for key in raw:
        if key not in keys:
            raise FaultValueError(
                "unknown_parameter", f"Unknown parameter: '{param}.{key}'.", f"{param}.{key}"
            )
    return raw


@dataclass(frozen=True)
class CallErrorFault:
    """Answer the next ``count`` requests (``/calls``, or hangups) with HTTP ``status``.

    Attributes:
        status: a 5xx status (500–599).
        count: how many requests still fail (at least 1).

    Raises:
        FaultValueError: a value is out of range.
    """

    status: int
    count: int = 1

    def __post_init__(self) -> None:
        _int(self.status, "create_call_error.status", low=500, high=599)
        _int(self.count, "create_call_error.count", low=1)

    @classmethod
    def from_json(cls, raw: object, param: str = "create_call_error") -> CallErrorFault:
        """Parse ``{"status": 503, "count": 2}`` (``count`` defaults to 1) for switch ``param``.

        Raises:
            FaultValueError: not an object, an unknown key, or a bad value.
        """
        raw = _object_of(raw, param, {"status", "count"})
        if "status" not in raw:
            raise FaultValueError(
                "missing_required_parameter",
                f"Missing required parameter: '{param}.status'.",
                f"{param}.status",
            )
        _int(raw["status"], f"{param}.status", low=500, high=599)
        _int(raw.get("count", 1), f"{param}.count", low=1)
        return cls(status=raw["status"], count=raw.get("count", 1))


@dataclass(frozen=True)
class SessionUpdateErrorFault:
    """Refuse the next ``count`` (``None``: every) ``session.update`` of a sideband.

    The refused update is not applied; its sender gets an ``error`` event (type
    ``invalid_request_error``, this ``code``, ``param`` ``"session"``) naming its ``event_id``.

    Attributes:
        code: the ``error.code`` (1 to 64 characters).
        count: how many updates are still refused (at least 1), or ``None`` for every one.

    Raises:
        FaultValueError: a value is out of range.
    """

    code: str = "invalid_value"
    count: int | None = 1

    def __post_init__(self) -> None:
        _code(self.code, "sideband_session_update_error.code")
        _optional_int(self.count, "sideband_session_update_error.count", low=1)

    @classmethod
    def from_json(cls, raw: object, param: str) -> SessionUpdateErrorFault:
        """Parse ``{"code": "invalid_value", "count": 2}`` (both optional) for switch ``param``.

        ``count`` defaults to 1; ``count: null`` refuses every update until switched off.

        Raises:
            FaultValueError: not an object, an unknown key, or a bad value.
        """
        raw = _object_of(raw, param, {"code", "count"})
        code = _code(raw.get("code", "invalid_value"), f"{param}.code")
        count = _optional_int(raw.get("count", 1), f"{param}.count", low=1)
        return cls(code=code, count=count)


@dataclass(frozen=True)
class FaultConfig:
    """One set of fault switch values; the default is every switch off.

    Attributes:
        create_call_delay_ms: wait this long before answering a valid ``/calls`` request.
        create_call_error: the next requests to ``/calls`` fail with a 5xx, or ``None``.
        hangup_error: the next hangup requests fail with a 5xx (the call goes on), or ``None``.
        sideband_attach_error: the next sideband handshakes fail with a 5xx (the call goes
            on), or ``None``.
        sideband_unavailable_ms: a sideband handshake within this long of the call's
            creation gets ``404 call_id_not_found`` (like ``sideband_ready_delay``).
        sideband_drop_after_events: each sideband attached while this is set has its TCP
            transport aborted (the client sees 1006) once it has been sent this many server
            events; ``None`` is off, ``0`` drops it right after the upgrade.
        sideband_event_delay_ms: each server event reaches a sideband this much later than
            the call produced it; order is kept.
        sideband_drop_event_types: server events of these types are not delivered to
            sidebands (the data channel still gets them); empty is off.
        sideband_drop_event_count: how many more sideband deliveries the type filter drops
            before it switches itself off; ``None`` is unlimited.
        sideband_misses_page_session_updates: the ``session.updated`` that answers a *page's*
            ``session.update`` goes only to the page, never to sidebands (whether the real
            service fans it out is unconfirmed, docs/protocol.md §0).
        sideband_misses_page_items: the ``conversation.item.added/done`` of an item the *page*
            created go only to the page (unconfirmed either way, docs/protocol.md §0).
        provider_item_ids: ``conversation.item.create`` ignores the client's item id and
            names the item itself (the spec lets clients choose; some providers do not).
        missing_item_error_code: the ``error.code`` a retrieve or delete of a missing item
            gets (undocumented; ``item_not_found`` is our guess).
        keep_instructions_on_empty: ``instructions: ""`` (at call creation or in an update)
            keeps the instructions in force, as recorded real traffic showed at creation,
            instead of clearing them as the spec says.
        single_sideband: a call has one sideband at a time: a new attach closes the earlier
            ones (code 1000), as KugelAudio documents; OpenAI documents no limit
            (docs/protocol.md §2.3), and the default serves every attached sideband.
        hangup_answers_after_close: a hangup's ``200`` comes only once the sidebands and the
            peer are closed, instead of as termination begins (the spec's "returns 200 OK
            when OpenAI begins terminating", docs/protocol.md §0, unseen in traffic).
        accept_delay_ms: a phone call's ``/accept`` waits this long before answering (the
            real one was reported to take about 5 s, docs/protocol.md §0 "SIP").
        accept_not_found: ``/accept`` answers ``404 call_id_not_found`` (after
            ``accept_delay_ms``) and the call keeps ringing, as reported at the real service.
        sideband_session_update_error: the next ``session.update`` events of a sideband (or
            of a WebSocket session's socket; never the page's) are refused with an ``error``
            and not applied, or ``None``. The spec lets the service refuse an update; which
            ones it refuses, and with which code, is not documented.
        single_active_response: a call runs one response at a time, out-of-band ones
            included: a ``response.create`` while any response runs is refused with
            ``conversation_already_has_active_response`` (as a second in-band one always is).
            By default an out-of-band response runs beside others; whether the real service
            allows that is undocumented (emulator/README.md [inferred]).

    Raises:
        FaultValueError: a value has the wrong type or is out of range.
    """

    create_call_delay_ms: int = 0
    create_call_error: CallErrorFault | None = None
    hangup_error: CallErrorFault | None = None
    sideband_attach_error: CallErrorFault | None = None
    sideband_unavailable_ms: int = 0
    sideband_drop_after_events: int | None = None
    sideband_event_delay_ms: int = 0
    sideband_drop_event_types: tuple[str, ...] = ()
    sideband_drop_event_count: int | None = None
    sideband_misses_page_session_updates: bool = False
    sideband_misses_page_items: bool = False
    provider_item_ids: bool = False
    missing_item_error_code: str = "item_not_found"
    keep_instructions_on_empty: bool = False
    single_sideband: bool = False
    hangup_answers_after_close: bool = False
    accept_delay_ms: int = 0
    accept_not_found: bool = False
    sideband_session_update_error: SessionUpdateErrorFault | None = None
    single_active_response: bool = False

    def __post_init__(self) -> None:
        for name in _BOOL_SWITCHES:
            if not isinstance(getattr(self, name), bool):
                raise FaultValueError(
                    "invalid_type", f"Invalid type for '{name}': expected a boolean.", name
                )
        _code(self.missing_item_error_code, "missing_item_error_code")
        refusal = self.sideband_session_update_error
        if refusal is not None and not isinstance(refusal, SessionUpdateErrorFault):
            raise FaultValueError(
                "invalid_type",
                "Invalid type for 'sideband_session_update_error': expected a"
                " SessionUpdateErrorFault or None.",
                "sideband_session_update_error",
            )
        for name in (
            "create_call_delay_ms",
            "sideband_unavailable_ms",
            "sideband_event_delay_ms",
            "accept_delay_ms",
        ):
            _int(getattr(self, name), name, low=0, high=MAX_DELAY_MS)
        for name in _ERROR_SWITCHES:
            value = getattr(self, name)
            if value is not None and not isinstance(value, CallErrorFault):
                raise FaultValueError(
                    "invalid_type",
                    f"Invalid type for '{name}': expected a CallErrorFault or None.",
                    name,
                )
        _optional_int(self.sideband_drop_after_events, "sideband_drop_after_events", low=0)
        _optional_int(self.sideband_drop_event_count, "sideband_drop_event_count", low=1)
        types = self.sideband_drop_event_types
        param = "sideband_drop_event_types"
        if isinstance(types, str) or not isinstance(types, tuple | list):
            raise FaultValueError(
                "invalid_type", f"Invalid type for '{param}': expected a list of strings.", param
            )
        for index, type_ in enumerate(types):
            if not isinstance(type_, str) or not type_:
                raise FaultValueError(
                    "invalid_type",
                    f"Invalid type for '{param}[{index}]': expected a non-empty string.",
                    f"{param}[{index}]",
                )
        # A list given by a caller becomes a tuple so the config stays immutable and hashable.
        object.__setattr__(self, "sideband_drop_event_types", tuple(types))

    def to_json(self) -> dict[str, Any]:
        """The JSON served by ``GET /_emulator/faults``."""

        def error_json(error: CallErrorFault | None) -> dict[str, int] | None:
            return None if error is None else {"status": error.status, "count": error.count}

        return {
            "create_call_delay_ms": self.create_call_delay_ms,
            "create_call_error": error_json(self.create_call_error),
            "hangup_error": error_json(self.hangup_error),
            "sideband_attach_error": error_json(self.sideband_attach_error),
            "sideband_unavailable_ms": self.sideband_unavailable_ms,
            "sideband_drop_after_events": self.sideband_drop_after_events,
            "sideband_event_delay_ms": self.sideband_event_delay_ms,
            "sideband_drop_event_types": list(self.sideband_drop_event_types),
            "sideband_drop_event_count": self.sideband_drop_event_count,
            "sideband_misses_page_session_updates": self.sideband_misses_page_session_updates,
            "sideband_misses_page_items": self.sideband_misses_page_items,
            "provider_item_ids": self.provider_item_ids,
            "missing_item_error_code": self.missing_item_error_code,
            "keep_instructions_on_empty": self.keep_instructions_on_empty,
            "single_sideband": self.single_sideband,
            "hangup_answers_after_close": self.hangup_answers_after_close,
            "accept_delay_ms": self.accept_delay_ms,
            "accept_not_found": self.accept_not_found,
            "sideband_session_update_error": (
                None
                if self.sideband_session_update_error is None
                else {
                    "code": self.sideband_session_update_error.code,
                    "count": self.sideband_session_update_error.count,
                }
            ),
            "single_active_response": self.single_active_response,
        }

    def merged(self, changes: Mapping[str, Any]) -> FaultConfig:
        """Return a copy with the switches in ``changes`` (parsed JSON) replaced.

        ``null`` turns an optional switch off; ``sideband_drop_event_types: null`` means ``[]``.

        Raises:
            FaultValueError: an unknown switch or a bad value; nothing is changed.
        """
        known = {f.name for f in dataclasses.fields(self)}
        values: dict[str, Any] = {}
        for name, raw in changes.items():
            if name not in known:
                raise FaultValueError("unknown_parameter", f"Unknown parameter: '{name}'.", name)
            if name in _ERROR_SWITCHES:
                values[name] = None if raw is None else CallErrorFault.from_json(raw, name)
            elif name == "sideband_drop_event_types":
                if raw is not None and not isinstance(raw, list):
                    raise FaultValueError(
                        "invalid_type",
                        f"Invalid type for '{name}': expected a list of strings or null.",
                        name,
                    )
                values[name] = tuple(raw or ())
            elif name == "sideband_session_update_error":
                values[name] = None if raw is None else SessionUpdateErrorFault.from_json(raw, name)
            else:
                values[name] = raw
        return dataclasses.replace(self, **values)


@dataclass
class Faults:
    """The app's live fault switches: :attr:`current` changes at runtime, :attr:`initial` not.

    All methods run on the event loop thread and never await, so a check-and-consume (a
    count going down) is atomic.

    Attributes:
        initial: the values the app started with (``EmulatorSettings.faults``).
        current: the values in force now.
    """

    initial: FaultConfig
    current: FaultConfig = field(init=False)

    def __post_init__(self) -> None:
        self.current = self.initial

    def update(self, changes: Mapping[str, Any]) -> FaultConfig:
        """Merge ``changes`` (parsed JSON) into the current switches; return the result.

        Raises:
            FaultValueError: an unknown switch or a bad value; nothing is changed.
        """
        self.current = self.current.merged(changes)
        return self.current

    def reset(self) -> FaultConfig:
        """Go back to the initial switches; return them."""
        self.current = self.initial
        return self.current

    def take_create_call_error(self) -> CallErrorFault | None:
        """Consume one injected ``/calls`` failure; ``None`` when the switch is off."""
        return self._take_error("create_call_error")

    def take_hangup_error(self) -> CallErrorFault | None:
        """Consume one injected hangup failure; ``None`` when the switch is off."""
        return self._take_error("hangup_error")

    def take_sideband_attach_error(self) -> CallErrorFault | None:
        """Consume one injected sideband handshake failure; ``None`` when the switch is off."""
        return self._take_error("sideband_attach_error")

    def take_session_update_error(self) -> SessionUpdateErrorFault | None:
        """Consume one injected ``session.update`` refusal; ``None`` when the switch is off.

        A ``count`` of ``None`` refuses every update and never runs out.
        """
        refusal = self.current.sideband_session_update_error
        if refusal is None or refusal.count is None:
            return refusal
        remaining = (
            None if refusal.count <= 1 else dataclasses.replace(refusal, count=refusal.count - 1)
        )
        self.current = dataclasses.replace(self.current, sideband_session_update_error=remaining)
        return refusal

    def _take_error(self, name: str) -> CallErrorFault | None:
        error: CallErrorFault | None = getattr(self.current, name)
        if error is None:
            return None
        remaining = None if error.count <= 1 else dataclasses.replace(error, count=error.count - 1)
        changes: dict[str, Any] = {name: remaining}
        self.current = dataclasses.replace(self.current, **changes)
        return error

    def sideband_unavailable(self, call_age_s: float) -> bool:
        """Whether a sideband handshake for a call this old gets the 404."""
        return call_age_s * 1000 < self.current.sideband_unavailable_ms

    @property
    def sideband_event_delay_s(self) -> float:
        """The delay added to each server event on its way to a sideband, in seconds."""
        return self.current.sideband_event_delay_ms / 1000

    def drops_sideband_event(self, text: str, event_type: str | None) -> bool:
        """Whether the type filter swallows this server event for one sideband.

        Consumes one unit of ``sideband_drop_event_count`` per dropped delivery (each
        sideband's copy counts). ``event_type`` ``None`` means unknown: the type is then
        read from ``text``, which costs a parse only while the filter is on.
        """
        config = self.current
        if not config.sideband_drop_event_types:
            return False
        if event_type is None:
            event_type = _event_type(text)
        if event_type not in config.sideband_drop_event_types:
            return False
        count = config.sideband_drop_event_count
        if count is not None:
            if count <= 1:
                self.current = dataclasses.replace(
                    config, sideband_drop_event_types=(), sideband_drop_event_count=None
                )
            else:
                self.current = dataclasses.replace(config, sideband_drop_event_count=count - 1)
        return True


def _event_type(text: str) -> str | None:
    try:
        event = json.loads(text)
    except ValueError:
        return None
    type_ = event.get("type") if isinstance(event, dict) else None
    return type_ if isinstance(type_, str) else None
