"""A lean stand-in provider streaming talking calls (issue 16), run as its own process.

``python -m bench.standin [--period 6] [--delta-interval 0.06]`` serves, on 127.0.0.1, the
provider routes the broker uses (``POST /v1/realtime/calls``, ``…/hangup``, the sideband
``GET /v1/realtime?call_id=…``) and answers client events as a well-behaved provider does
(docs/protocol.md §3): ``session.update`` with the full merged ``session.updated``,
``conversation.item.create`` with ``conversation.item.added``/``.done``, ``response.create``
with a spoken answer, ``conversation.item.retrieve``/``.delete``, ``response.cancel``; a
mistake gets an ``error`` naming the client's ``event_id``. Nothing is sent to a sideband on
attach (as OpenAI does, §0), unless ``--session-created-on-attach``.

Once a sideband is attached, each call talks: every ``period`` seconds (a random phase per
call) a user turn (speech started and stopped, the committed audio item, its transcription),
then the model's spoken answer (30 transcript deltas ``delta_interval`` apart, the item,
content-part and output-buffer events, ``response.done`` with usage, ``rate_limits.updated``).
Every ``function_every``-th turn the model calls the session's first tool instead, and
speaks once the watcher has sent the output and asked for a response. A turn that falls
due while a function call is unanswered or a response is under way is skipped (counted): the
user waits for the tool.

The driver reads the numbers at ``GET /_standin/stats`` (``?reset=1`` starts a new window):
events sent, the dispatch samples (the function call's ``response.done`` sent → its
``function_call_output`` received), config probes (``session.update`` carrying only its
type), function calls issued, answered, answered twice and outstanding. ``POST
/_standin/calls`` creates calls without an offer (for the minimal watcher), ``POST
/_standin/calls/end`` ends them.

Lean on purpose (thousands of events a second on one core): every server event is a JSON
template serialised once (:mod:`bench.standin_wire`) and filled by ``%`` formatting; one task
per call talks; client events (a few per turn) are the only JSON parsed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import BodyPartReader, WSMsgType, web

from .helper_process import serve_until_stopped
from .standin_wire import (
    ARGUMENTS,
    ARGUMENTS_ESCAPED,
    CONTENT_DONE,
    DEFAULT_KEY,
    SDP_ANSWER,
    SPOKEN,
    SPOKEN_ESCAPED,
    T_ARGUMENTS_DELTA,
    T_ARGUMENTS_DONE,
    T_AUDIO_DONE,
    T_BUFFER_STARTED,
    T_BUFFER_STOPPED,
    T_COMMITTED,
    T_FUNCTION_ITEM,
    T_ITEM_ADDED,
    T_ITEM_DELETED,
    T_ITEM_DONE,
    T_ITEM_RETRIEVED,
    T_MESSAGE_ITEM,
    T_OUTPUT_ITEM_ADDED,
    T_OUTPUT_ITEM_DONE,
    T_PART_ADDED,
    T_PART_DONE,
    T_RATE_LIMITS,
    T_RESPONSE_CREATED,
    T_RESPONSE_DONE,
    T_SESSION_CREATED,
    T_SESSION_UPDATED,
    T_SPEECH_STARTED,
    T_SPEECH_STOPPED,
    T_TRANSCRIPT_DELTA,
    T_TRANSCRIPT_DONE,
    T_TRANSCRIPTION_DELTA,
    T_TRANSCRIPTION_DONE,
    T_USAGE,
    T_USER_ITEM,
    base62,
    default_session,
    escaped,
    merge_session,
    new_id,
    tool_name,
    voice,
)

logger = logging.getLogger("bench.standin")

MAX_ITEMS_KEPT: Final = 64
"""Conversation items a call keeps for ``conversation.item.retrieve`` (newest)."""
MAX_SAMPLES: Final = 500_000
READY_PREFIX: Final = "STANDIN_PORT="


@dataclass(frozen=True)
class Profile:
    """The talking-call profile (see the module docstring)."""

    period_s: float = 6.0
    delta_interval_s: float = 0.06
    speech_s: float = 1.2
    function_every: int = 3
    seed: int = 16


# ---- numbers -----------------------------------------------------------------------------


@dataclass
class Stats:
    """What the driver reads; the window counters restart at each ``?reset=1``."""

    window_started: float = field(default_factory=time.monotonic)
    events_sent: int = 0
    events_received: int = 0
    turns: int = 0
    turns_skipped: int = 0
    responses: int = 0
    function_calls: int = 0
    outputs: int = 0
    outputs_repeated: int = 0
    outputs_unknown: int = 0
    response_creates: int = 0
    probes: int = 0
    session_updates: int = 0
    errors_sent: int = 0
    dispatch_s: list[float] = field(default_factory=list)

    def reset(self) -> None:
        fresh = Stats()
        for name in fresh.__dataclass_fields__:
            setattr(self, name, getattr(fresh, name))


@dataclass
class Books:
    """A phase's function calls, from ``?reset=1`` of ``/_standin/books`` on (never windowed)."""

    function_calls: int = 0
    outputs: int = 0
    outputs_repeated: int = 0
    outputs_unknown: int = 0
    unanswered_at_end: int = 0
    """Function calls still waiting for their output when their call ended."""


