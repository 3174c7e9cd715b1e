"""What the broker and the controller promise each other: the calls, the handlers, the gate.

The controller never executes a tool itself. The broker injects a :class:`ToolCallHandler` that
records, authorizes and runs calls, and a :class:`CallObserver` that sees the traffic, so
nothing in ``sideband`` knows about databases or policy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from sideband.events import Item
from sideband.tamper import Tamper

Direction = Literal["in", "out"]
AttachKind = Literal["attach", "reconnect", "resume"]
"""``attach``: the call's first sideband; ``reconnect``: after this controller lost one;
``resume``: the first sideband of a restarted broker to a call it controlled before."""

Send = Callable[[dict[str, Any]], Awaitable[bool]]
"""How the controller's pieces send a client event: ``False`` if the sideband is gone."""
Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[None]"]
"""How they start work that must outlive the event being handled (named for the logs)."""


@dataclass(frozen=True)
class Wiring:
    """What the controller lends each of its pieces.

    Attributes:
        call_id: the provider's call id (for the logs).
        send: sends a client event on the current sideband.
        spawn: starts work in the controller's task group.
        report: hands a tamper detection to the broker.
    """

    call_id: str
    send: Send
    spawn: Spawn
    report: Callable[[Tamper], None]


@dataclass(frozen=True)
class FunctionCall:
    """A function call the model emitted on this call."""

    call_id: str
    name: str
    arguments: str
    response_id: str
    item_id: str | None = None


def call_of(item: Item, response_id: str) -> FunctionCall | None:
    """The function call ``item`` is, as made in ``response_id``; ``None``: it is none."""
    if item.type != "function_call" or not item.call_id or item.name is None:
        return None
    return FunctionCall(
        call_id=item.call_id,
        name=item.name,
        arguments=item.arguments or "",
        response_id=response_id,
        item_id=item.id,
    )


@dataclass(frozen=True)
class ToolResult:
    """What to tell the model about a call.

    Attributes:
        output: the ``function_call_output`` text, sent verbatim.
        inject: ``False`` when another path (the browser bridge) already answered this call, so
            a second output must not be sent.
        item_id: the id asked for the output item, chosen (and recorded) before it is sent;
            ``None``: the controller picks one. A provider may assign its own instead.
    """

    output: str
    inject: bool = True
    item_id: str | None = None


@dataclass(frozen=True)
class Undelivered:
    """An output decided for a call whose delivery to the provider is not confirmed."""

    call: FunctionCall
    output: str
    item_id: str


@dataclass(frozen=True)
class Backlog:
    """What the broker's records say is unfinished on this call.

    Attributes:
        seen: calls the broker saw the model make and never ran; ``item_id`` is how the
            provider is asked whether each one finished (a call without one, or without the
            response it came from, is left to the paths that can report it).
        undelivered: outputs decided but not known to have reached the provider.
    """

    seen: Sequence[FunctionCall] = ()
    undelivered: Sequence[Undelivered] = field(default_factory=tuple)


class ToolCallHandler(Protocol):
    """The broker's side of function calling; every method is called with one call at a time."""

    async def call_seen(self, call: FunctionCall) -> None:
        """The model finished the call's arguments; not final yet. Must not execute anything."""

    async def call_abandoned(self, call: FunctionCall, response_status: str) -> None:
        """The response carrying the call ended without completing; it will never run."""

    async def execute(self, call: FunctionCall) -> ToolResult:
        """Run the call at most once (whatever path asks) and return what the model gets.

        Tool failures and denials are results, not exceptions; an exception here is a broker
        fault and ends the controller.
        """

    async def output_sent(self, call: FunctionCall) -> None:
        """The call's output went out on the sideband (or was found at the provider)."""

    async def backlog(self) -> Backlog:
        """Calls recorded as unfinished; read at every resync, so it must be cheap."""


@dataclass(frozen=True)
class AckPlan:
    """How to acknowledge a call whose tool takes long (:mod:`sideband.acks`).

    Attributes:
        after_s: seconds the call may run before the model is asked to say it is on it.
        instructions: the out-of-band response's instructions.
    """

    after_s: float
    instructions: str


@runtime_checkable
class Acknowledging(Protocol):
    """What a :class:`ToolCallHandler` adds to have long calls acknowledged (optional)."""

    def ack_plan(self, call: FunctionCall) -> AckPlan | None:
        """The acknowledgement for ``call``, or ``None``: none (cheap, no I/O)."""

    async def acknowledged(self, call: FunctionCall, response_id: str | None) -> None:
        """The acknowledgement for ``call`` was asked for (``response_id``: once it began)."""


class CallObserver(Protocol):
    """Sees the sideband's traffic; ``record`` runs on the reader's path and must not block."""

    def record(self, direction: Direction, event: dict[str, Any]) -> None: ...

    async def attached(self, kind: AttachKind) -> None:
        """The sideband is connected and the reader is about to start."""

    async def detached(self, close_code: int | None) -> None:
        """The sideband was lost while the call goes on; a reconnect starts now."""


@runtime_checkable
class KeypadObserver(Protocol):
    """What a :class:`CallObserver` adds to hear a phone caller's keypad (optional).

    Runs on the reader's path (``input_audio_buffer.dtmf_event_received``): must not block.
    """

    def dtmf(self, digit: str) -> str | None:
        """The caller pressed ``digit``; a user message for the model to answer, or ``None``.

        A message is a keypad turn: the controller adds it as the broker's and asks for a
        response.
        """


class AnswerGate:
    """Orders a call's first sideband attach against the browser's SDP answer.

    The page can send nothing before it has its answer, so a sideband attached first sees
    everything the page does. Whoever answers the browser waits (bounded) on
    :attr:`attached`, then calls :meth:`answer_sent`; the controller calls :meth:`attach`.
    Each check-and-mark is one step of the event loop, so the two can never both miss.
    """

    def __init__(self) -> None:
        self.attached = asyncio.Event()
        self._answered_first = False

    def answer_sent(self) -> bool:
        """The answer goes out now; ``True`` if the sideband had attached already."""
        if self.attached.is_set():
            return True
        self._answered_first = True
        return False

    def attach(self) -> bool:
        """The first sideband attached; ``True`` if the page had its answer before (late)."""
        self.attached.set()
        return self._answered_first
