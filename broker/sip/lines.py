"""Phone lines: which dialled numbers the broker answers, and with what session, from TOML.

Format (``BROKER_SIP_LINES``)::

    [unknown]                       # a number no line has (optional table)
    reject_status = 404             # SIP status it is rejected with (default 404)

    [lines.support]
    numbers = ["+15551230000"]      # dialled numbers (the user part of ``To``), normalised
    action = "accept"               # or "reject" (reject_status, default 603) or "refer"
    instructions = "You are the support line of ..."
    voice = "marin"
    model = "gpt-realtime"
    tools = ["lookup_order"]        # registry names: the call's allowlist
    greeting = "Greet the caller and ask how you can help."   # the first response's
    turn_detection = "server_vad"   # or "semantic_vad", or a table {type = "server_vad", ...}
    tenant = "default"
    redact_caller = true            # the caller's number is stored as a keyed hash
    redact_headers = ["Contact"]    # these SIP headers' values are stored as keyed hashes
    dtmf_turn = "#"                 # keys up to # make a turn (or {terminator, prompt})
    dtmf_record = "masked"          # keys kept out of the event log ("*"); default "digits"
    max_duration_s = 600            # limits as a session's (never above the ceilings)
    idle_timeout_s = 120
    max_tool_calls = 20

    [lines.old_number]
    numbers = ["+15551239999"]
    action = "refer"
    refer_to = "tel:+15551230000"

Every problem is reported at load, all at once, before the broker serves: unknown keys, bad
values, a number two lines claim, tools the registry lacks, limits above the settings'
ceilings. A line's keys are :data:`LINE_KEYS`: a new option is a field of :class:`Line` (with
its default) and one parser there.
"""

from __future__ import annotations

import enum
import re
import tomllib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from broker.call.keypad import DEFAULT_PROMPT, DIGITS_PLACEHOLDER, DtmfRecord, KeypadTurn
from broker.db.models import DEFAULT_TENANT
from broker.session.limits import PROVIDER_MAX_CALL_S, TamperPolicy

LINE_NAME: Final = re.compile(r"^[A-Za-z0-9_-]{1,48}$")
"""A line's name: ``line:<name>`` is its sessions' owner and must fit ``owner_key_id``."""
NUMBER: Final = re.compile(r"^\+?[0-9A-Za-z*#]{1,32}$")
"""A normalised dialled number (E.164 usually; an extension or a SIP user name too)."""
_SEPARATORS: Final = re.compile(r"[\s\-.()/]")
MAX_TEXT: Final = 32_000
TURN_DETECTION_TYPES: Final = ("server_vad", "semantic_vad")
DEFAULT_TURN_DETECTION: Final = {"type": "server_vad"}
DEFAULT_REJECT_STATUS: Final = 603
"""A rejecting line's status by default: 603 Decline (the provider's own default)."""
DEFAULT_UNKNOWN_STATUS: Final = 404
"""A number no line has: 404 Not Found by default."""
CALLER_HEADERS: Final = frozenset({"from", "p-asserted-identity", "remote-party-id"})
"""Headers that carry the caller's number: hashed too when a line redacts the caller."""


class LinesConfigError(ValueError):
    """The lines file is unusable; the message lists every problem found."""


class LineAction(enum.StrEnum):
    ACCEPT = "accept"
    REJECT = "reject"
    REFER = "refer"


