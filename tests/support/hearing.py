"""Tell the emulator what a call's next voice turns say (its input audio transcription).

The emulator recognises no speech: each committed user audio turn takes the next text
queued with ``POST /_emulator/calls/{call_id}/heard`` (else ``EmulatorSettings.heard_default``),
and a session with ``audio.input.transcription`` set reports it in
``conversation.item.input_audio_transcription.delta``/``.completed`` events
(emulator/README.md "Input audio transcription").

Typical use: open the call with a gated microphone, ``await hear(http, emulator, call_id,
"lookup_order 42")``, then ``gate.set()`` so the turn is spoken after the words are queued::

    gate = asyncio.Event()
    mic = ScriptedMicTrack([silence(0.3), speech_like_signal(0.8), silence(0.6)], gate=gate)
"""

from __future__ import annotations

from typing import Any

import aiohttp

from .servers import RunningEmulator, request_json

# A transcription config per usage kind: whisper-1 bills seconds, the others tokens.
WHISPER = {"model": "whisper-1"}
GPT_4O_TRANSCRIBE = {"model": "gpt-4o-transcribe"}


def transcribing(config: dict[str, Any] | None, **session: Any) -> dict[str, Any]:
    """A realtime session config whose input audio is transcribed with ``config``."""
    return {"type": "realtime", "audio": {"input": {"transcription": config}}, **session}


async def hear(
    http: aiohttp.ClientSession, emulator: RunningEmulator, call_id: str, *texts: str
) -> int:
    """Queue ``texts`` as what the call's next audio turns say, in order; return the number
    of turns now queued (asserts 200)."""
    body = {"text": list(texts)}
    status, reply = await request_json(
        http, emulator, "POST", f"/_emulator/calls/{call_id}/heard", body
    )
    if status != 200:
        raise AssertionError(f"/heard answered {status}: {reply}")
    return int(reply["queued"])


async def mishear(
    http: aiohttp.ClientSession,
    emulator: RunningEmulator,
    call_id: str,
    code: str | None = None,
) -> int:
    """Make the call's next queued audio turn fail to transcribe (``error.code`` = ``code``)."""
    fail: Any = True if code is None else {"code": code}
    status, reply = await request_json(
        http, emulator, "POST", f"/_emulator/calls/{call_id}/heard", {"fail": fail}
    )
    if status != 200:
        raise AssertionError(f"/heard answered {status}: {reply}")
    return int(reply["queued"])
