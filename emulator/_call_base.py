"""The base every part of a call builds on: its state, its tasks and the fan-out.

:class:`CallBase` holds the state of one call (see :class:`~emulator.calls.Call`) and
sends server events. Every server event goes, in one synchronous step, to the data channel
and to every sideband's outbound queue, so all connections see the same order
(docs/protocol.md §2.3). ``error`` events are the exception: they go only to the connection
that caused them (§2.2, [inferred]). The other parts of a call (:mod:`emulator.calls`,
:mod:`emulator._call_conversation`, :mod:`emulator._call_responses`,
:mod:`emulator._call_audio_in`) are subclasses of it that :class:`~emulator.calls.Call`
combines; the methods one part needs from another are declared here as abstract.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Coroutine
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from ._events import session_event
from ._ids import new_connection_id, new_conversation_id
from ._input_audio import InputAudio
from ._links import SidebandLink
from ._rate_limits import RateLimits
from ._recorder import MAX_RECEIVED_RECORDED, MAX_SENT_RECORDED, ReceivedClientEvent, Source
from ._response import ResponseRun
from ._session import turn_detection
from ._speaker import Speaker, Voice
from ._streamed_audio import StreamedVoice
from ._transcription import HeardQueue
from .faults import FaultConfig, Faults
from .peer import Peer
from .settings import EmulatorSettings

logger = logging.getLogger(__name__)

Media = Literal["webrtc", "websocket", "sip"]


class CallBase(ABC):
    """A call's state, its tasks and the fan-out of its server events.

    The constructor is :class:`~emulator.calls.Call`'s (its arguments are documented there).
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
        self._input = InputAudio(turn_detection(session))
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
        # beside the conversation's one response, never blocking or blocked by it (unless
        # the single_active_response switch is on: see _blocking_response_id).
        self._out_of_band: dict[str, tuple[ResponseRun, asyncio.Task[None]]] = {}
        self._end_done = asyncio.Event()
        self._close_code = 1000

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

    def _blocking_response_id(self) -> str | None:
        """The running response a new one may not start beside, or ``None``.

        That is the conversation's response; with ``single_active_response`` any out-of-band
        one too (whether the real service lets them overlap is undocumented).
        """
        if self._active is not None:
            return self._active[0].response_id
        if self._faults.current.single_active_response:
            return next(iter(self._out_of_band), None)
        return None

    def append_item(self, item: dict[str, Any]) -> str | None:
        """Append a model-generated item; return the id of the item before it."""
        previous = self.conversation[-1]["id"] if self.conversation else None
        self.conversation.append(item)
        if item.get("type") == "function_call":
            self._model_calls.add(item["id"])
        return previous

    # ---- parts implemented by the subclasses --------------------------------------------

    @abstractmethod
    def _on_dc_message(self, raw: str) -> None:
        """A data channel message: a client event (:class:`~emulator.calls.Call`)."""

    @abstractmethod
    def _on_audio(self, samples: NDArray[np.int16], sample_rate: int) -> None:
        """Audio from the peer (:class:`~emulator._call_audio_in.CallAudioInput`)."""

    @abstractmethod
    def _start_response(self, params: dict[str, Any]) -> None:
        """Start the conversation's response (:class:`~emulator._call_responses.CallResponses`)."""
