"""Token usage for ``response.done``: the service's shape, deterministic counts.

Counts follow from what the call holds, never from chance or the machine, so a test can
predict them:

- **text**: one token per 4 characters, rounded up (the provider's rule of thumb);
- **audio**: 10 tokens per second; user audio counts the committed buffer's length, the
  model's speech is timed from its transcript at 15 characters a second (the synthesised
  clip's real length depends on which speech engine is installed);
- **input**: the instructions, the tool definitions and every conversation item (text,
  function calls and outputs as text; user audio and the model's earlier speech as audio);
- **cached**: the conversation only grows, so each response's input starts with the
  previous one's: that much (in whole 64-token blocks) is reported cached, text first;
- **output**: the message text or transcript and function-call arguments streamed so far
  as text, and for audio responses the speech as audio.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

CHARS_PER_TOKEN: Final = 4
AUDIO_TOKENS_PER_SECOND: Final = 10
SPOKEN_CHARS_PER_SECOND: Final = 15
CACHE_BLOCK: Final = 64


def text_tokens(chars: int) -> int:
    """Tokens of ``chars`` characters of text."""
    return math.ceil(chars / CHARS_PER_TOKEN)


def audio_tokens(milliseconds: float) -> int:
    """Tokens of ``milliseconds`` of audio."""
    return math.ceil(milliseconds * AUDIO_TOKENS_PER_SECOND / 1000)


def spoken_tokens(chars: int) -> int:
    """Audio tokens of speaking ``chars`` characters of transcript."""
    return audio_tokens(chars * 1000 / SPOKEN_CHARS_PER_SECOND)


@dataclass(frozen=True)
class InputTokens:
    """What a response reads: text and audio tokens, and how many of each were cached."""

    text: int
    audio: int
    cached_text: int = 0
    cached_audio: int = 0

    @property
    def total(self) -> int:
        return self.text + self.audio

    def with_cache(self, previous_total: int) -> InputTokens:
        """This input with the previous response's input (whole blocks) counted cached."""
        cached = min(previous_total, self.total) // CACHE_BLOCK * CACHE_BLOCK
        cached_text = min(cached, self.text)
        return InputTokens(
            self.text, self.audio, cached_text, min(cached - cached_text, self.audio)
        )


def _item_text_and_audio(item: Mapping[str, Any], audio_ms: Mapping[str, float]) -> tuple[int, int]:
    """``(text characters, audio tokens)`` of one conversation item."""
    kind = item.get("type")
    if kind == "function_call":
        return len(str(item.get("name", ""))) + len(str(item.get("arguments", ""))), 0
    if kind == "function_call_output":
        return len(str(item.get("output", ""))), 0
    if kind != "message":
        return len(json.dumps(item)), 0
    chars = audio = 0
    for part in item.get("content") or []:
        part_type = part.get("type") if isinstance(part, Mapping) else None
        if part_type == "input_audio":
            audio += audio_tokens(audio_ms.get(str(item.get("id")), 0.0))
        elif part_type == "output_audio":
            audio += spoken_tokens(len(part.get("transcript") or ""))
        elif part_type in ("input_text", "output_text"):
            chars += len(part.get("text") or "")
        else:  # an image, or a part this emulator does not model: its JSON as text
            chars += len(json.dumps(part))
    return chars, audio


def input_tokens(
    instructions: str,
    tools: Any,
    conversation: Sequence[Mapping[str, Any]],
    audio_ms: Mapping[str, float],
) -> InputTokens:
    """The input of a response over ``conversation`` (nothing cached yet).

    Args:
        instructions: the session's (or response's) instructions.
        tools: the tool definitions the response may call (their JSON counts as text).
        conversation: the items before the response.
        audio_ms: how long each user audio item's committed buffer was, by item id.
    """
    chars = len(instructions) + (len(json.dumps(tools)) if tools else 0)
    audio = 0
    for item in conversation:
        item_chars, item_audio = _item_text_and_audio(item, audio_ms)
        chars += item_chars
        audio += item_audio
    return InputTokens(text=max(1, text_tokens(chars)), audio=audio)


def usage_object(
    inputs: InputTokens, text_chars: int, spoken_chars: int, *, audio: bool
) -> dict[str, Any]:
    """The ``usage`` block of a response (§3, ``response.done``).

    Args:
        inputs: what the response read.
        text_chars: message text (or transcript) and function-call arguments it produced.
        spoken_chars: the transcript it spoke (counted as audio only if ``audio``).
        audio: the response's output modality is audio.
    """
    output_text = text_tokens(text_chars)
    output_audio = spoken_tokens(spoken_chars) if audio else 0
    output_total = output_text + output_audio
    return {
        "total_tokens": inputs.total + output_total,
        "input_tokens": inputs.total,
        "output_tokens": output_total,
        "input_token_details": {
            "text_tokens": inputs.text,
            "audio_tokens": inputs.audio,
            "image_tokens": 0,
            "cached_tokens": inputs.cached_text + inputs.cached_audio,
            "cached_tokens_details": {
                "text_tokens": inputs.cached_text,
                "audio_tokens": inputs.cached_audio,
                "image_tokens": 0,
            },
        },
        "output_token_details": {"text_tokens": output_text, "audio_tokens": output_audio},
    }
