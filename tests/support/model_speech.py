"""What the model said, set aside: redaction covers what the broker stores of tools' fields,
never the model's own words (it may repeat anything it was told)."""

from __future__ import annotations

from typing import Any


def is_model_speech(event_type: str) -> bool:
    """Whether an event of ``event_type`` carries the model's words (text or transcript)."""
    return event_type.startswith(
        ("response.output_audio_transcript.", "response.output_text.", "response.content_part.")
    )


def without_model_speech(value: Any) -> Any:
    """``value`` without anything the model said (assistant messages and turns)."""
    if isinstance(value, dict):
        if value.get("role") == "assistant":
            return None
        if isinstance(value.get("type"), str) and is_model_speech(value["type"]):
            return None
        return {key: without_model_speech(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_model_speech(item) for item in value]
    return value
