"""Input audio transcription: what the emulator "hears", and the events that report it.

The real service transcribes a committed user audio turn only when the session sets
``audio.input.transcription`` (off by default); the words arrive after the user item, as
``conversation.item.input_audio_transcription.delta`` events and one ``.completed`` (or one
``.failed``), shapes as in openai-python's ``conversation_item_input_audio_transcription_*``
types and recorded real traffic (pydantic-ai's realtime cassettes; docs/protocol.md §0).

The emulator recognises no speech: each committed audio turn of a call takes the next entry
of that call's :class:`HeardQueue` (filled by ``POST /_emulator/calls/{id}/heard``), else
``EmulatorSettings.heard_default``. Everything here is deterministic: token counts follow
:mod:`emulator._usage`'s rules, and no chance or clock is involved.
"""

from __future__ import annotations

import asyncio
import copy
import math
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from ._events import server_event
from ._usage import audio_tokens, text_tokens
from .errors import ClientEventError

MAX_HEARD_CHARS: Final = 4096  # one turn's words; longer is a test's mistake
MAX_HEARD_QUEUED: Final = 1000  # per call: a runaway test fails instead of growing memory
# The whisper models bill by duration (recorded: gpt-realtime-whisper → {"type": "duration"});
# the gpt-4o*-transcribe family bills tokens.
DURATION_MODELS: Final = frozenset({"whisper-1", "gpt-realtime-whisper"})
# whisper-1 sends the whole transcript as one delta (OpenAI's realtime transcription guide);
# the others stream word-sized deltas, punctuation apart (recorded traffic).
ONE_DELTA_MODELS: Final = frozenset({"whisper-1"})
LOGPROBS_INCLUDE: Final = "item.input_audio_transcription.logprobs"
DELAYS: Final = ("minimal", "low", "medium", "high", "xhigh")
# audio.input.transcription fields (the SDK's AudioTranscription) and their JSON types.
_FIELDS: Final[dict[str, type | tuple[type, ...]]] = {
    "model": str,
    "language": str,
    "prompt": str,
    "delay": str,
    "keywords": list,
    "languages": list,
}
_WORDS: Final = re.compile(r"\s*(?:\w+|[^\w\s]+)")


@dataclass(frozen=True)
class Heard:
    """A turn whose words are ``text``."""

    text: str


@dataclass(frozen=True)
class Spoken(Heard):
    """A turn a phone caller said (``POST /_emulator/calls/{id}/say``).

    Unlike a plain :class:`Heard` turn, the model understands its words whether or not the
    session transcribes input audio, as the real model hears speech (the scripted model
    otherwise reads only transcripts).
    """


@dataclass(frozen=True)
class Misheard:
    """A turn whose transcription fails; ``code`` is the ``error.code`` sent (may be null).

    The real OpenAI service was seen failing with ``{"type": "server_error", "code": null,
    "message": "Input transcription failed for item '<id>'.", "param": null}``
    (openai/openai-realtime-console#46), Azure with ``code: "DeploymentNotFound"``
    (recorded traffic).
    """

    code: str | None = None


Hearing = Heard | Misheard


class HeardQueue:
    """A call's queue of what its next committed audio turns say, first in first out."""

    def __init__(self, default_text: str) -> None:
        self._default = Heard(default_text)
        self._entries: deque[Hearing] = deque()

    def __len__(self) -> int:
        return len(self._entries)

    def extend(self, entries: Iterable[Hearing]) -> int:
        """Queue ``entries`` (the caller keeps to :data:`MAX_HEARD_QUEUED`); return the length."""
        self._entries.extend(entries)
        return len(self._entries)

    def take(self) -> Hearing:
        """The next turn's words: the oldest queued entry, else the default text."""
        return self._entries.popleft() if self._entries else self._default


# ---- session config ----------------------------------------------------------------------


def check_transcription(audio: Any, param: str) -> None:
    """Validate ``audio.input.transcription`` of a posted or updated session, if present.

    ``null`` turns transcription off; an object needs a non-empty string ``model`` and may
    carry the SDK's other fields ([inferred]: the API reference lists ``model`` first and
    every example sets it; the service's answer to a missing one is undocumented).

    Raises:
        ClientEventError: ``invalid_type``, ``missing_required_parameter``,
            ``unknown_parameter`` or ``invalid_value`` naming the exact field.
    """
    audio_input = audio.get("input") if isinstance(audio, dict) else None
    if not isinstance(audio_input, dict) or audio_input.get("transcription") is None:
        return
    config = audio_input["transcription"]
    if not isinstance(config, dict):
        raise ClientEventError("invalid_type", f"Invalid type for '{param}'.", param=param)
    for key, value in config.items():
        field = f"{param}.{key}"
        if key not in _FIELDS:
            raise ClientEventError(
                "unknown_parameter", f"Unknown parameter: '{field}'.", param=field
            )
        if value is not None and not isinstance(value, _FIELDS[key]):
            raise ClientEventError("invalid_type", f"Invalid type for '{field}'.", param=field)
        if isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise ClientEventError(
                "invalid_type", f"Invalid type for '{field}': expected strings.", param=field
            )
    if not config.get("model"):
        field = f"{param}.model"
        raise ClientEventError(
            "missing_required_parameter",
            f"Missing required parameter: '{field}'.",
            param=field,
        )
    if config.get("delay") is not None and config["delay"] not in DELAYS:
        field = f"{param}.delay"
        raise ClientEventError(
            "invalid_value",
            f"Invalid value for '{field}': expected one of {', '.join(DELAYS)}.",
            param=field,
        )


