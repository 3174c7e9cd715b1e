"""A call's responses: ``response.create``/``response.cancel``, and what a response needs.

A call runs at most one response in its conversation at a time, and any number of
out-of-band ones (``response.conversation: "none"``) beside it; with the
``single_active_response`` switch, one response of either kind at a time. Each is a
:class:`~emulator._response.ResponseRun` whose host is the call.
"""

from __future__ import annotations

from typing import Any

from ._call_base import CallBase
from ._events import server_event
from ._response import ResponseRun
from ._session import audio_side
from ._usage import InputTokens, input_tokens
from .errors import ClientEventError
from .model import plan_out_of_band, plan_response


class CallResponses(CallBase):
    """Starting, cancelling and finishing a call's responses."""

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
        # Without the switch an out-of-band response never waits for the conversation's.
        single = self._faults.current.single_active_response
        active_id = self._blocking_response_id() if conversation == "auto" or single else None
        if active_id is not None:
            raise ClientEventError(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {active_id}. "
                "Wait until the response is finished before creating a new one.",
            )
        if conversation == "none":
            self._start_out_of_band(params)
        else:
            self._start_response(params)

    def _start_out_of_band(self, params: dict[str, Any]) -> None:
        """Start a response outside the conversation (model rule 5).

        It reads the conversation, adds nothing to it, calls no tool, and may run beside the
        conversation's response (unless ``single_active_response`` is on).
        """
        tools = params.get("tools", self.session.get("tools") or [])
        modalities = params.get("output_modalities", self.session.get("output_modalities"))
        metadata = params.get("metadata")
        run = ResponseRun(
            self,
            plans=plan_out_of_band(self._model_view(), params.get("instructions")),
            output_modalities=modalities or ["audio"],
            audio_output=audio_side(self.session, "output"),
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
        audio_output = audio_side(self.session, "output")
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
        output = audio_side(self.session, "output")
        speed = output.get("speed", 1.0)
        return await self._speaker.speak(
            response_id,
            item_id,
            text,
            speed if isinstance(speed, int | float) else 1.0,
            output.get("format"),
        )

    def _input_tokens(self, tools: Any) -> InputTokens:
        """What the next response reads; the previous response's input counts as cached."""
        instructions = str(self.session.get("instructions", ""))
        inputs = input_tokens(instructions, tools, self.conversation, self._input_audio_ms)
        previous, self._previous_input_tokens = self._previous_input_tokens, inputs.total
        return inputs.with_cache(previous)
