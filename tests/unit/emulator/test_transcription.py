"""The emulator's input transcription rules: deltas, usage, the heard queue, the config echo."""

from __future__ import annotations

import pytest

from emulator._session import initial_session
from emulator._transcription import (
    Heard,
    HeardQueue,
    Misheard,
    transcript_deltas,
    transcription_config,
    transcription_usage,
)

TEXT = "Hello, my name is Marcelo. "


def test_streaming_models_send_words_and_punctuation_apart() -> None:
    deltas = transcript_deltas(TEXT, "gpt-4o-transcribe")
    assert deltas == ["Hello", ",", " my", " name", " is", " Marcelo", ". "]
    assert "".join(deltas) == TEXT


def test_whisper_1_sends_the_whole_text_at_once() -> None:
    assert transcript_deltas(TEXT, "whisper-1") == [TEXT]


@pytest.mark.parametrize("text", ["   ", "…", "a", "x  y", " lead"])
def test_deltas_always_rebuild_the_text(text: str) -> None:
    assert "".join(transcript_deltas(text, "gpt-4o-mini-transcribe")) == text


@pytest.mark.parametrize(
    ("audio_ms", "seconds"),
    [(100, 1), (1_499, 1), (1_500, 2), (2_500, 3), (2_796, 3), (60_400, 60)],
)
def test_whisper_models_bill_whole_seconds(audio_ms: float, seconds: int) -> None:
    for model in ("whisper-1", "gpt-realtime-whisper"):
        usage = transcription_usage(model, audio_ms, None, TEXT)
        assert usage == {"type": "duration", "seconds": seconds}


def test_other_models_bill_tokens() -> None:
    usage = transcription_usage("gpt-4o-transcribe", 2_801, "expect names", "Hi there")
    # audio 10 a second (rounded up), prompt and transcript one token per 4 characters
    assert usage == {
        "type": "tokens",
        "total_tokens": 29 + 3 + 2,
        "input_tokens": 29 + 3,
        "input_token_details": {"text_tokens": 3, "audio_tokens": 29},
        "output_tokens": 2,
    }


def test_the_queue_is_fifo_then_the_default() -> None:
    queue = HeardQueue("default words")
    assert queue.extend([Heard("one"), Misheard("DeploymentNotFound"), Heard("two")]) == 3
    assert [queue.take() for _ in range(4)] == [
        Heard("one"),
        Misheard("DeploymentNotFound"),
        Heard("two"),
        Heard("default words"),
    ]
    assert len(queue) == 0


def test_the_effective_config_is_echoed_with_nulls() -> None:
    session = initial_session(
        {"type": "realtime", "audio": {"input": {"transcription": {"model": "whisper-1"}}}}, None
    )
    expected = {"model": "whisper-1", "language": None, "prompt": None}
    assert session["audio"]["input"]["transcription"] == expected
    assert transcription_config(session) == expected
    assert transcription_config(initial_session(None, None)) is None
