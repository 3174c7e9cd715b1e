"""Dispatch latency as the provider sees it, and the sideband-only sessions it is measured on.

A :class:`DispatchProbe` wraps one emulator call's ``broadcast`` (every server event goes
through it) and ``submit`` (every client event arrives through it): the time between the
emulator sending ``response.function_call_arguments.done`` and receiving the broker's
``function_call_output`` for the same ``call_id`` is one dispatch sample. The broker must
also wait for the ``response.done`` that makes the call final, so the sample includes that
wait; the emulator sends it right after the arguments (no pacing: ``token_interval=0``).

A round is started the way a user would: a user text message naming the tool and a
``response.create``, submitted to the call as if from the browser's data channel, so the
scripted model calls the no-op tool. A round ends when the output has arrived and the model
has answered it (the ``response.done`` of the broker's ``response.create``), so rounds on one
call never overlap.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from emulator import Call, CallRegistry
from emulator.admin import SIDEBAND_ONLY_SESSION_NAME

from .stack import NOOP_TOOL, BrokerApi, CreatedSession

BENCH_CONNECTION_ID: Final = "dc_bench"
USER_TEXT: Final = json.dumps(
    {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": NOOP_TOOL}],
        },
    }
)
RESPONSE_CREATE: Final = json.dumps({"type": "response.create"})
ATTACH_TIMEOUT_S: Final = 60.0
FIND_CALL_WINDOW: Final = 2000
"""How many of the newest emulator calls are searched for a session's call."""

_FINGERPRINT: Final = ":".join(["AB"] * 32)
SIDEBAND_ONLY_OFFER: Final = "".join(
    line + "\r\n"
    for line in (
        "v=0",
        "o=- 1 1 IN IP4 127.0.0.1",
        f"s={SIDEBAND_ONLY_SESSION_NAME}",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "c=IN IP4 0.0.0.0",
        "a=mid:0",
        "a=sendrecv",
        "a=rtpmap:111 opus/48000/2",
        "a=ice-ufrag:bnch",
        "a=ice-pwd:benchbenchbenchbenchbe",
        f"a=fingerprint:sha-256 {_FINGERPRINT}",
        "a=setup:actpass",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "c=IN IP4 0.0.0.0",
        "a=mid:1",
        "a=sctp-port:5000",
        "a=ice-ufrag:bnch",
        "a=ice-pwd:benchbenchbenchbenchbe",
        f"a=fingerprint:sha-256 {_FINGERPRINT}",
        "a=setup:actpass",
    )
)
"""An offer the broker and the emulator accept, for a call no peer will ever join: its
session name asks the emulator's bench route for a ``SidebandOnlyCall``."""


class DispatchProbe:
    """Emulator-side timestamps of one call's function calls and the outputs they got.

    Installs itself on ``call`` (instance attributes shadowing ``broadcast`` and ``submit``,
    which the call, its responses and its sockets all go through); ``time.perf_counter``
    is taken before the event is handed on.
    """

    def __init__(self, call: Call) -> None:
        self.call = call
        self.function_calls: list[str] = []
        """Function call ids in the order the emulator sent their arguments."""
        self.arguments_done_at: dict[str, float] = {}
        self.output_at: dict[str, float] = {}
        self.responses_done = 0
        self.changed = asyncio.Event()
        self._broadcast: Callable[[dict[str, Any]], None] = call.broadcast
        self._submit: Callable[[Any, str, str], None] = call.submit
        call.broadcast = self._on_broadcast  # type: ignore[method-assign]
        call.submit = self._on_submit  # type: ignore[method-assign]

    def _on_broadcast(self, event: dict[str, Any]) -> None:
        at = time.perf_counter()
        kind = event.get("type")
        if kind == "response.function_call_arguments.done":
            call_id = str(event.get("call_id"))
            self.function_calls.append(call_id)
            self.arguments_done_at[call_id] = at
            self.changed.set()
        elif kind == "response.done":
            self.responses_done += 1
            self.changed.set()
        self._broadcast(event)

    def _on_submit(self, source: Any, connection_id: str, raw: str) -> None:
        at = time.perf_counter()
        # Parsed only when it can be an output: the call parses every event again anyway.
        if "function_call_output" in raw:
            try:
                event = json.loads(raw)
            except ValueError:
                event = None
            item = event.get("item") if isinstance(event, dict) else None
            if (
                isinstance(item, dict)
                and event is not None
                and event.get("type") == "conversation.item.create"
                and item.get("type") == "function_call_output"
                and isinstance(item.get("call_id"), str)
            ):
                self.output_at.setdefault(item["call_id"], at)
                self.changed.set()
        self._submit(source, connection_id, raw)

    async def round(self, timeout: float) -> float | None:  # noqa: ASYNC109
        """One tool call through the broker; its dispatch latency in seconds.

        ``None`` if it did not complete within ``timeout`` seconds (no output, or the model
        never answered it). Cancellation-safe: nothing is left waiting.
        """
        calls_before = len(self.function_calls)
        done_before = self.responses_done
        self.call.submit("datachannel", BENCH_CONNECTION_ID, USER_TEXT)
        self.call.submit("datachannel", BENCH_CONNECTION_ID, RESPONSE_CREATE)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if len(self.function_calls) > calls_before:
                        call_id = self.function_calls[calls_before]
                        # Two responses: the one calling the tool, and the answer to its output.
                        if call_id in self.output_at and self.responses_done >= done_before + 2:
                            return self.output_at[call_id] - self.arguments_done_at[call_id]
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            return None


