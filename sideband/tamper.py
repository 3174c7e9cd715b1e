"""Seeing what a browser did through its data channel: pure protocol, no I/O.

The browser holds a data channel to the provider and may send any client event
(docs/protocol.md §4). The sideband does not see those events, only their effects:

* a ``session.updated`` whose ``instructions``, ``tools`` or ``tool_choice`` differ from the
  server-owned config (:func:`session_drift`);
* a ``function_call_output`` item the broker did not create (:class:`OutputLedger`);
* an item only the model may add (a ``function_call``; a ``system`` or ``assistant``
  message under :attr:`PageItems.REFUSE`) that no watched response produced (:class:`PageItem`);
* a finished function call a resync cannot prove the model made (:class:`UnprovenCall`);
* a response nobody the broker trusts started (:class:`PageResponse`, under
  :attr:`PageResponses.CANCEL`);
* a frame over the sideband's size limit (:class:`OversizedFrame`).

The controller acts on these (re-apply, delete, cancel) and reports each one to the broker
through :class:`TamperHandler`; what the broker then decides (record, hang up) is its policy.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Protocol

from sideband.events import Item, same_json

OWNED_FIELDS: Final = ("instructions", "tools", "tool_choice")
"""The owned fields a tamper report names first; the guard owns every field but
:data:`sideband.session_guard.PAGE_FIELDS` (voice included)."""

_TOOL_KEYS: Final = ("type", "name", "description", "parameters")
_PROVIDER_ADDED_PARAMETER_KEYS: Final = frozenset({"strict"})
"""Keys the provider may add inside a tool's ``parameters`` when it echoes the session
(the spec's own ``session.updated`` example adds ``"strict": true``, docs/protocol.md §3.3); they
are not a change the browser made."""
MAX_REPORTED_NAMES: Final = 20
MAX_NAME_CHARS: Final = 64
MAX_REPORTED_CHARS: Final = 128
"""The most of an id or a tool name a report keeps: the page may have chosen it."""


def cut(value: str | None) -> str | None:
    """``value`` as a report keeps it (at most :data:`MAX_REPORTED_CHARS`)."""
    return value[:MAX_REPORTED_CHARS] if value is not None else None


@dataclass(frozen=True)
class OwnedSession:
    """The server-owned part of a session config, as the broker sent it at call creation."""

    instructions: str
    tools: tuple[Mapping[str, Any], ...]
    tool_choice: Any

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> OwnedSession:
        """Take the owned fields of a full ``session`` object (missing ones default)."""
        return cls(
            instructions=str(config.get("instructions", "")),
            tools=tuple(config.get("tools") or ()),
            tool_choice=config.get("tool_choice", "auto"),
        )

    def as_update(self) -> dict[str, Any]:
        """The owned fields as a ``session.update`` payload (without ``type``)."""
        return {
            "instructions": self.instructions,
            "tools": [dict(tool) for tool in self.tools],
            "tool_choice": self.tool_choice,
        }


@dataclass(frozen=True)
class SessionDrift:
    """The provider's effective session no longer matches the server-owned config.

    Attributes:
        fields: which owned fields differ, in :data:`OWNED_FIELDS` order.
        tools_added / tools_removed / tools_changed: tool names (truncated, at most
            :data:`MAX_REPORTED_NAMES` each); never instructions or schemas, which may be long
            or carry what the browser wants logged.
        reapplied: the controller sent the owned config back on the sideband.
    """

    kind: ClassVar[str] = "session_config"
    fields: tuple[str, ...]
    tools_added: tuple[str, ...] = ()
    tools_removed: tuple[str, ...] = ()
    tools_changed: tuple[str, ...] = ()
    reapplied: bool = False


@dataclass(frozen=True)
class ForgedOutput:
    """A ``function_call_output`` item entered the conversation that the broker did not send.

    Attributes:
        item_id: the item's id (``None`` if the provider gave none: then it cannot be deleted).
        call_id: the ``call_id`` it claims to answer (truncated).
        deleted: the controller sent ``conversation.item.delete`` for it.
    """

    kind: ClassVar[str] = "forged_output"
    item_id: str | None
    call_id: str | None
    deleted: bool


@dataclass(frozen=True)
class TaintedResponse:
    """A response started while a forged output was in the conversation; it was cancelled.

    Attributes:
        response_id: the response the controller sent ``response.cancel`` for.
        forged_item_ids: the forged items it could have read.
        cancelled: the cancel went out on the sideband.
    """

    kind: ClassVar[str] = "tainted_response"
    response_id: str
    forged_item_ids: tuple[str, ...] = field(default=())
    cancelled: bool = False


@dataclass(frozen=True)
class PageItem:
    """The page added an item only the model (or nobody) may add; the controller deleted it.

    A ``function_call`` item no watched response produced is always one (a tool runs only for
    calls the model made); ``system`` and ``assistant`` messages are, under the session's
    ``page_items`` policy ``refuse``.

    Attributes:
        item_id: the item's id (``None``: the provider gave none, so it could not be deleted).
        item_type: ``function_call`` or ``message``.
        role: the message's role (``None`` for a function call).
        call_id: the ``call_id`` a planted function call claims (truncated).
        tool: the tool it names (truncated).
        deleted: the controller sent ``conversation.item.delete`` for it.
    """

    kind: ClassVar[str] = "page_item"
    item_id: str | None
    item_type: str
    role: str | None = None
    call_id: str | None = None
    tool: str | None = None
    deleted: bool = False


@dataclass(frozen=True)
class UnprovenCall:
    """A resync found a finished function call the broker never saw the model make.

    It may be the page's (a planted item no sideband saw) or the model's (made while no
    sideband watched): either way it is not run. It is answered with an error output, so a
    model that did make it calls again, this time watched.

    Attributes:
        item_id / call_id / tool: the call found (truncated).
        reason: ``unseen`` (no watched response produced it), ``partial`` (the broker saw it
            start but not its arguments), or ``replaced`` (its arguments differ from what
            the model streamed).
        answered: the error output went out on the sideband.
    """

    kind: ClassVar[str] = "unproven_call"
    item_id: str | None
    call_id: str | None
    tool: str | None
    reason: str
    answered: bool = False


@dataclass(frozen=True)
class PageResponse:
    """A response neither the broker nor a committed audio turn started: the page's.

    Reported only under the ``page_responses`` policy ``cancel`` (voice-only sessions).

    Attributes:
        response_id: the response.
        cancelled: the controller sent ``response.cancel`` for it.
    """

    kind: ClassVar[str] = "page_response"
    response_id: str
    cancelled: bool = False


@dataclass(frozen=True)
class OversizedFrame:
    """The provider sent the sideband a frame over its size limit; the socket closed (1009).

    With a retrieve of the broker's outstanding, the frame is taken for its answer (the whole
    item, base64 audio included: a long user audio turn, or anything the page built), and the
    item is never asked for again (:mod:`sideband.lookups`): a resync goes on past it, and no
    call under it runs. That may happen to an honest call. With none outstanding, the page
    caused the frame (the echo of an item or a session update it made huge, or the answer to
    a retrieve of its own that reached every connection). Either way it cost the broker a
    re-attach; what the broker makes of that is its policy.

    Attributes:
        item_id: the item whose retrieve was outstanding (truncated); ``None``: none was.
        limit: the size limit in bytes.
    """

    kind: ClassVar[str] = "oversized_frame"
    item_id: str | None
    limit: int


Tamper = (
    SessionDrift
    | ForgedOutput
    | TaintedResponse
    | PageItem
    | UnprovenCall
    | PageResponse
    | OversizedFrame
)


class PageItems(enum.StrEnum):
    """What becomes of ``system``/``assistant`` messages the page adds to the conversation."""

    REFUSE = "refuse"
    """Deleted and recorded (the default): only the model speaks as the assistant."""
    ALLOW = "allow"
    """Left in place (a page that legitimately seeds context); still never in a transcript
    as the model's words."""


