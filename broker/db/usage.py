"""Token usage totals as the ``sessions`` row stores them: one value type, summed.

Parsing the provider's ``response.done`` (and input transcription's ``.completed``) into a
:class:`Usage` is :mod:`broker.record.usage`'s job; this module holds only the value and its
column names, so the queries that fold usage into a session row need nothing above the
database layer.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Final


@dataclass(frozen=True)
class Usage:
    """Token counts summed over some responses (one, a session's, an API key's).

    ``input_cached_tokens`` are also counted in their modality, as the provider reports them.
    The ``transcription*`` fields are input transcription's, apart from the responses': its
    models bill either tokens (``gpt-4o-transcribe``) or audio time (``whisper-1``, kept in
    whole milliseconds so that sums stay exact).
    """

    responses: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    input_text_tokens: int = 0
    input_audio_tokens: int = 0
    input_cached_tokens: int = 0
    output_text_tokens: int = 0
    output_audio_tokens: int = 0
    transcriptions: int = 0
    transcription_input_tokens: int = 0
    transcription_output_tokens: int = 0
    transcription_total_tokens: int = 0
    transcription_input_text_tokens: int = 0
    transcription_input_audio_tokens: int = 0
    transcription_ms: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )

    @property
    def empty(self) -> bool:
        return self == Usage()

    @classmethod
    def from_columns(cls, row: Any) -> Usage:
        """Read the ``usage_*`` attributes of a session row (or a query result row)."""
        return cls(**{f.name: int(getattr(row, column(f.name)) or 0) for f in fields(cls)})

    def metric_tokens(self) -> dict[tuple[str, str], int]:
        """The counts by ``(direction, modality)``: ``BrokerMetrics.usage_reported``'s input."""
        return {
            ("input", "text"): self.input_text_tokens,
            ("input", "audio"): self.input_audio_tokens,
            ("input", "cached"): self.input_cached_tokens,
            ("output", "text"): self.output_text_tokens,
            ("output", "audio"): self.output_audio_tokens,
        }

    def metric_transcription_tokens(self) -> dict[tuple[str, str], int]:
        """Transcription's counts by ``(direction, modality)`` (its output is text)."""
        return {
            ("input", "text"): self.transcription_input_text_tokens,
            ("input", "audio"): self.transcription_input_audio_tokens,
            ("output", "text"): self.transcription_output_tokens,
        }

    def as_json(self) -> dict[str, Any]:
        """The API's and the webhook's ``usage``: the provider's shape, plus ``responses``.

        ``input_transcription`` sums transcription's usage the same way: tokens for the models
        that bill tokens, ``seconds`` of audio for those that bill time.
        """
        return {
            "responses": self.responses,
            "total_tokens": self.total_tokens,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "input_token_details": {
                "text_tokens": self.input_text_tokens,
                "audio_tokens": self.input_audio_tokens,
                "cached_tokens": self.input_cached_tokens,
            },
            "output_token_details": {
                "text_tokens": self.output_text_tokens,
                "audio_tokens": self.output_audio_tokens,
            },
            "input_transcription": {
                "transcriptions": self.transcriptions,
                "total_tokens": self.transcription_total_tokens,
                "input_tokens": self.transcription_input_tokens,
                "output_tokens": self.transcription_output_tokens,
                "input_token_details": {
                    "text_tokens": self.transcription_input_text_tokens,
                    "audio_tokens": self.transcription_input_audio_tokens,
                },
                "seconds": self.transcription_ms / 1000,
            },
        }


USAGE_FIELDS: Final = tuple(f.name for f in fields(Usage))


def column(name: str) -> str:
    """The session column of one :class:`Usage` field."""
    return f"usage_{name}"