def normalize_transcription(audio_input: dict[str, Any]) -> None:
    """Fill ``language``/``prompt`` with ``null`` in an effective transcription config.

    The service echoes ``{"model": "gpt-realtime-whisper"}`` as ``{"model": …,
    "language": null, "prompt": null}`` in ``session.updated`` (recorded traffic).
    """
    config = audio_input.get("transcription")
    if isinstance(config, dict):
        audio_input["transcription"] = {
            "model": config.get("model"),
            "language": config.get("language"),
            "prompt": config.get("prompt"),
            **{k: v for k, v in config.items() if k not in ("model", "language", "prompt")},
        }


def transcription_config(session: Mapping[str, Any]) -> dict[str, Any] | None:
    """The session's transcription config (a copy), or ``None`` when transcription is off."""
    audio = session.get("audio")
    audio_input = audio.get("input") if isinstance(audio, Mapping) else None
    config = audio_input.get("transcription") if isinstance(audio_input, Mapping) else None
    return copy.deepcopy(config) if isinstance(config, dict) and config.get("model") else None


def wants_logprobs(session: Mapping[str, Any]) -> bool:
    include = session.get("include")
    return isinstance(include, list) and LOGPROBS_INCLUDE in include


# ---- events ------------------------------------------------------------------------------


def transcript_deltas(text: str, model: str) -> list[str]:
    """The deltas that stream ``text``; they concatenate back to it exactly."""
    if model in ONE_DELTA_MODELS:
        return [text]
    chunks = _WORDS.findall(text)
    if not chunks:
        return [text]
    chunks[-1] += text[len("".join(chunks)) :]
    return chunks


def transcription_usage(
    model: str, audio_ms: float, prompt: str | None, transcript: str
) -> dict[str, Any]:
    """The ``usage`` of a completed transcription.

    Whisper models: ``{"type": "duration", "seconds": N}``, the committed audio's length in
    whole seconds, rounded half up, at least 1 (recorded traffic shows whole seconds). Others:
    ``{"type": "tokens", …}`` with the committed audio at 10 tokens a second, the prompt
    and the transcript at one token per 4 characters (``emulator/_usage.py``).
    """
    if model in DURATION_MODELS:
        # Half up, not Python's half to even: 2.5 s bills 3.
        return {"type": "duration", "seconds": max(1, math.floor(audio_ms / 1000 + 0.5))}
    audio = audio_tokens(audio_ms)
    text = text_tokens(len(prompt or ""))
    output = text_tokens(len(transcript))
    return {
        "type": "tokens",
        "total_tokens": audio + text + output,
        "input_tokens": audio + text,
        "input_token_details": {"text_tokens": text, "audio_tokens": audio},
        "output_tokens": output,
    }


def _logprobs(pieces: Iterable[str]) -> list[dict[str, Any]]:
    # A deterministic "recogniser" is certain of every token: log probability 0.
    return [
        {"token": piece, "logprob": 0.0, "bytes": list(piece.encode("utf-8"))} for piece in pieces
    ]


def failed_event(item_id: str, code: str | None) -> dict[str, Any]:
    """``conversation.item.input_audio_transcription.failed`` for ``item_id``."""
    return server_event(
        "conversation.item.input_audio_transcription.failed",
        item_id=item_id,
        content_index=0,
        error={
            "type": "server_error",
            "code": code,
            "message": f"Input transcription failed for item '{item_id}'.",
            "param": None,
        },
    )


@dataclass(frozen=True)
class TranscriptionJob:
    """One committed turn to transcribe, with everything fixed at commit time.

    Attributes:
        item_id: the user audio item.
        hearing: what the turn said (or that it fails).
        config: the session's transcription config at the commit.
        audio_ms: the committed audio's length.
        logprobs: the session's ``include`` asks for transcription logprobs.
    """

    item_id: str
    hearing: Hearing
    config: Mapping[str, Any]
    audio_ms: float
    logprobs: bool = False


async def run_transcription(
    job: TranscriptionJob,
    emit: Callable[[dict[str, Any]], None],
    on_transcript: Callable[[str, str], None],
    *,
    delay: float,
    interval: float,
) -> None:
    """Emit a turn's transcription events, ``delay`` seconds after its commit.

    Deltas are ``interval`` apart; ``on_transcript(item_id, text)`` runs just before
    ``.completed`` goes out, so a retrieve after it sees the words.
    """
    await asyncio.sleep(delay)
    if isinstance(job.hearing, Misheard):
        emit(failed_event(job.item_id, job.hearing.code))
        return
    text = job.hearing.text
    model = str(job.config.get("model"))
    deltas = transcript_deltas(text, model)
    for index, delta in enumerate(deltas):
        if index:
            await asyncio.sleep(interval)
        extra = {"logprobs": _logprobs([delta])} if job.logprobs else {}
        emit(
            server_event(
                "conversation.item.input_audio_transcription.delta",
                item_id=job.item_id,
                content_index=0,
                delta=delta,
                **extra,
            )
        )
    on_transcript(job.item_id, text)
    prompt = job.config.get("prompt")
    usage = transcription_usage(
        model, job.audio_ms, prompt if isinstance(prompt, str) else None, text
    )
    extra = {"logprobs": _logprobs(deltas)} if job.logprobs else {}
    emit(
        server_event(
            "conversation.item.input_audio_transcription.completed",
            item_id=job.item_id,
            content_index=0,
            transcript=text,
            usage=usage,
            **extra,
        )
    )