class PageResponses(enum.StrEnum):
    """What becomes of responses the page starts (``response.create`` on its data channel)."""

    ALLOW = "allow"
    """Left to run (the default; a typed chat needs it). Residual risk: the page's
    ``response.create`` may carry its own instructions and tools, which the sideband cannot
    see; the allowlist still decides what runs."""
    CANCEL = "cancel"
    """For voice-only sessions: a response not started by a committed audio turn and not
    asked for by the broker is cancelled at once and recorded."""


@dataclass(frozen=True)
class PagePolicy:
    """What a page may add to its call beyond typed user messages."""

    items: PageItems = PageItems.REFUSE
    responses: PageResponses = PageResponses.ALLOW


class TamperHandler(Protocol):
    """The broker's side of tamper detection (record, log, apply its policy)."""

    async def tampered(self, tamper: Tamper) -> None:
        """Called once per detection, after the controller acted on the wire.

        Runs as a task of the controller; an exception here is a broker fault and ends it.
        """


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _canonical_tool(tool: Any) -> str:
    if not isinstance(tool, Mapping):
        return _canonical(tool)
    kept: dict[str, Any] = {key: tool.get(key) for key in _TOOL_KEYS}
    # An empty description may be echoed as absent: the same tool either way.
    kept["description"] = kept["description"] or ""
    parameters = kept["parameters"]
    if isinstance(parameters, Mapping):
        kept["parameters"] = {
            k: v for k, v in parameters.items() if k not in _PROVIDER_ADDED_PARAMETER_KEYS
        }
    return _canonical(kept)


