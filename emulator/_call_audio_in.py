"""A call's input audio: RTP or appended audio, turn detection, commits and transcription."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from ._call_base import CallBase
from ._events import item_event, server_event
from ._ids import new_item_id
from ._input_audio import MIN_COMMIT_MS, decode_appended_audio
from ._items import user_audio_item
from ._session import audio_side
from ._transcription import (
    Spoken,
    TranscriptionJob,
    run_transcription,
    transcription_config,
    wants_logprobs,
)
from .audio import SpeechStarted, SpeechStopped, VadEvent
from .errors import ClientEventError


class CallAudioInput(CallBase):
    """The user's audio turns: from speech detected (or a commit) to an item and its words."""

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
        if self._input.create_response and self._blocking_response_id() is None:
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
        audio_format = audio_side(self.session, "input").get("format")
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
