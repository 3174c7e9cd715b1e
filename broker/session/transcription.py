"""Input transcription: which model writes down what the user says, per session.

The provider leaves it off unless the session config asks (docs/protocol.md §0): the user's
audio item carries ``transcript: null``, and the words arrive later, in
``conversation.item.input_audio_transcription.completed``, only when
``audio.input.transcription`` is set. Without it every spoken turn of a transcript is blank.

So the broker asks for it on every session with ``BROKER_INPUT_TRANSCRIPTION_MODEL``, unless
the create request chooses: ``"input_transcription": {"model", "language", "prompt"}`` (each
optional; the model defaults to the setting's) or ``null`` for none. The choice is stored on
the session row (``sessions.input_transcription``, ``NULL``: none) and sent in the call's
config as is; like the rest of the config it is the broker's, and a page that changes it is
restored (:mod:`sideband.session_guard`).
"""

from __future__ import annotations

from typing import Final

from pydantic import BaseModel, ConfigDict, Field

from broker.errors import ValidationFailedError

MAX_PROMPT_CHARS: Final = 1024
"""A transcription prompt guides the spelling of a few words (names, products); more is no
guidance (whisper-1 reads its last 224 tokens)."""
MODEL_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"
"""A model (or Azure deployment) name, as the settings accept it."""
LANGUAGE_PATTERN: Final = r"^[a-z]{2,3}$"
"""An ISO 639 code such as ``en``, as the transcription models take it (no region)."""


class TranscriptionRequest(BaseModel):
    """The ``input_transcription`` object of ``POST /api/v1/sessions``; every field optional."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, min_length=1, max_length=100, pattern=MODEL_PATTERN)
    """The transcription model (``whisper-1``, ``gpt-4o-transcribe``, …); default: the
    setting's."""
    language: str | None = Field(default=None, pattern=LANGUAGE_PATTERN)
    """The language spoken, as an ISO 639 code (``en``): better accuracy and latency."""
    prompt: str | None = Field(default=None, min_length=1, max_length=MAX_PROMPT_CHARS)
    """Words to expect (names, products, a style)."""


def choose(
    requested: TranscriptionRequest | None, *, given: bool, default_model: str | None
) -> dict[str, str] | None:
    """The session's ``audio.input.transcription`` (``None``: not transcribed).

    Args:
        requested: the request's ``input_transcription`` (``None``: absent or ``null``).
        given: whether the request named ``input_transcription`` at all (``null`` turns it
            off; absent takes the setting).
        default_model: ``BROKER_INPUT_TRANSCRIPTION_MODEL`` (``None``: off).

    Raises:
        ValidationFailedError: ``transcription_model_required``: an object without a model
            while the setting is off (there is no model to fall back on).
    """
    if not given:
        return None if default_model is None else {"model": default_model}
    if requested is None:
        return None
    model = requested.model or default_model
    if model is None:
        raise ValidationFailedError(
            "transcription_model_required",
            "input_transcription needs a model: this broker transcribes with none by default",
        )
    config = {"model": model}
    if requested.language is not None:
        config["language"] = requested.language
    if requested.prompt is not None:
        config["prompt"] = requested.prompt
    return config