@dataclass
class LiveSession:
    """A broker session whose call is up at the emulator, with a probe on the call."""

    created: CreatedSession
    probe: DispatchProbe
    rounds: list[float | None] = field(default_factory=list)

    @property
    def call(self) -> Call:
        return self.probe.call


def new_marker() -> str:
    """Unique session instructions: how the driver finds a session's call at the emulator."""
    return f"bench session {uuid.uuid4().hex}"


def find_call(registry: CallRegistry, instructions: str) -> Call | None:
    """The newest call created with ``instructions`` (searched newest first, bounded)."""
    calls = registry.calls
    for call_id in reversed(list(calls)[-FIND_CALL_WINDOW:]):
        call = calls[call_id]
        if call.session.get("instructions") == instructions:
            return call
    return None


async def wait_attached(call: Call, timeout: float = ATTACH_TIMEOUT_S) -> None:  # noqa: ASYNC109
    """Wait until a sideband is attached and has spoken (the broker asserts its config first).

    Raises:
        TimeoutError: not within ``timeout`` seconds.
    """
    async with asyncio.timeout(timeout):
        while not (call.sidebands and any(r.source == "sideband" for r in call.received)):  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def open_sideband_session(
    api: BrokerApi, registry: CallRegistry, *, offer: str = SIDEBAND_ONLY_OFFER
) -> LiveSession:
    """Create a session, make its offer through the broker, wait for its sideband.

    Raises:
        BrokerApiError: the broker refused a step.
        LookupError: the emulator has no call for the session.
        TimeoutError: the sideband did not attach in time.
    """
    marker = new_marker()
    created = await api.create_session(instructions=marker)
    await api.offer(created, offer)
    call = find_call(registry, marker)
    if call is None:
        raise LookupError(f"no emulator call for session {created.session_id}")
    probe = DispatchProbe(call)
    await wait_attached(call)
    return LiveSession(created, probe)


async def open_sessions(
    api: BrokerApi,
    registry: CallRegistry,
    count: int,
    *,
    concurrency: int,
    deadline: float,
) -> tuple[list[LiveSession], list[str]]:
    """Open up to ``count`` sideband-only sessions, ``concurrency`` at a time.

    Stops early at ``deadline`` (``time.monotonic()``) or after too many failures (a machine
    limit: more would only pile up errors). Returns the sessions and the errors.
    """
    opened: list[LiveSession] = []
    errors: list[str] = []
    remaining = iter(range(count))

    async def worker() -> None:
        for _ in remaining:
            if time.monotonic() > deadline or len(errors) > max(10, count // 20):
                return
            try:
                opened.append(await open_sideband_session(api, registry))
            except Exception as exc:  # counted and reported, never fatal
                errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")

    async with asyncio.TaskGroup() as tasks:
        for i in range(max(1, min(concurrency, count))):
            tasks.create_task(worker(), name=f"bench-open-{i}")
    return opened, errors


@dataclass(frozen=True)
class Growth:
    """What one step's session set-up came to."""

    opened: int
    errors: list[str]
    seconds: float

    def as_json(self) -> dict[str, Any]:
        return {
            "setup_s": round(self.seconds, 1),
            "setup_sessions_per_s": round(self.opened / self.seconds, 1) if self.seconds else None,
            "setup_errors": len(self.errors),
            "setup_error_samples": self.errors[:5],
        }


async def grow_sessions(
    api: BrokerApi,
    registry: CallRegistry,
    sessions: list[LiveSession],
    target: int,
    *,
    concurrency: int,
    setup_max_s: float,
    deadline: float,
) -> Growth:
    """Open sessions until ``sessions`` holds ``target`` (appended in place), bounded in time."""
    started = time.monotonic()
    opened, errors = await open_sessions(
        api,
        registry,
        target - len(sessions),
        concurrency=concurrency,
        deadline=min(deadline, started + setup_max_s),
    )
    sessions += opened
    return Growth(len(opened), errors, time.monotonic() - started)