@dataclass(frozen=True)
class Line:
    """One phone line: the numbers it answers and what happens to their calls."""

    name: str
    numbers: tuple[str, ...]
    action: LineAction = LineAction.ACCEPT
    reject_status: int = DEFAULT_REJECT_STATUS
    refer_to: str | None = None
    instructions: str | None = None
    voice: str | None = None
    model: str | None = None
    tools: tuple[str, ...] = ()
    greeting: str | None = None
    turn_detection: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_TURN_DETECTION))
    tenant: str = DEFAULT_TENANT
    redact_caller: bool = False
    redact_headers: frozenset[str] = frozenset()
    """Lower-cased header names whose values are stored as keyed hashes."""
    dtmf_turn: KeypadTurn | None = None
    """Keys the caller presses up to a terminator become a turn (:mod:`broker.call.keypad`)."""
    dtmf_record: DtmfRecord = DtmfRecord.DIGITS
    """What the event log keeps of the caller's keys: each one, or ``*`` (masked)."""
    limits: Mapping[str, Any] = field(default_factory=dict)
    """Given limits only (``max_duration_s`` …, ``on_tamper``); the rest default."""

    @property
    def owner(self) -> str:
        """The owner of its sessions (``owner_key_id``): no API key made them."""
        return f"line:{self.name}"

    def hashed_headers(self) -> frozenset[str]:
        """The headers whose values this line stores hashed."""
        return self.redact_headers | (CALLER_HEADERS if self.redact_caller else frozenset())


@dataclass(frozen=True)
class Lines:
    """Every configured line, by number; and how a number no line has is rejected."""

    lines: Mapping[str, Line]
    unknown_status: int = DEFAULT_UNKNOWN_STATUS
    _by_number: Mapping[str, Line] = field(default_factory=dict)

    def for_number(self, dialled: str | None) -> Line | None:
        """The line of ``dialled`` (a ``To`` user part, normalised here); ``None``: no line."""
        if dialled is None:
            return None
        return self._by_number.get(normalise_number(dialled))

    @property
    def tools(self) -> set[str]:
        return {tool for line in self.lines.values() for tool in line.tools}


def normalise_number(number: str) -> str:
    """A dialled number without visual separators (``+1 (555) 123-0000`` → ``+15551230000``)."""
    return _SEPARATORS.sub("", number.strip())


# ---- parsers: one per key ---------------------------------------------------------------------


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_TEXT:
        raise ValueError(f"must be a non-empty string of at most {MAX_TEXT} characters")
    return value


def _short(limit: int) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if not isinstance(value, str) or not value or len(value) > limit:
            raise ValueError(f"must be a non-empty string of at most {limit} characters")
        return value

    return parse


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _status(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 400 <= value <= 699:
        raise ValueError("must be a SIP status code in [400, 699]")
    return value


def _numbers(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(n, str) for n in value):
        raise ValueError("must be a non-empty list of numbers")
    numbers = tuple(normalise_number(n) for n in value)
    bad = [n for n in numbers if not NUMBER.match(n)]
    if bad:
        raise ValueError(f"not a dialled number: {', '.join(bad)}")
    return numbers


def _action(value: Any) -> LineAction:
    try:
        return LineAction(value)
    except ValueError:
        raise ValueError("must be 'accept', 'reject' or 'refer'") from None


def _uri(value: Any) -> str:
    if (
        not isinstance(value, str)
        or not re.match(r"^(tel:\+?[0-9][0-9\-.()]{1,31}|sips?:[^\s@]+(@[^\s]+)?)$", value)
        or len(value) > 256
    ):
        raise ValueError("must be a tel: or sip: URI (e.g. 'tel:+15551230000')")
    return value


def _names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("must be a list of names")
    return tuple(dict.fromkeys(value))


def _headers(value: Any) -> frozenset[str]:
    return frozenset(name.lower() for name in _names(value))


def _turn_detection(value: Any) -> Mapping[str, Any]:
    if isinstance(value, str):
        value = {"type": value}
    if not isinstance(value, dict) or value.get("type") not in TURN_DETECTION_TYPES:
        raise ValueError(
            f"must be {' or '.join(repr(t) for t in TURN_DETECTION_TYPES)}, or a table with"
            " one of them as its type (and the provider's turn detection options)"
        )
    return dict(value)


def _dtmf_turn(value: Any) -> KeypadTurn:
    if isinstance(value, str):
        value = {"terminator": value}
    if (
        not isinstance(value, dict)
        or set(value) - {"terminator", "prompt"}
        or value.get("terminator") not in ("#", "*")
    ):
        raise ValueError(
            "must be '#' or '*' (the key that ends a keypad turn), or a table"
            " {terminator = '#', prompt = 'The caller pressed {digits} on the keypad.'}"
        )
    prompt = value.get("prompt", DEFAULT_PROMPT)
    if not isinstance(prompt, str) or DIGITS_PLACEHOLDER not in prompt or len(prompt) > 1000:
        raise ValueError("prompt must be a string of at most 1000 characters with {digits}")
    return KeypadTurn(value["terminator"], prompt)


def _dtmf_record(value: Any) -> DtmfRecord:
    try:
        return DtmfRecord(value)
    except ValueError:
        raise ValueError(
            "must be 'digits' (every key in the event log) or 'masked' (each key as '*')"
        ) from None


def _seconds(value: Any) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not 1 <= value <= PROVIDER_MAX_CALL_S
    ):
        raise ValueError(f"must be a whole number of seconds in [1, {PROVIDER_MAX_CALL_S}]")
    return value


