"""The emulator's usage block: the service's shape, counts that follow from the call."""

from __future__ import annotations

from emulator._usage import InputTokens, input_tokens, usage_object


def test_input_counts_text_and_audio_items() -> None:
    conversation = [
        {
            "id": "i1",
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "x" * 40}],
        },
        {
            "id": "i2",
            "type": "message",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
        },
        {
            "id": "i3",
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_audio", "transcript": "y" * 30}],
        },
        {"id": "i4", "type": "function_call", "name": "tool", "arguments": "{}" * 4},
        {"id": "i5", "type": "function_call_output", "call_id": "c", "output": "z" * 8},
    ]
    inputs = input_tokens("i" * 20, None, conversation, {"i2": 1500.0})
    # text: 20 + 40 + (4 + 8) + 8 = 80 chars → 20 tokens; audio: 1.5 s user + 2 s of speech
    assert inputs == InputTokens(text=20, audio=15 + 20)
    assert input_tokens("", None, [], {}) == InputTokens(text=1, audio=0)  # never zero


def test_the_previous_responses_input_is_cached_in_whole_blocks_text_first() -> None:
    inputs = InputTokens(text=100, audio=60)
    assert inputs.with_cache(0) == InputTokens(100, 60, 0, 0)
    assert inputs.with_cache(150) == InputTokens(100, 60, 100, 28)  # 128 cached
    assert inputs.with_cache(10_000) == InputTokens(100, 60, 100, 28)  # at most this input


def test_the_usage_block_adds_up() -> None:
    inputs = InputTokens(text=100, audio=60, cached_text=64, cached_audio=0)
    usage = usage_object(inputs, text_chars=30, spoken_chars=30, audio=True)
    assert usage["input_tokens"] == 160
    assert usage["input_token_details"]["cached_tokens"] == 64
    assert usage["output_token_details"] == {"text_tokens": 8, "audio_tokens": 20}
    assert usage["output_tokens"] == 28
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    text_only = usage_object(inputs, text_chars=30, spoken_chars=30, audio=False)
    assert text_only["output_token_details"] == {"text_tokens": 8, "audio_tokens": 0}
