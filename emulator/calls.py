"""Calls: per-call state, client-event processing, fan-out and the recorder.

A :class:`Call` owns one :class:`~emulator.peer.Peer` (none for a WebSocket session,
:mod:`emulator.sessions`), the attached sidebands, a worker
task that processes client events one at a time, and at most one running response. Every
server event goes, in one synchronous step, to the data channel and to every sideband's
outbound queue, so all connections see the same order (docs/protocol.md §2.3). ``error`` events
are the exception: they go only to the connection that caused them (§2.2, [inferred]).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal

import numpy as np
from numpy.typing import NDArray

from ._conversation import delete_item, find_item, insert_item
from ._events import error_event, item_event, server_event, session_event
from ._ids import new_call_id, new_connection_id, new_conversation_id, new_item_id
from ._input_audio import MIN_COMMIT_MS, InputAudio, decode_appended_audio
from ._items import committed_audio, normalize_client_item, user_audio_item, with_input_audio
from ._links import SidebandLink
from ._rate_limits import RateLimits
from ._response import ResponseRun
from ._session import check_session_fields, merge_session
from ._speaker import Speaker, Voice
from ._streamed_audio import StreamedVoice
from ._transcription import (
    HeardQueue,
    Spoken,
    TranscriptionJob,
    run_transcription,
    transcription_config,
    wants_logprobs,
)
from ._usage import InputTokens, input_tokens
from .audio import SpeechStarted, SpeechStopped, VadEvent
from .errors import ClientEventError
from .faults import FaultConfig, Faults
from .model import plan_out_of_band, plan_response
from .peer import Peer
from .settings import EmulatorSettings

logger = logging.getLogger(__name__)

Source = Literal["datachannel", "sideband", "websocket"]
Media = Literal["webrtc", "websocket", "sip"]
SIDEBAND_CLOSE_WAIT_S: Final = 2.0  # bound on waiting for sidebands to finish closing
MAX_SENT_RECORDED: Final = 50_000  # the recorder keeps the newest server events of a call
MAX_RECEIVED_RECORDED: Final = 50_000  # ... and the newest client events
MAX_ENDED_CALLS: Final = 1_000  # a long-running emulator forgets the oldest ended calls


@dataclass(frozen=True)
class ReceivedClientEvent:
    """One client event as it arrived, before any validation.

    Attributes:
        source: ``"datachannel"`` (the browser), ``"sideband"``, or ``"websocket"`` (the
            socket of a WebSocket session).
        connection_id: emulator-local id of the connection (``dc_…`` / ``sb_…``).
        event: the parsed JSON object.
        at: arrival time, ``time.time()`` seconds.
    """

    source: Source
    connection_id: str
    event: dict[str, Any]
    at: float


class Call:
    """One WebRTC call and its session.

    Public attributes are for inspection by tests: ``call_id``, ``location`` (the exact
    ``Location`` header sent), ``session`` (effective config), ``received`` (every client
    event from every connection, in arrival order), ``sent`` (every server event the call
    produced, in order, each once however many connections got it), ``sideband_attaches``
    (the ``call_id`` query value of each accepted sideband), ``ended``/``end_reason`` and
    ``conversation``.

    ``page_events``, when given, is the only server event types the data channel receives
    (Azure's ``?webrtcfilter=on``); sidebands always receive every event.

    ``media="websocket"`` makes a call without a peer (a WebSocket session): no data
    channel, and responses carry their audio as ``response.output_audio.delta`` events
    (:class:`~emulator._streamed_audio.StreamedVoice`) instead of RTP.
    """

    def __init__(
        self,
        call_id: str,
        session: dict[str, Any],
        settings: EmulatorSettings,
        faults: Faults | None = None,
        *,
        page_events: frozenset[str] | None = None,
        media: Media = "webrtc",
    ) -> None:
        self.call_id = call_id
        self.media = media
        self.location = f"/v1/realtime/calls/{call_id}"
        self.session = session
        self.received: deque[ReceivedClientEvent] = deque(maxlen=MAX_RECEIVED_RECORDED)
        self.sent: deque[dict[str, Any]] = deque(maxlen=MAX_SENT_RECORDED)
        self.sideband_attaches: list[str] = []
        self.ended = False
        self.end_reason: str | None = None
        self.conversation: list[dict[str, Any]] = []
        self.conversation_id = new_conversation_id()
        self.created_at = time.monotonic()
        self._settings = settings
        self._faults = faults or Faults(FaultConfig())
        self._dc_connection_id = new_connection_id("datachannel")
        self._page_events = page_events
        self._peer: Peer | None = None
        self._speaker: Voice
        if media == "webrtc":
            self._peer = Peer(
                call_id,
                on_channel_open=self._on_channel_open,
                on_channel_message=self._on_dc_message,
                on_audio=self._on_audio,
            )
            self._speaker = Speaker(self._peer, self.broadcast, settings.speech)
        else:
            self._speaker = StreamedVoice(settings.speech)
        self._input = InputAudio(_turn_detection(session))
        self._speech_item_id: str | None = None
        self._rate_limits = RateLimits()
        self._model_calls: set[str] = set()  # function calls the model made (model rule 0)
        self._input_audio_ms: dict[str, float] = {}  # user audio item id -> committed length
        # What the next committed audio turns say (POST /_emulator/calls/{id}/heard).
        self.heard = HeardQueue(settings.heard_default)
        # Audio items whose words the model understands untranscribed (a phone caller's
        # spoken turn, :class:`~emulator._transcription.Spoken`): item id -> words.
        self._understood: dict[str, str] = {}
        self._previous_input_tokens = 0  # the last response's input: the cached prefix
        self._sidebands: dict[str, SidebandLink] = {}
        self._inbox: asyncio.Queue[tuple[Source, str, dict[str, Any] | None]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._active: tuple[ResponseRun, asyncio.Task[None]] | None = None
        # Out-of-band responses (response.conversation "none") by response id: they run
        # beside the conversation's one response, never blocking or blocked by it.
        self._out_of_band: dict[str, tuple[ResponseRun, asyncio.Task[None]]] = {}
        self._end_done = asyncio.Event()
        self._close_code = 1000

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self, offer_sdp: str) -> str:
        """Answer the offer and start the call's tasks; returns the answer SDP.

        Raises:
            InvalidSdpError: the offer is unusable (the caller must then :meth:`end` the call).
        """
        if self._peer is None:
            raise RuntimeError("a call without a peer takes no offer")
        answer = await self._peer.answer(offer_sdp)
        self._spawn(self._work(), f"call-worker:{self.call_id}")
        self._spawn(self._watch_peer(), f"call-peer-watch:{self.call_id}")
        return answer

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "call %s: task %s crashed", self.call_id, task.get_name(), exc_info=task.exception()
            )

    async def _watch_peer(self) -> None:
        assert self._peer is not None
        await self._peer.wait_ended()
        await self.end("peer_closed")

    async def end(self, reason: str, *, close_code: int = 1000, abort: bool = False) -> None:
        """End the call: close sidebands (``close_code``), the peer and every task; idempotent.

        ``abort`` cuts the sidebands' transports instead, without a close frame (clients see
        1006): how a phone caller's hangup has been seen to end a sideband (docs/protocol.md
        §0). A second caller waits for the first to finish. Safe to call from one of the
        call's own tasks (that task is not cancelled).
        """
        if self.ended:
            if asyncio.current_task() not in self._tasks:
                await self._end_done.wait()
            return
        self.ended = True
        self.end_reason = reason
        self._close_code = close_code
        logger.info("call %s ended reason=%s", self.call_id, reason)
        try:
            links = list(self._sidebands.values())
            for link in links:
                if abort:
                    link.request_abort()
                else:
                    link.request_close(close_code)
            if links:
                try:
                    async with asyncio.timeout(SIDEBAND_CLOSE_WAIT_S):
                        for link in links:
                            await link.detached.wait()
                except TimeoutError:
                    logger.warning("call %s: sidebands slow to close", self.call_id)
            if self._peer is not None:
                await self._peer.close()
            current = asyncio.current_task()
            tasks = [t for t in self._tasks if t is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._active = None
            self._out_of_band.clear()
        finally:
            self._end_done.set()

    async def wait_ended(self) -> None:
        """Return once the call has ended (:meth:`end` finished), whoever ended it."""
        await self._end_done.wait()

    def sideband_ready(self) -> bool:
        """Whether a sideband may attach now (``sideband_ready_delay`` has passed)."""
        elapsed = time.monotonic() - self.created_at
        return not self.ended and elapsed >= self._settings.sideband_ready_delay

    def attach_sideband(self, call_id_query: str, *, faults: Faults | None = None) -> SidebandLink:
        """Register an upgraded sideband socket; it receives every later server event.

        ``faults`` (the app's fault switches) lets the link drop, delay or filter events.
        """
        link = SidebandLink(call_id_query, faults=faults)
        if self.ended:
            # The call ended while the handshake was upgrading: close as the others were.
            link.request_close(self._close_code)
            return link
        if self._faults.current.single_sideband:
            for earlier in self._sidebands.values():
                earlier.request_close(1000)
        self._sidebands[link.connection_id] = link
        self.sideband_attaches.append(call_id_query)
        logger.info("call %s: sideband %s attached", self.call_id, link.connection_id)
        if self._settings.replay_session_created_to_sideband:
            event = session_event("session.created", self.session)
            self.sent.append(event)
            link.deliver(json.dumps(event), event_type="session.created")
        return link

    def detach_sideband(self, link: SidebandLink) -> None:
        self._sidebands.pop(link.connection_id, None)
        link.detached.set()
        logger.info("call %s: sideband %s detached", self.call_id, link.connection_id)

    @property
    def sidebands(self) -> list[SidebandLink]:
        """The sidebands attached now, in attach order."""
        return list(self._sidebands.values())

    def close_sidebands(self, code: int) -> None:
        """Ask every attached sideband to close with ``code`` (used at app shutdown)."""
        for link in self._sidebands.values():
            link.request_close(code)

    # ---- fan-out ---------------------------------------------------------------------

    def broadcast(self, event: dict[str, Any]) -> None:
        """Send a server event to the data channel and every sideband, in that order."""
        if self.ended:
            return
        self.sent.append(event)
        text = json.dumps(event)
        self._to_page(event["type"], text)
        for link in self._sidebands.values():
            link.deliver(text, event_type=event["type"])

    def _reply(self, source: Source, connection_id: str, event: dict[str, Any]) -> None:
        if self.ended:
            return
        self.sent.append(event)
        text = json.dumps(event)
        if source == "datachannel":
            self._to_page(event["type"], text)
        elif (link := self._sidebands.get(connection_id)) is not None:
            link.deliver(text, event_type=event["type"])

    def _on_channel_open(self) -> None:
        # session.created is the first event of a new connection; sidebands only get it
        # when replay_session_created_to_sideband is set (docs/protocol.md §7 item 1).
        event = session_event("session.created", self.session)
        self.sent.append(event)
        self._to_page(event["type"], json.dumps(event))

    def _to_page(self, event_type: str, text: str) -> None:
        if self._peer is not None and (
            self._page_events is None or event_type in self._page_events
        ):
            self._peer.send(text)

    # ---- client events ---------------------------------------------------------------

    def _on_dc_message(self, raw: str) -> None:
        self.submit("datachannel", self._dc_connection_id, raw)

    def submit(self, source: Source, connection_id: str, raw: str) -> None:
        """Record a client event and queue it for the call's worker.

        Text that is not a JSON object is not recorded (it is no event); it is answered
        with an ``invalid_json`` error to the sender.
        """
        if self.ended:
            return
        try:
            event = json.loads(raw)
        except ValueError:
            event = None
        if isinstance(event, dict):
            self.received.append(
                ReceivedClientEvent(source, connection_id, _recorded(event), time.time())
            )
            self._inbox.put_nowait((source, connection_id, event))
        else:
            self._inbox.put_nowait((source, connection_id, None))

    async def _work(self) -> None:
        while True:
            source, connection_id, event = await self._inbox.get()
            if self.ended:
                continue  # end() is closing everything; late events change nothing
            try:
                self._process(event, source, connection_id)
            except ClientEventError as exc:
                client_event_id = event.get("event_id") if event else None
                if not isinstance(client_event_id, str):
                    client_event_id = None
                code = self._faults.current.missing_item_error_code
                if exc.code == "item_not_found" and code != exc.code:
                    exc = ClientEventError(code, exc.message, param=exc.param, type_=exc.type)
                self._reply(source, connection_id, error_event(exc, client_event_id))
            except Exception:
                # A bug in the emulator: report it to the sender and keep serving the call.
                logger.exception("call %s: failed to process a client event", self.call_id)
                failure = ClientEventError("server_error", "Internal error.", type_="server_error")
                self._reply(source, connection_id, error_event(failure, None))

    def _process(self, event: dict[str, Any] | None, source: Source, connection_id: str) -> None:
        if event is None:
            raise ClientEventError("invalid_json", "The message is not a JSON object.")
        match event.get("type"):
            case "session.update":
                self._session_update(event, source, connection_id)
            case "conversation.item.create":
                self._item_create(event, source, connection_id)
            case "conversation.item.delete":
                self._item_delete(event)
            case "conversation.item.retrieve":
                self._item_retrieve(event)
            case "conversation.item.truncate":
                self._item_truncate(event)
            case "input_audio_buffer.append":
                self._input_append(event)
            case "input_audio_buffer.commit":
                self._input_commit()
            case "input_audio_buffer.clear":
                self._input.clear()
                self._speech_item_id = None
                self.broadcast(server_event("input_audio_buffer.cleared"))
            case "output_audio_buffer.clear":
                self._speaker.clear()
            case "response.create":
                self._response_create(event)
            case "response.cancel":
                self._response_cancel(event)
            case None:
                raise ClientEventError(
                    "missing_required_parameter",
                    "Missing required parameter: 'type'.",
                    param="type",
                )
            case other:
                raise ClientEventError(
                    "unknown_event", f"Unsupported event type: {other!r}.", param="type"
                )

    def _session_update(self, event: dict[str, Any], source: Source, connection_id: str) -> None:
        if "session" not in event:
            raise ClientEventError(
                "missing_required_parameter",
                "Missing required parameter: 'session'.",
                param="session",
            )
        update = check_session_fields(event["session"])
        faults = self._faults.current
        if faults.keep_instructions_on_empty and update.get("instructions") == "":
            update = {k: v for k, v in update.items() if k != "instructions"}
        merge_session(self.session, update)
        self._input.configure(_turn_detection(self.session))
        updated = session_event("session.updated", self.session)
        if source == "datachannel" and faults.sideband_misses_page_session_updates:
            self._reply(source, connection_id, updated)  # the sender is always answered
        else:
            self.broadcast(updated)

    def _item_create(self, event: dict[str, Any], source: Source, connection_id: str) -> None:
        item = normalize_client_item(event.get("item"))
        faults = self._faults.current
        if faults.provider_item_ids:
            item["id"] = new_item_id()
        previous_id = insert_item(self.conversation, item, event.get("previous_item_id"))
        added = item_event("conversation.item.added", item, previous_id)
        done = item_event("conversation.item.done", item, previous_id)
        if source == "datachannel" and faults.sideband_misses_page_items:
            self._reply(source, connection_id, added)
            self._reply(source, connection_id, done)
        else:
            self.broadcast(added)
            self.broadcast(done)

    def _item_delete(self, event: dict[str, Any]) -> None:
        item_id = delete_item(self.conversation, event.get("item_id"))
        self.broadcast(server_event("conversation.item.deleted", item_id=item_id))

    def append_item(self, item: dict[str, Any]) -> str | None:
        """Append a model-generated item; return the id of the item before it."""
        previous = self.conversation[-1]["id"] if self.conversation else None
        self.conversation.append(item)
        if item.get("type") == "function_call":
            self._model_calls.add(item["id"])
        return previous

    def _response_create(self, event: dict[str, Any]) -> None:
        params = event.get("response") or {}
        if not isinstance(params, dict):
            raise ClientEventError("invalid_type", "Invalid type for 'response'.", param="response")
        conversation = params.get("conversation", "auto")
        if conversation not in ("auto", "none"):
            raise ClientEventError(
                "invalid_value",
                "Invalid value for 'response.conversation': expected 'auto' or 'none'.",
                param="response.conversation",
            )
        if conversation == "none":
            self._start_out_of_band(params)
            return
        if self._active is not None:
            active_id = self._active[0].response_id
            raise ClientEventError(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {active_id}. "
                "Wait until the response is finished before creating a new one.",
            )
        self._start_response(params)

    def _start_out_of_band(self, params: dict[str, Any]) -> None:
        """Start a response outside the conversation (model rule 5).

        It reads the conversation, adds nothing to it, calls no tool, and may run beside the
        conversation's response.
        """
        tools = params.get("tools", self.session.get("tools") or [])
        modalities = params.get("output_modalities", self.session.get("output_modalities"))
        metadata = params.get("metadata")
        run = ResponseRun(
            self,
            plans=plan_out_of_band(self._model_view(), params.get("instructions")),
            output_modalities=modalities or ["audio"],
            audio_output=_audio_side(self.session, "output"),
            conversation_id=None,
            metadata=metadata if isinstance(metadata, dict) else None,
            input_tokens=self._input_tokens(tools),
            token_interval=self._settings.token_interval,
            in_conversation=False,
        )
        run.start()
        task = self._spawn(run.stream(), f"response:{self.call_id}:{run.response_id}")
        self._out_of_band[run.response_id] = (run, task)

    def _model_view(self) -> list[dict[str, Any]]:
        """The conversation as the model reads it: a spoken turn's words in its transcript."""
        if not self._understood:
            return self.conversation
        view: list[dict[str, Any]] = []
        for item in self.conversation:
            words = self._understood.get(item.get("id", ""))
            if words is not None:
                content = [
                    {**part, "transcript": part.get("transcript") or words}
                    if part.get("type") == "input_audio"
                    else part
                    for part in item.get("content") or []
                ]
                item = {**item, "content": content}
            view.append(item)
        return view

    def _start_response(self, params: dict[str, Any]) -> None:
        tools = params.get("tools", self.session.get("tools") or [])
        tool_choice = params.get("tool_choice", self.session.get("tool_choice", "auto"))
        parallel = self.session.get("parallel_tool_calls", True) is not False
        modalities = params.get("output_modalities", self.session.get("output_modalities"))
        metadata = params.get("metadata")
        audio_output = _audio_side(self.session, "output")
        run = ResponseRun(
            self,
            plans=plan_response(
                self._model_view(),
                tools,
                tool_choice,
                parallel_tool_calls=parallel,
                own_item_ids=self._model_calls,
            ),
            output_modalities=modalities or ["audio"],
            audio_output=audio_output,
            conversation_id=self.conversation_id,
            metadata=metadata if isinstance(metadata, dict) else None,
            input_tokens=self._input_tokens(tools),
            token_interval=self._settings.token_interval,
        )
        # response.created goes out now, in client-event order; deltas follow from the task.
        run.start()
        task = self._spawn(run.stream(), f"response:{self.call_id}:{run.response_id}")
        self._active = (run, task)

    def _response_cancel(self, event: dict[str, Any]) -> None:
        requested = event.get("response_id")
        if requested and requested in self._out_of_band:
            run, task = self._out_of_band[requested]
            run.cancel()  # emits the final events and forgets it via response_finished
            task.cancel()
            return
        if self._active is None or (requested and requested != self._active[0].response_id):
            raise ClientEventError(
                "response_cancel_not_active",
                "Cancellation failed: no active response found.",
                param="response_id" if requested else None,
            )
        run, task = self._active
        run.cancel()  # emits the final events and clears _active via response_finished
        task.cancel()

    def response_finished(self, run: ResponseRun) -> None:
        if self._active is not None and self._active[0] is run:
            self._active = None
        self._out_of_band.pop(run.response_id, None)
        # The real service reports the updated limits right after each response.done.
        limits = self._rate_limits.record(run.total_tokens)
        self.broadcast(server_event("rate_limits.updated", rate_limits=limits))
        self._speaker.response_done(run.response_id)

    async def speak(self, response_id: str, item_id: str, text: str) -> list[str] | None:
        """Voice ``text``: play it, or return its audio chunks for the response to stream.

        A call plays it (returning once it started, or cannot); a WebSocket session returns
        the chunks.
        """
        output = _audio_side(self.session, "output")
        speed = output.get("speed", 1.0)
        return await self._speaker.speak(
            response_id,
            item_id,
            text,
            speed if isinstance(speed, int | float) else 1.0,
            output.get("format"),
        )

    # ---- audio in ----------------------------------------------------------------------

    def _on_audio(self, samples: NDArray[np.int16], sample_rate: int) -> None:
        if not self.ended:
            self._on_vad(self._input.feed(samples, sample_rate))

    def _on_vad(self, events: list[VadEvent]) -> None:
        for vad_event in events:
            match vad_event:
                case SpeechStarted(audio_start_ms=start_ms):
                    self._speech_started(start_ms)
                case SpeechStopped(audio_end_ms=end_ms):
                    self._speech_stopped(end_ms)

    def _speech_started(self, audio_start_ms: int) -> None:
        self._speech_item_id = new_item_id()
        self.broadcast(
            server_event(
                "input_audio_buffer.speech_started",
                audio_start_ms=audio_start_ms,
                item_id=self._speech_item_id,
            )
        )
        if self._input.interrupt_response:
            # Barge-in: the user talking over the model stops the response and its audio.
            running = [self._active] if self._active is not None else []
            for run, task in [*running, *self._out_of_band.values()]:
                run.cancel("turn_detected")
                task.cancel()
            self._speaker.clear()

    def _speech_stopped(self, audio_end_ms: int) -> None:
        item_id = self._speech_item_id or new_item_id()
        self._speech_item_id = None
        self.broadcast(
            server_event(
                "input_audio_buffer.speech_stopped", audio_end_ms=audio_end_ms, item_id=item_id
            )
        )
        self._commit_input(item_id, by_client=False)
        if self._input.create_response and self._active is None:
            self._start_response({})

    def _commit_input(self, item_id: str, *, by_client: bool) -> None:
        self._input_audio_ms[item_id] = self._input.take(reset_detector=by_client)
        item = user_audio_item(item_id)
        previous = self.append_item(item)
        self.broadcast(
            server_event("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id)
        )
        self.broadcast(item_event("conversation.item.added", item, previous))
        self.broadcast(item_event("conversation.item.done", item, previous))
        self._transcribe(item_id)

    def _transcribe(self, item_id: str) -> None:
        # Every audio turn takes its words from the queue; only a transcribing session
        # reports them, later, from a task of its own (the response does not wait for them).
        hearing = self.heard.take()
        if isinstance(hearing, Spoken):
            self._understood[item_id] = hearing.text
        config = transcription_config(self.session)
        if config is None:
            return
        job = TranscriptionJob(
            item_id, hearing, config, self._input_audio_ms[item_id], wants_logprobs(self.session)
        )
        transcribe = run_transcription(
            job,
            self.broadcast,
            self._store_transcript,
            delay=self._settings.transcription_delay,
            interval=self._settings.token_interval,
        )
        self._spawn(transcribe, f"transcription:{self.call_id}:{item_id}")

    def _store_transcript(self, item_id: str, text: str) -> None:
        # The item keeps its words (a retrieve shows them), unless it was deleted meanwhile.
        for item in self.conversation:
            if item.get("id") == item_id:
                for part in item.get("content") or []:
                    if part.get("type") == "input_audio":
                        part["transcript"] = text
                return

    def _input_append(self, event: dict[str, Any]) -> None:
        audio_format = _audio_side(self.session, "input").get("format")
        samples, rate = decode_appended_audio(event.get("audio"), audio_format)
        self._on_vad(self._input.feed(samples, rate))

    def _input_commit(self) -> None:
        held = self._input.buffered_ms
        if held < MIN_COMMIT_MS:
            raise ClientEventError(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS:.0f}ms of audio, but buffer only has {held:.2f}ms of audio.",
            )
        item_id = self._speech_item_id or new_item_id()
        self._speech_item_id = None
        self._commit_input(item_id, by_client=True)

    # ---- conversation reads and edits ---------------------------------------------------

    def _item_retrieve(self, event: dict[str, Any]) -> None:
        item = find_item(self.conversation, event.get("item_id"))
        committed_ms = self._input_audio_ms.get(item["id"])
        if committed_ms is not None:
            # Only a retrieve carries a committed turn's audio; its added/done never do.
            input_format = _audio_side(self.session, "input").get("format")
            item = with_input_audio(item, committed_audio(committed_ms, input_format))
        self.broadcast(item_event("conversation.item.retrieved", item, None, previous=False))

    def _item_truncate(self, event: dict[str, Any]) -> None:
        item = find_item(self.conversation, event.get("item_id"))
        content_index = event.get("content_index")
        audio_end_ms = event.get("audio_end_ms")
        content = item.get("content") or []
        if item.get("role") != "assistant" or not isinstance(content_index, int):
            raise ClientEventError(
                "invalid_value",
                "Only assistant message items with audio can be truncated.",
                param="item_id" if item.get("role") != "assistant" else "content_index",
            )
        if not 0 <= content_index < len(content) or content[content_index].get("type") != (
            "output_audio"
        ):
            raise ClientEventError(
                "invalid_value",
                f"Content part {content_index} of the item is not audio.",
                param="content_index",
            )
        played = self._speaker.audio_ms.get(item["id"], 0)
        if not isinstance(audio_end_ms, int) or not 0 <= audio_end_ms <= played:
            raise ClientEventError(
                "invalid_value",
                f"audio_end_ms must be between 0 and the audio's duration ({played} ms).",
                param="audio_end_ms",
            )
        # Like the service: the transcript goes, so the model's context holds only what
        # the user heard (the emulator keeps no audio to cut).
        content[content_index]["transcript"] = ""
        self.broadcast(
            server_event(
                "conversation.item.truncated",
                item_id=item["id"],
                content_index=content_index,
                audio_end_ms=audio_end_ms,
            )
        )

    def _input_tokens(self, tools: Any) -> InputTokens:
        """What the next response reads; the previous response's input counts as cached."""
        instructions = str(self.session.get("instructions", ""))
        inputs = input_tokens(instructions, tools, self.conversation, self._input_audio_ms)
        previous, self._previous_input_tokens = self._previous_input_tokens, inputs.total
        return inputs.with_cache(previous)

    def snapshot(self) -> dict[str, Any]:
        """The JSON served by ``GET /_emulator/calls/{call_id}``."""
        return {
            "call_id": self.call_id,
            "location": self.location,
            "ended": self.ended,
            "end_reason": self.end_reason,
            "session": self.session,
            "sideband_attaches": list(self.sideband_attaches),
            "received": [
                {"source": r.source, "connection_id": r.connection_id, "event": r.event}
                for r in self.received
            ],
            "conversation": self.conversation,
        }


def _recorded(event: dict[str, Any]) -> dict[str, Any]:
    # Appended audio can be megabytes per event; the recorder keeps its size, not its bytes.
    audio = event.get("audio")
    if event.get("type") == "input_audio_buffer.append" and isinstance(audio, str):
        return {**event, "audio": f"<{len(audio)} base64 characters>"}
    return event


def _audio_side(session: Mapping[str, Any], side: str) -> dict[str, Any]:
    # A client may set audio or one of its sides to null; treat that as "defaults".
    audio = session.get("audio")
    found = audio.get(side) if isinstance(audio, Mapping) else None
    return found if isinstance(found, dict) else {}


def _turn_detection(session: Mapping[str, Any]) -> Any:
    return _audio_side(session, "input").get("turn_detection")


class CallRegistry:
    """Every call the app created, keyed by call id.

    Live calls, and the newest ``MAX_ENDED_CALLS`` ended ones (so tests can inspect a
    call after it ended).
    """

    def __init__(self, settings: EmulatorSettings, faults: Faults | None = None) -> None:
        self._settings = settings
        self._faults = faults
        self._calls: dict[str, Call] = {}

    def get(self, call_id: str) -> Call | None:
        return self._calls.get(call_id)

    @property
    def calls(self) -> Mapping[str, Call]:
        """A read-only view of all calls ever created, in creation order."""
        return MappingProxyType(self._calls)

    async def create_call(
        self,
        offer_sdp: str,
        session: dict[str, Any],
        *,
        page_events: frozenset[str] | None = None,
    ) -> tuple[Call, str]:
        """Negotiate a new call; return it with the answer SDP.

        A call whose offer is rejected is closed and never registered. ``page_events``
        filters its data channel (see :class:`Call`).

        Raises:
            InvalidSdpError: the offer is unusable.
        """
        call = Call(
            new_call_id(self._settings.flavor),
            session,
            self._settings,
            self._faults,
            page_events=page_events,
        )
        try:
            answer = await call.start(offer_sdp)
        except BaseException:
            await call.end("setup_failed")
            raise
        self._calls[call.call_id] = call
        self._forget_old_calls()
        logger.info("call %s created model=%s", call.call_id, session.get("model"))
        return call, answer

    def add(self, call: Call) -> None:
        """Register a call this registry did not negotiate (a WebSocket session).

        It is inspected and forgotten like the others.
        """
        self._calls[call.call_id] = call
        self._forget_old_calls()

    def _forget_old_calls(self) -> None:
        ended = [call_id for call_id, call in self._calls.items() if call.ended]
        for call_id in ended[: max(0, len(ended) - MAX_ENDED_CALLS)]:
            del self._calls[call_id]

    def close_sidebands(self, code: int) -> None:
        """Ask every sideband of every call to close with ``code``."""
        for call in self._calls.values():
            call.close_sidebands(code)

    async def close(self) -> None:
        """End every live call (reason ``shutdown``); idempotent."""
        await asyncio.gather(*(call.end("shutdown") for call in self._calls.values()))