def _count(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"must be a whole number in [{low}, {high}]")
        return value

    return parse


def _tamper(value: Any) -> TamperPolicy:
    try:
        return TamperPolicy(value)
    except ValueError:
        raise ValueError("must be 'revert' or 'hangup'") from None


LIMIT_KEYS: Final[Mapping[str, Callable[[Any], Any]]] = {
    "max_duration_s": _seconds,
    "idle_timeout_s": _seconds,
    "max_tool_calls": _count(0, 10_000),
    "max_concurrent_tools": _count(1, 64),
    "max_argument_bytes": _count(2, 1024 * 1024),
    "on_tamper": _tamper,
}
"""A line's limits, as the create request's ``limits``."""
LINE_KEYS: Final[Mapping[str, Callable[[Any], Any]]] = {
    "numbers": _numbers,
    "action": _action,
    "reject_status": _status,
    "refer_to": _uri,
    "instructions": _text,
    "voice": _short(40),
    "model": _short(100),
    "tools": _names,
    "greeting": _text,
    "turn_detection": _turn_detection,
    "tenant": _short(40),
    "redact_caller": _bool,
    "redact_headers": _headers,
    "dtmf_turn": _dtmf_turn,
    "dtmf_record": _dtmf_record,
}
"""Every key of a ``[lines.<name>]`` table but the limits (:data:`LIMIT_KEYS`), parsed."""


# ---- loading -----------------------------------------------------------------------------------


def load_lines(
    path: Path,
    *,
    tools: Collection[str],
    ceilings: Mapping[str, int],
) -> Lines:
    """Read and check the lines file.

    Args:
        path: ``BROKER_SIP_LINES``.
        tools: the registry's tool names (a line's ``tools`` must be among them).
        ceilings: the settings' limit ceilings (``max_duration_s`` … by name).

    Raises:
        LinesConfigError: listing every problem found.
    """
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise LinesConfigError(f"{path}: cannot read the lines file: {exc}") from exc
    return parse_lines(data, tools=tools, ceilings=ceilings, where=str(path))


def parse_lines(
    data: Mapping[str, Any],
    *,
    tools: Collection[str],
    ceilings: Mapping[str, int],
    where: str = "lines",
) -> Lines:
    """:func:`load_lines` of an already parsed document."""
    problems: list[str] = []
    unknown_keys = sorted(set(data) - {"lines", "unknown"})
    if unknown_keys:
        problems.append(f"unknown top-level key(s): {', '.join(unknown_keys)}")
    unknown_status = DEFAULT_UNKNOWN_STATUS
    unknown = data.get("unknown", {})
    if not isinstance(unknown, dict):
        problems.append("[unknown] must be a table")
    else:
        extra = sorted(set(unknown) - {"reject_status"})
        if extra:
            problems.append(f"[unknown]: unknown key(s): {', '.join(extra)}")
        if "reject_status" in unknown:
            try:
                unknown_status = _status(unknown["reject_status"])
            except ValueError as exc:
                problems.append(f"[unknown]: reject_status {exc}")
    tables = data.get("lines", {})
    lines: dict[str, Line] = {}
    if not isinstance(tables, dict):
        problems.append("[lines] must be a table of [lines.<name>] tables")
        tables = {}
    for name, table in tables.items():
        line = _line(name, table, tools, ceilings, problems)
        if line is not None:
            lines[name] = line
    by_number: dict[str, Line] = {}
    for line in lines.values():
        for number in line.numbers:
            other = by_number.setdefault(number, line)
            if other is not line:
                problems.append(f"number {number} is on two lines: {other.name} and {line.name}")
    if problems:
        raise LinesConfigError(
            f"{where}: {len(problems)} problem(s):\n" + "\n".join(f"- {p}" for p in problems)
        )
    return Lines(lines, unknown_status, by_number)