# ---- calls -------------------------------------------------------------------------------


class ClientEventError(Exception):
    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


class StandinCall:
    """One call: its session, its sidebands, its conversation's newest items, its talking."""

    def __init__(self, server: Standin, call_id: str, session: dict[str, Any]) -> None:
        self.server = server
        self.stats = server.stats
        self.books = server.books
        self.profile = server.profile
        self.call_id = call_id
        self.session = session
        self._session_json: str | None = None
        self.conversation_id = new_id("conv")
        self.sockets: list[web.WebSocketResponse] = []
        self.attached = asyncio.Event()
        self.ended = False
        self.items: dict[str, str] = {}
        """Item id → its JSON, newest last (bounded)."""
        self.last_item: str | None = None
        self.active: str | None = None
        """The response under way (its id)."""
        self.cancel_requested = False
        self.requested: list[str] = []
        """Responses created by a client's ``response.create``, to be spoken."""
        self.pending: dict[str, float] = {}
        """Function calls sent (call id → when their ``response.done`` went out)."""
        self.answered: set[str] = set()
        self.probes = 0
        # A random start in the function-call cycle: calls set up together must not all
        # call the tool in the same turn.
        self.turn = server.rng.randrange(max(1, server.profile.function_every))
        self.audio_ms = 0
        self.tokens_used = 0
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    # ---- sending ---------------------------------------------------------------------

    async def send(self, text: str) -> None:
        for ws in self.sockets:
            if ws.closed:
                continue
            try:
                await ws.send_str(text)
            except (ConnectionError, RuntimeError):
                continue
            self.stats.events_sent += 1

    def eid(self) -> str:
        return new_id("event")

    def session_json(self) -> str:
        if self._session_json is None:
            self._session_json = json.dumps(self.session, separators=(",", ":"))
        return self._session_json

    def remember(self, item_id: str, item_json: str) -> str | None:
        """Append an item to the conversation; the previous item's id (as JSON)."""
        previous = self.last_item
        self.items[item_id] = item_json
        self.last_item = item_id
        if len(self.items) > MAX_ITEMS_KEPT:
            del self.items[next(iter(self.items))]
        return previous

    # ---- client events ---------------------------------------------------------------

    async def on_client_event(self, raw: str, received_at: float) -> None:
        self.stats.events_received += 1
        try:
            event = json.loads(raw)
        except ValueError:
            event = None
        if not isinstance(event, dict):
            await self._error(None, "invalid_json", "The event is not a JSON object.")
            return
        event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        try:
            match event.get("type"):
                case "session.update":
                    await self._session_update(event)
                case "conversation.item.create":
                    await self._item_create(event, received_at)
                case "response.create":
                    await self._response_create()
                case "conversation.item.retrieve":
                    await self._item_retrieve(event)
                case "conversation.item.delete":
                    await self._item_delete(event)
                case "response.cancel":
                    self._response_cancel(event)
                case other:
                    raise ClientEventError("unknown_event", f"Unsupported event type: {other!r}.")
        except ClientEventError as exc:
            await self._error(event_id, exc.code, exc.message, exc.param)

    async def _error(
        self, event_id: str | None, code: str, message: str, param: str | None = None
    ) -> None:
        self.stats.errors_sent += 1
        event = {
            "type": "error",
            "event_id": self.eid(),
            "error": {
                "type": "invalid_request_error",
                "code": code,
                "message": message,
                "param": param,
                "event_id": event_id,
            },
        }
        await self.send(json.dumps(event, separators=(",", ":")))

    async def _session_update(self, event: dict[str, Any]) -> None:
        update = event.get("session")
        if not isinstance(update, dict) or update.get("type") != "realtime":
            raise ClientEventError(
                "invalid_value", "session.type must be 'realtime'.", "session.type"
            )
        if update == {"type": "realtime"}:
            self.probes += 1
            self.stats.probes += 1
        else:
            self.stats.session_updates += 1
            merge_session(self.session, update)
            self._session_json = None
        await self.send(T_SESSION_UPDATED % {"eid": self.eid(), "session": self.session_json()})

    async def _item_create(self, event: dict[str, Any], received_at: float) -> None:
        item = event.get("item")
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            raise ClientEventError("missing_required_parameter", "Missing 'item.type'.", "item")
        if item["type"] == "function_call_output":
            call_id = item.get("call_id")
            sent_at = self.pending.pop(call_id, None) if isinstance(call_id, str) else None
            if sent_at is not None:
                self.stats.outputs += 1
                self.books.outputs += 1
                self.answered.add(str(call_id))
                if len(self.stats.dispatch_s) < MAX_SAMPLES:
                    self.stats.dispatch_s.append(received_at - sent_at)
            elif call_id in self.answered:
                self.stats.outputs_repeated += 1
                self.books.outputs_repeated += 1
            else:
                self.stats.outputs_unknown += 1
                self.books.outputs_unknown += 1
        item_id = item.get("id")
        if not isinstance(item_id, str) or not item_id:
            item_id = new_id("item")
        if item_id in self.items:
            raise ClientEventError(
                "duplicate_item_id", f"Item with id '{item_id}' already exists.", "item.id"
            )
        stored = {"id": item_id, "object": "realtime.item", **item, "status": "completed"}
        stored["id"] = item_id
        item_json = json.dumps(stored, separators=(",", ":"))
        previous = self.remember(item_id, item_json)
        fields = {"previous": json.dumps(previous), "item": item_json}
        await self.send(T_ITEM_ADDED % {"eid": self.eid(), **fields})
        await self.send(T_ITEM_DONE % {"eid": self.eid(), **fields})

    async def _response_create(self) -> None:
        self.stats.response_creates += 1
        if self.active is not None:
            raise ClientEventError(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {self.active}.",
            )
        response_id = new_id("resp")
        self.active = response_id
        self.cancel_requested = False
        # response.created goes out now, in client-event order; the call's task speaks.
        await self.send(self._response_created(response_id))
        self.requested.append(response_id)
        self.wake.set()

    async def _item_retrieve(self, event: dict[str, Any]) -> None:
        item_id = event.get("item_id")
        item_json = self.items.get(item_id) if isinstance(item_id, str) else None
        if item_json is None:
            raise ClientEventError(
                "item_not_found", f"Item with id '{item_id}' not found.", "item_id"
            )
        await self.send(T_ITEM_RETRIEVED % {"eid": self.eid(), "item": item_json})

    async def _item_delete(self, event: dict[str, Any]) -> None:
        item_id = event.get("item_id")
        if not isinstance(item_id, str) or self.items.pop(item_id, None) is None:
            raise ClientEventError(
                "item_not_found", f"Item with id '{item_id}' not found.", "item_id"
            )
        if self.last_item == item_id:
            self.last_item = next(reversed(self.items), None)
        await self.send(T_ITEM_DELETED % {"eid": self.eid(), "item": escaped(item_id)})

    def _response_cancel(self, event: dict[str, Any]) -> None:
        requested = event.get("response_id")
        if self.active is None or (requested and requested != self.active):
            raise ClientEventError(
                "response_cancel_not_active",
                "Cancellation failed: no active response found.",
                "response_id" if requested else None,
            )
        self.cancel_requested = True
        self.wake.set()

    # ---- talking ---------------------------------------------------------------------

    async def talk(self) -> None:
        """The call's one task: user turns on schedule, and the responses to speak."""
        profile = self.profile
        await self.attached.wait()
        next_turn = time.monotonic() + self.server.rng.uniform(0, profile.period_s)
        while not self.ended:
            if self.requested:
                await self._speak(self.requested.pop(0), created=True)
                continue
            wait = next_turn - time.monotonic()
            if wait > 0:
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self.wake.wait()
                continue
            next_turn = max(next_turn + profile.period_s, time.monotonic())
            if self.server.paused:
                continue
            if self.active is not None or self.pending or not self.sockets:
                self.stats.turns_skipped += 1
                continue
            self.turn += 1
            self.stats.turns += 1
            await self._user_turn()
            if self.active is not None:
                continue  # a client's response.create took the turn while the user spoke
            tool = tool_name(self.session)
            if tool is not None and self.turn % profile.function_every == 0:
                await self._function_call(tool)
            else:
                await self._speak(self._new_response(), created=False)

    def _new_response(self) -> str:
        response_id = new_id("resp")
        self.active = response_id
        self.cancel_requested = False
        return response_id

    def _response_created(self, response_id: str) -> str:
        return T_RESPONSE_CREATED % {
            "eid": self.eid(),
            "rid": response_id,
            "status": "in_progress",
            "details": "null",
            "conv": self.conversation_id,
            "voice": voice(self.session),
        }

    async def _user_turn(self) -> None:
        item_id = new_id("item")
        start_ms = self.audio_ms + 400
        await self.send(T_SPEECH_STARTED % {"eid": self.eid(), "ms": start_ms, "item": item_id})
        await asyncio.sleep(self.profile.speech_s)
        self.audio_ms = start_ms + int(self.profile.speech_s * 1000)
        await self.send(
            T_SPEECH_STOPPED % {"eid": self.eid(), "ms": self.audio_ms, "item": item_id}
        )
        item_json = T_USER_ITEM % {"item": item_id}
        previous = json.dumps(self.remember(item_id, item_json))
        await self.send(T_COMMITTED % {"eid": self.eid(), "previous": previous, "item": item_id})
        fields = {"previous": previous, "item": item_json}
        await self.send(T_ITEM_ADDED % {"eid": self.eid(), **fields})
        await self.send(T_ITEM_DONE % {"eid": self.eid(), **fields})
        await self.send(T_TRANSCRIPTION_DELTA % {"eid": self.eid(), "item": item_id})
        await self.send(T_TRANSCRIPTION_DONE % {"eid": self.eid(), "item": item_id})

    def _usage(self, output_text: int, output_audio: int) -> str:
        # Grows with the conversation; the previous turns' input counts as cached.
        input_text = 420 + 24 * self.turn
        input_audio = 12 * self.turn
        cached = max(0, (input_text - 64) // 64 * 64)
        total = input_text + input_audio + output_text + output_audio
        self.tokens_used += total
        return T_USAGE % {
            "total": total,
            "input": input_text + input_audio,
            "output": output_text + output_audio,
            "input_text": input_text,
            "input_audio": input_audio,
            "cached": cached,
            "output_text": output_text,
            "output_audio": output_audio,
        }

    async def _finish(
        self, response_id: str, status: str, output: str, usage: str, details: str = "null"
    ) -> None:
        await self.send(
            T_RESPONSE_DONE
            % {
                "eid": self.eid(),
                "rid": response_id,
                "status": status,
                "details": details,
                "output": output,
                "conv": self.conversation_id,
                "voice": voice(self.session),
                "usage": usage,
            }
        )
        self.active = None
        self.stats.responses += 1
        await self.send(
            T_RATE_LIMITS
            % {"eid": self.eid(), "remaining": max(0, 800000 - self.tokens_used), "reset": 6.0}
        )

    async def _speak(self, response_id: str, *, created: bool) -> None:
        """Stream a spoken answer as ``response_id`` (``created``: already announced)."""
        if not created:
            await self.send(self._response_created(response_id))
        item_id = new_id("item")
        ids = {"rid": response_id, "item": item_id}
        item_json = T_MESSAGE_ITEM % {"item": item_id, "status": "in_progress", "content": "[]"}
        previous = json.dumps(self.remember(item_id, item_json))
        await self.send(
            T_OUTPUT_ITEM_ADDED % {"eid": self.eid(), "rid": response_id, "item": item_json}
        )
        await self.send(T_ITEM_ADDED % {"eid": self.eid(), "previous": previous, "item": item_json})
        await self.send(T_PART_ADDED % {"eid": self.eid(), **ids})
        await self.send(T_BUFFER_STARTED % {"eid": self.eid(), "rid": response_id})
        interval = self.profile.delta_interval_s
        for spoken, word in enumerate(SPOKEN_ESCAPED):
            await asyncio.sleep(interval)
            if self.cancel_requested or self.ended:
                await self._cancelled(response_id, item_id, spoken)
                return
            await self.send(T_TRANSCRIPT_DELTA % {"eid": self.eid(), **ids, "delta": word})
        done_item = T_MESSAGE_ITEM % {
            "item": item_id,
            "status": "completed",
            "content": CONTENT_DONE,
        }
        self.items[item_id] = done_item
        await self.send(T_AUDIO_DONE % {"eid": self.eid(), **ids})
        await self.send(T_TRANSCRIPT_DONE % {"eid": self.eid(), **ids})
        await self.send(T_PART_DONE % {"eid": self.eid(), **ids})
        await self.send(T_ITEM_DONE % {"eid": self.eid(), "previous": "null", "item": done_item})
        await self.send(
            T_OUTPUT_ITEM_DONE % {"eid": self.eid(), "rid": response_id, "item": done_item}
        )
        await self._finish(response_id, "completed", f"[{done_item}]", self._usage(38, 100))
        await self.send(T_BUFFER_STOPPED % {"eid": self.eid(), "rid": response_id})

    async def _cancelled(self, response_id: str, item_id: str, spoken: int) -> None:
        transcript = "".join(SPOKEN[:spoken])
        content = json.dumps([{"type": "output_audio", "transcript": transcript}])
        item_json = T_MESSAGE_ITEM % {"item": item_id, "status": "incomplete", "content": content}
        self.items[item_id] = item_json
        await self.send(T_ITEM_DONE % {"eid": self.eid(), "previous": "null", "item": item_json})
        await self.send(
            T_OUTPUT_ITEM_DONE % {"eid": self.eid(), "rid": response_id, "item": item_json}
        )
        await self._finish(
            response_id,
            "cancelled",
            f"[{item_json}]",
            self._usage(spoken, spoken * 3),
            '{"type":"cancelled","reason":"client_cancelled"}',
        )

    async def _function_call(self, tool: str) -> None:
        response_id = self._new_response()
        await self.send(self._response_created(response_id))
        item_id, call_id = new_id("item"), new_id("call")
        name = escaped(tool)
        started = T_FUNCTION_ITEM % {
            "item": item_id,
            "status": "in_progress",
            "name": name,
            "call": call_id,
            "arguments": "",
        }
        previous = json.dumps(self.remember(item_id, started))
        await self.send(
            T_OUTPUT_ITEM_ADDED % {"eid": self.eid(), "rid": response_id, "item": started}
        )
        await self.send(T_ITEM_ADDED % {"eid": self.eid(), "previous": previous, "item": started})
        fields = {"rid": response_id, "item": item_id, "call": call_id}
        for delta in ARGUMENTS_ESCAPED:
            await asyncio.sleep(self.profile.delta_interval_s)
            await self.send(T_ARGUMENTS_DELTA % {"eid": self.eid(), **fields, "delta": delta})
        await self.send(
            T_ARGUMENTS_DONE % {"eid": self.eid(), **fields, "name": name, "arguments": ARGUMENTS}
        )
        done = T_FUNCTION_ITEM % {
            "item": item_id,
            "status": "completed",
            "name": name,
            "call": call_id,
            "arguments": ARGUMENTS,
        }
        self.items[item_id] = done
        await self.send(T_ITEM_DONE % {"eid": self.eid(), "previous": "null", "item": done})
        await self.send(T_OUTPUT_ITEM_DONE % {"eid": self.eid(), "rid": response_id, "item": done})
        if self.cancel_requested or self.ended:
            await self._finish(
                response_id,
                "cancelled",
                f"[{done}]",
                self._usage(4, 0),
                '{"type":"cancelled","reason":"client_cancelled"}',
            )
            return
        self.stats.function_calls += 1
        self.books.function_calls += 1
        # The dispatch clock starts as the call becomes final: nobody may act on it before.
        self.pending[call_id] = time.perf_counter()
        await self._finish(response_id, "completed", f"[{done}]", self._usage(4, 0))

    # ---- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self.task = asyncio.create_task(self.talk(), name=f"standin-call:{self.call_id}")

    async def end(self, code: int = 1000) -> None:
        if self.ended:
            return
        self.ended = True
        self.books.unanswered_at_end += len(self.pending)
        self.wake.set()
        self.attached.set()
        for ws in list(self.sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=code)
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task


# ---- the server --------------------------------------------------------------------------


def _provider_error(status: int, code: str, message: str) -> web.Response:
    body = {"error": {"type": "invalid_request_error", "code": code, "message": message}}
    return web.json_response(body, status=status)


class Standin:
    """The app's state: the calls, the numbers, the profile."""

    def __init__(self, key: str, profile: Profile, *, session_created_on_attach: bool) -> None:
        self.key = key
        self.profile = profile
        self.session_created_on_attach = session_created_on_attach
        self.rng = random.Random(profile.seed)
        self.stats = Stats()
        self.books = Books()
        self.paused = False
        """No new turns start (what is under way finishes): the driver settles the books."""
        self.calls: dict[str, StandinCall] = {}
        self.ended: set[str] = set()

    def authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.key}"

    def new_call(self, posted: Mapping[str, Any] | None) -> StandinCall:
        session = default_session()
        if posted:
            if isinstance(posted.get("model"), str):
                session["model"] = posted["model"]
            merge_session(session, posted)
        call = StandinCall(self, f"rtc_u2_{base62(21)}", session)
        call.books = self.books
        self.calls[call.call_id] = call
        call.start()
        return call

    async def end_call(self, call_id: str) -> bool:
        call = self.calls.pop(call_id, None)
        if call is None:
            return False
        self.ended.add(call_id)
        await call.end()
        return True

    # ---- provider routes -------------------------------------------------------------

    async def create_call(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return _provider_error(401, "invalid_api_key", "Incorrect API key provided.")
        posted: dict[str, Any] | None = None
        if request.content_type == "multipart/form-data":
            sdp = ""
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader):
                    continue
                text = (await part.read(decode=True)).decode("utf-8", "replace")
                if part.name == "sdp":
                    sdp = text
                elif part.name == "session":
                    try:
                        loaded = json.loads(text)
                    except ValueError:
                        return _provider_error(400, "invalid_session", "session is not JSON.")
                    if not isinstance(loaded, dict) or loaded.get("type") != "realtime":
                        return _provider_error(400, "invalid_session", "session.type.")
                    posted = loaded
        elif request.content_type == "application/sdp":
            sdp = await request.text()
        else:
            return _provider_error(415, "unsupported_content_type", "Send application/sdp.")
        if not sdp.startswith("v=0") or "a=setup:actpass" not in sdp:
            return _provider_error(400, "invalid_sdp", "The SDP offer is invalid.")
        call = self.new_call(posted)
        return web.Response(
            status=201,
            text=SDP_ANSWER,
            content_type="application/sdp",
            headers={"Location": f"/v1/realtime/calls/{call.call_id}"},
        )

    async def hangup(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return _provider_error(401, "invalid_api_key", "Incorrect API key provided.")
        if not await self.end_call(request.match_info["call_id"]):
            return _provider_error(404, "call_id_not_found", "No such call.")
        return web.Response(status=200)

    async def sideband(self, request: web.Request) -> web.StreamResponse:
        if not self.authorized(request):
            return _provider_error(401, "invalid_api_key", "Incorrect API key provided.")
        call = self.calls.get(request.query.get("call_id", ""))
        if call is None or call.ended:
            return _provider_error(404, "call_id_not_found", "No such call.")
        ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024, heartbeat=None)
        await ws.prepare(request)
        call.sockets.append(ws)
        if self.session_created_on_attach:
            await ws.send_str(
                T_SESSION_CREATED % {"eid": call.eid(), "session": call.session_json()}
            )
            self.stats.events_sent += 1
        call.attached.set()
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await call.on_client_event(msg.data, time.perf_counter())
                elif msg.type == WSMsgType.ERROR:
                    break
        finally:
            if ws in call.sockets:
                call.sockets.remove(ws)
        return ws

    # ---- admin routes (the driver's) -------------------------------------------------

    async def stats_route(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return _provider_error(401, "invalid_api_key", "Incorrect API key provided.")
        stats = self.stats
        now = time.monotonic()
        live = list(self.calls.values())
        pending_ages = [time.perf_counter() - t for c in live for t in c.pending.values()]
        probes_by_call = [c.probes for c in live]
        body = {
            "window_s": round(now - stats.window_started, 3),
            "calls_live": len(live),
            "calls_attached": sum(1 for c in live if c.sockets),
            "events_sent": stats.events_sent,
            "events_received": stats.events_received,
            "turns": stats.turns,
            "turns_skipped": stats.turns_skipped,
            "responses": stats.responses,
            "function_calls": stats.function_calls,
            "outputs": stats.outputs,
            "outputs_repeated": stats.outputs_repeated,
            "outputs_unknown": stats.outputs_unknown,
            "response_creates": stats.response_creates,
            "probes": stats.probes,
            "probes_per_call_max": max(probes_by_call, default=0),
            "session_updates": stats.session_updates,
            "errors_sent": stats.errors_sent,
            "outstanding": len(pending_ages),
            "outstanding_oldest_s": round(max(pending_ages, default=0.0), 3),
            "dispatch_s": stats.dispatch_s,
        }
        if request.query.get("reset") == "1":
            stats.reset()
            for call in live:
                call.probes = 0
        return web.json_response(body)

    async def books_route(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return _provider_error(401, "invalid_api_key", "Incorrect API key provided.")
        live = list(self.calls.values())
        body = {
            **dataclasses.asdict(self.books),
            "outstanding": sum(len(c.pending) for c in live),
            "responses_active": sum(1 for c in live if c.active is not None or c.requested),
        }
        if request.query.get("reset") == "1":
            self.books = Books()
            for call in live:
                call.books = self.books
        return web.json_response(body)

    async def pause_route(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return _provider_error(401, "invalid_api_key", "Incorrect API key provided.")
        self.paused = True
        return web.json_response({"paused": True})

    async def resume_route(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return _provider_error(401, "invalid_api_key", "Incorrect API key provided.")
        self.paused = False
        return web.json_response({"paused": False})

    async def create_calls_route(self, request: web.Request) -> web.Response:
        """``POST /_standin/calls`` ``{"n": N, "session": {...}}``: calls without an offer."""
        if not self.authorized(request):
            return _provider_error(401, "invalid_api_key", "Incorrect API key provided.")
        body = await request.json()
        session = body.get("session") if isinstance(body.get("session"), dict) else None
        return web.json_response({"call_ids": self.create_calls(int(body.get("n", 1)), session)})

    def create_calls(self, count: int, session: Mapping[str, Any] | None) -> list[str]:
        """Calls made without an offer (each talks once a sideband attaches); their ids."""
        return [self.new_call(session).call_id for _ in range(max(0, min(count, 100_000)))]

    async def end_calls_route(self, request: web.Request) -> web.Response:
        """``POST /_standin/calls/end`` ``{"call_ids": [...]}`` (or ``{"all": true}``)."""
        if not self.authorized(request):
            return _provider_error(401, "invalid_api_key", "Incorrect API key provided.")
        body = await request.json()
        ids = list(self.calls) if body.get("all") else list(body.get("call_ids") or [])
        ended = 0
        for chunk in range(0, len(ids), 200):
            results = await asyncio.gather(*(self.end_call(i) for i in ids[chunk : chunk + 200]))
            ended += sum(results)
        return web.json_response({"ended": ended})

    async def close(self) -> None:
        await asyncio.gather(*(self.end_call(i) for i in list(self.calls)))


def create_app(standin: Standin) -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/realtime/calls", standin.create_call)
    app.router.add_post("/v1/realtime/calls/{call_id}/hangup", standin.hangup)
    app.router.add_get("/v1/realtime", standin.sideband)
    app.router.add_get("/_standin/stats", standin.stats_route)
    app.router.add_get("/_standin/books", standin.books_route)
    app.router.add_post("/_standin/pause", standin.pause_route)
    app.router.add_post("/_standin/resume", standin.resume_route)
    app.router.add_post("/_standin/calls", standin.create_calls_route)
    app.router.add_post("/_standin/calls/end", standin.end_calls_route)

    async def on_shutdown(_app: web.Application) -> None:
        await standin.close()

    app.on_shutdown.append(on_shutdown)
    return app


async def serve(args: argparse.Namespace) -> None:
    profile = Profile(
        period_s=args.period,
        delta_interval_s=args.delta_interval,
        speech_s=args.speech,
        function_every=args.function_every,
        seed=args.seed,
    )
    standin = Standin(args.key, profile, session_created_on_attach=args.session_created_on_attach)
    runner = web.AppRunner(create_app(standin), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    await serve_until_stopped(runner, READY_PREFIX, args.max_seconds, port=args.port)
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.standin", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--key", default=DEFAULT_KEY)
    parser.add_argument("--period", type=float, default=Profile.period_s)
    parser.add_argument("--delta-interval", type=float, default=Profile.delta_interval_s)
    parser.add_argument("--speech", type=float, default=Profile.speech_s)
    parser.add_argument("--function-every", type=int, default=Profile.function_every)
    parser.add_argument("--seed", type=int, default=Profile.seed)
    parser.add_argument("--session-created-on-attach", action="store_true")
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="standin %(levelname)s %(message)s")
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
