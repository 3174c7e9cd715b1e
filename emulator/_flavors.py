"""The provider the emulator plays: OpenAI itself, or Azure OpenAI's GA ``/openai/v1`` path.

Azure serves the same protocol under another prefix, with its own credentials on the HTTP
control plane and an optional filter on what the browser's data channel receives
(docs/protocol.md §0 "Azure OpenAI", §6).
"""

from __future__ import annotations

from typing import Final, Literal

Flavor = Literal["openai", "azure"]

API_PREFIX: Final[dict[Flavor, str]] = {"openai": "/v1", "azure": "/openai/v1"}
"""Where the provider routes are mounted (``/_emulator/…`` stays at the root)."""

WEBRTC_FILTER_EVENTS: Final = frozenset(
    {
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "output_audio_buffer.started",
        "output_audio_buffer.stopped",
        "conversation.item.input_audio_transcription.completed",
        "conversation.item.added",
        "conversation.item.created",
        "response.output_text.delta",
        "response.output_text.done",
        "response.output_audio_transcript.delta",
        "response.output_audio_transcript.done",
    }
)
"""What a call created with ``?webrtcfilter=on`` sends on its data channel: exactly the list
in Azure's WebRTC how-to (``realtime-audio-webrtc.md``). Every other server event, including
``session.created``, ``error`` and every function-call event, reaches only the sidebands."""