def _tools_by_name(tools: Sequence[Any]) -> dict[str, list[str]]:
    by_name: dict[str, list[str]] = {}
    for tool in tools:
        name = tool.get("name") if isinstance(tool, Mapping) else None
        by_name.setdefault(str(name), []).append(_canonical_tool(tool))
    return by_name


def _names(names: set[str]) -> tuple[str, ...]:
    return tuple(sorted(name[:MAX_NAME_CHARS] for name in names)[:MAX_REPORTED_NAMES])


def session_drift(owned: OwnedSession, effective: Mapping[str, Any]) -> SessionDrift | None:
    """Compare an effective session (``session.created/updated``) with the owned config.

    Tools are compared by name and definition (type, name, description, parameters), in any
    order. A field the provider left out of the echo is not counted as changed: the broker
    cannot tell, and a session update cannot remove a field anyway.

    Returns:
        ``None`` when every owned field matches.
    """
    fields: list[str] = []
    added: set[str] = set()
    removed: set[str] = set()
    changed: set[str] = set()
    if "instructions" in effective and effective["instructions"] != owned.instructions:
        fields.append("instructions")
    if "tools" in effective:
        actual_tools = effective["tools"] or []
        if not isinstance(actual_tools, list):
            actual_tools = [actual_tools]
        expected = _tools_by_name(owned.tools)
        actual = _tools_by_name(actual_tools)
        added = set(actual) - set(expected)
        removed = set(expected) - set(actual)
        changed = {
            name
            for name in set(actual) & set(expected)
            if sorted(actual[name]) != sorted(expected[name])
        }
        if added or removed or changed:
            fields.append("tools")
    if "tool_choice" in effective and _canonical(effective["tool_choice"]) != _canonical(
        owned.tool_choice
    ):
        fields.append("tool_choice")
    if not fields:
        return None
    return SessionDrift(
        fields=tuple(fields),
        tools_added=_names(added),
        tools_removed=_names(removed),
        tools_changed=_names(changed),
    )


class Verdict(enum.Enum):
    """What a ``function_call_output`` item seen on the sideband is."""

    OWN = "own"
    """The broker sent it (or accepted another path's answer for the call)."""
    FORGED = "forged"
    """Nobody the broker trusts sent it; first sighting."""
    KNOWN = "known"
    """A forged item already reported (its ``.done`` after ``.added``)."""


class OutputLedger:
    """Which ``function_call_output`` items are the broker's, and which forged ones remain.

    The broker's items are recognised by ``call_id`` *and* the exact output text it sent: the
    provider echoes both, and a browser racing the broker with its own output for the same
    call cannot make the broker's item look forged unless it sends the very same text (which
    would change nothing the model reads). Ids of recognised items are remembered so the
    ``.done`` that follows ``.added`` is recognised too.
    """

    def __init__(self) -> None:
        self._expected: dict[str, str] = {}
        self._own: set[str] = set()
        self._forged: set[str] = set()

    def expect(self, call_id: str, output: str) -> None:
        """The broker is about to send (or accepted) this output; call before sending."""
        self._expected[call_id] = output

    def classify(self, item: Item) -> Verdict:
        """Classify a ``function_call_output`` item from ``conversation.item.added/done``."""
        if item.id is not None and item.id in self._own:
            return Verdict.OWN
        if item.id is not None and item.id in self._forged:
            return Verdict.KNOWN
        expected = self._expected.get(item.call_id or "")
        if expected is not None and (item.output is None or same_json(item.output, expected)):
            del self._expected[item.call_id or ""]
            if item.id is not None:
                self._own.add(item.id)
            return Verdict.OWN
        if item.id is not None:
            self._forged.add(item.id)
        return Verdict.FORGED

    def removed(self, item_id: str) -> bool:
        """An item left the conversation; ``True`` if it was a forged one."""
        self._own.discard(item_id)
        if item_id in self._forged:
            self._forged.discard(item_id)
            return True
        return False

    @property
    def tainted(self) -> bool:
        """A forged output is still in the conversation: a response now would read it."""
        return bool(self._forged)

    @property
    def forged_item_ids(self) -> tuple[str, ...]:
        return tuple(sorted(self._forged))
