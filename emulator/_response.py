"""One model response: the event sequence of docs/protocol.md §3.1, streamed with pauses.

A :class:`ResponseRun` is driven by two parties that never interleave mid-step: its own
task (:meth:`ResponseRun.stream`) emits the deltas, and the call's client-event worker may
call :meth:`ResponseRun.cancel`. Both only touch state between awaits, and ``cancel``
finalises synchronously before the owner cancels the streaming task, so no event can
follow ``response.done``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ._events import (
    assistant_message_item,
    function_call_item,
    item_event,
    response_object,
    server_event,
)
from ._ids import new_function_call_id, new_item_id, new_response_id
from ._usage import InputTokens, usage_object
from .model import FunctionCallPlan, MessagePlan, Plan, chunk_arguments, chunk_text

logger = logging.getLogger(__name__)


class ResponseHost(Protocol):
    """What a response needs from its call."""

    def broadcast(self, event: dict[str, Any]) -> None: ...

    def append_item(self, item: dict[str, Any]) -> str | None:
        """Append a model item to the conversation; return the previous item's id."""
        ...

    def response_finished(self, run: ResponseRun) -> None: ...

    async def speak(self, response_id: str, item_id: str, text: str) -> list[str] | None:
        """Voice ``text``; return its audio chunks when the response must stream them.

        Over WebRTC: start playing it and return ``None`` once it plays (or cannot). In a
        WebSocket session: return the audio as base64 chunks for the response to stream as
        ``response.output_audio.delta``.
        """
        ...


@dataclass
class _InProgress:
    item: dict[str, Any]
    output_index: int
    arguments_done: bool = False
    part: dict[str, Any] | None = field(default=None)