def _line(
    name: str,
    table: Any,
    tools: Collection[str],
    ceilings: Mapping[str, int],
    problems: list[str],
) -> Line | None:
    where = f"[lines.{name}]"
    if not LINE_NAME.match(name):
        problems.append(f"{where}: names are 1-48 of [A-Za-z0-9_-]")
        return None
    if not isinstance(table, dict):
        problems.append(f"{where}: must be a table")
        return None
    before = len(problems)
    unknown = sorted(set(table) - set(LINE_KEYS) - set(LIMIT_KEYS))
    if unknown:
        problems.append(f"{where}: unknown key(s): {', '.join(unknown)}")
    values: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    for key, value in table.items():
        parse = LINE_KEYS.get(key) or LIMIT_KEYS.get(key)
        if parse is None:
            continue
        try:
            parsed = parse(value)
        except ValueError as exc:
            problems.append(f"{where}: {key} {exc}")
            continue
        (values if key in LINE_KEYS else limits)[key] = parsed
    if "numbers" not in table:
        problems.append(f"{where}: numbers is required")
    action = values.get("action", LineAction.ACCEPT)
    if action is LineAction.REFER and "refer_to" not in table:
        problems.append(f"{where}: a refer line needs refer_to")
    if action is not LineAction.REFER and "refer_to" in table:
        problems.append(f"{where}: refer_to is for action = 'refer'")
    if action is not LineAction.REJECT and "reject_status" in table:
        problems.append(f"{where}: reject_status is for action = 'reject'")
    missing = sorted(set(values.get("tools", ())) - set(tools))
    if missing:
        problems.append(f"{where}: tool(s) not in the tools file: {', '.join(missing)}")
    for key, ceiling in ceilings.items():
        if key in limits and limits[key] > ceiling:
            problems.append(f"{where}: {key} above this broker's ceiling ({ceiling})")
    if len(problems) > before:
        return None
    return Line(name=name, limits=limits, **values)


def dialled_number(headers: Sequence[Mapping[str, Any]]) -> str | None:
    """The dialled number: the user part of the ``To`` header's SIP or tel URI."""
    return _uri_user(header_value(headers, "To"))


def caller_number(headers: Sequence[Mapping[str, Any]]) -> str | None:
    """The caller: the user part of the ``From`` header's SIP or tel URI."""
    return _uri_user(header_value(headers, "From"))


def header_value(headers: Sequence[Mapping[str, Any]], name: str) -> str | None:
    """The first value of header ``name`` (any capitalisation), if any."""
    wanted = name.lower()
    for header in headers:
        if str(header.get("name", "")).lower() == wanted:
            value = header.get("value")
            return value if isinstance(value, str) else None
    return None


_URI: Final = re.compile(r"(?:sips?|tel):([^@;>\s]+)", re.IGNORECASE)


def _uri_user(value: str | None) -> str | None:
    """``"Bob" <sip:+15551230000@trunk.example;user=phone>;tag=1`` → ``+15551230000``."""
    if value is None:
        return None
    match = _URI.search(value)
    if match is None:
        return None
    user = normalise_number(match.group(1))
    return user if NUMBER.match(user) else None