class ResponseRun:
    """A response from ``response.created`` to ``response.done``.

    Args:
        host: the call this response belongs to.
        plans: what the scripted model decided to say.
        output_modalities: ``["audio"]`` streams transcript deltas, ``["text"]`` text deltas.
        audio_output: the session's ``audio.output`` (format and voice are echoed).
        conversation_id: the call's conversation id; ``None`` for an out-of-band response.
        in_conversation: ``False`` for an out-of-band response (``response.conversation:
            "none"``): its items never enter the conversation and no ``conversation.item.*``
            event tells of them; only the ``response.*`` events do.
        metadata: ``response.metadata`` from the request, echoed back.
        input_tokens: what the response reads, for ``usage`` (:mod:`emulator._usage`).
        token_interval: pause before each delta, in seconds.
    """

    def __init__(
        self,
        host: ResponseHost,
        *,
        plans: Sequence[Plan],
        output_modalities: Sequence[str],
        audio_output: dict[str, Any],
        conversation_id: str | None,
        metadata: dict[str, str] | None,
        input_tokens: InputTokens,
        token_interval: float,
        in_conversation: bool = True,
    ) -> None:
        self.response_id = new_response_id()
        self.in_conversation = in_conversation
        self.finished = False
        self._host = host
        self._plans = list(plans)
        self._modalities = list(output_modalities)
        self._audio_output = audio_output
        self._conversation_id = conversation_id
        self._metadata = metadata
        self._input_tokens = input_tokens
        self._interval = token_interval
        self._output: list[dict[str, Any]] = []
        self._current: _InProgress | None = None
        self._text_chars = 0
        """Output text so far: message text or transcript, function names and arguments."""
        self._spoken_chars = 0
        """Transcript spoken so far (audio output only)."""

    @property
    def total_tokens(self) -> int:
        """Tokens this response used so far (input plus output, as ``usage`` reports them)."""
        total: int = self._usage()["total_tokens"]
        return total

    def _usage(self) -> dict[str, Any]:
        return usage_object(
            self._input_tokens, self._text_chars, self._spoken_chars, audio=self._audio
        )

    @property
    def _audio(self) -> bool:
        return "text" not in self._modalities

    def _response(self, status: str, **extra: Any) -> dict[str, Any]:
        return response_object(
            response_id=self.response_id,
            status=status,
            conversation_id=self._conversation_id,
            output_modalities=self._modalities,
            audio_output=self._audio_output,
            output=self._output,
            metadata=self._metadata,
            usage=extra.get("usage"),
            status_details=extra.get("status_details"),
        )

    def _emit(self, type_: str, **fields: Any) -> None:
        self._host.broadcast(server_event(type_, **fields))

    def start(self) -> None:
        """Emit ``response.created``; called synchronously when ``response.create`` is handled."""
        self._emit("response.created", response=self._response("in_progress"))

    async def stream(self) -> None:
        """Stream every planned item, then ``response.done`` (completed).

        Cancellation-safe: cancelled only after :meth:`cancel` finalised the response or when
        the call ends, in which case nothing more is sent.
        """
        try:
            for plan in self._plans:
                match plan:
                    case FunctionCallPlan():
                        await self._stream_function_call(plan)
                    case MessagePlan():
                        await self._stream_message(plan)
        except Exception:
            # An emulator bug must not leave the call with an active response forever:
            # end it as the service ends a response that failed on its side.
            logger.exception("response %s failed", self.response_id)
            if not self.finished:
                self._close_item("incomplete")
                self._finish(
                    "failed",
                    {
                        "type": "failed",
                        "error": {"type": "server_error", "code": "server_error"},
                    },
                )
            return
        self._finish("completed", None)

    def _open_item(self, item: dict[str, Any]) -> _InProgress:
        output_index = len(self._output)
        self._output.append(item)
        previous = self._host.append_item(item) if self.in_conversation else None
        self._current = _InProgress(item, output_index)
        self._emit(
            "response.output_item.added",
            response_id=self.response_id,
            output_index=output_index,
            item=dict(item),
        )
        if self.in_conversation:
            self._host.broadcast(item_event("conversation.item.added", item, previous))
        return self._current

    def _close_item(self, status: str) -> None:
        current = self._current
        if current is None:
            return
        current.item["status"] = status
        if self.in_conversation:
            # Recorded traffic: .done of a model item names no predecessor; only .added does.
            self._host.broadcast(item_event("conversation.item.done", current.item, None))
        self._emit(
            "response.output_item.done",
            response_id=self.response_id,
            output_index=current.output_index,
            item=dict(current.item),
        )
        self._current = None

    def _item_fields(self, current: _InProgress) -> dict[str, Any]:
        return {
            "response_id": self.response_id,
            "item_id": current.item["id"],
            "output_index": current.output_index,
        }

    def _arguments_done(self, current: _InProgress) -> None:
        current.arguments_done = True
        self._emit(
            "response.function_call_arguments.done",
            **self._item_fields(current),
            call_id=current.item["call_id"],
            name=current.item["name"],
            arguments=current.item["arguments"],
        )

    async def _stream_function_call(self, plan: FunctionCallPlan) -> None:
        item = function_call_item(new_item_id(), new_function_call_id(), plan.name)
        current = self._open_item(item)
        self._text_chars += len(plan.name)
        for delta in chunk_arguments(plan.arguments):
            await asyncio.sleep(self._interval)
            item["arguments"] += delta
            self._text_chars += len(delta)
            self._emit(
                "response.function_call_arguments.delta",
                **self._item_fields(current),
                call_id=item["call_id"],
                delta=delta,
            )
        self._arguments_done(current)
        self._close_item("completed")

    def _part_event(self, current: _InProgress) -> dict[str, Any]:
        part = current.part or {}
        if self._audio:
            return {"type": "audio", "transcript": part.get("transcript", "")}
        return {"type": "text", "text": part.get("text", "")}

    async def _stream_message(self, plan: MessagePlan) -> None:
        current = self._open_item(assistant_message_item(new_item_id()))
        key = "transcript" if self._audio else "text"
        part: dict[str, Any] = {"type": "output_audio" if self._audio else "output_text", key: ""}
        current.item["content"].append(part)
        current.part = part
        fields = {**self._item_fields(current), "content_index": 0}
        self._emit("response.content_part.added", **fields, part=self._part_event(current))
        audio: list[str] | None = None
        if self._audio:
            # The service streams the transcript alongside audio that is already playing.
            audio = await self._host.speak(self.response_id, current.item["id"], plan.text)
        delta_type = (
            "response.output_audio_transcript.delta"
            if self._audio
            else "response.output_text.delta"
        )
        deltas = chunk_text(plan.text)
        sent_audio = 0
        for index, delta in enumerate(deltas):
            await asyncio.sleep(self._interval)
            if audio is not None:
                # Audio as events (a WebSocket session): its share up to this word first.
                upto = len(audio) * (index + 1) // len(deltas)
                sent_audio = self._emit_audio(fields, audio, sent_audio, upto)
            part[key] += delta
            self._text_chars += len(delta)
            if self._audio:
                self._spoken_chars += len(delta)
            self._emit(delta_type, **fields, delta=delta)
        if audio is not None:
            self._emit_audio(fields, audio, sent_audio, len(audio))
            self._emit("response.output_audio.done", **fields)
        done_type = delta_type.removesuffix(".delta") + ".done"
        self._emit(done_type, **fields, **{key: part[key]})
        self._emit("response.content_part.done", **fields, part=self._part_event(current))
        self._close_item("completed")

    def _emit_audio(self, fields: dict[str, Any], audio: list[str], start: int, end: int) -> int:
        for chunk in audio[start:end]:
            self._emit("response.output_audio.delta", **fields, delta=chunk)
        return max(start, end)

    def cancel(self, reason: str = "client_cancelled") -> None:
        """End the response now with status ``cancelled``; a no-op once finished.

        Like the real service, an interrupted function call still gets its
        ``response.function_call_arguments.done`` (docs/protocol.md §3.1), carrying the arguments
        streamed so far; the item ends ``incomplete``. The caller must then cancel the task
        running :meth:`stream`.
        """
        if self.finished:
            return
        current = self._current
        if current is not None:
            if current.item["type"] == "function_call" and not current.arguments_done:
                self._arguments_done(current)
            self._close_item("incomplete")
        self._finish("cancelled", {"type": "cancelled", "reason": reason})

    def _finish(self, status: str, status_details: dict[str, Any] | None) -> None:
        self.finished = True
        self._emit(
            "response.done",
            response=self._response(status, usage=self._usage(), status_details=status_details),
        )
        logger.debug("response %s finished status=%s", self.response_id, status)
        self._host.response_finished(self)
