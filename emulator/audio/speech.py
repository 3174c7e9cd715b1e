"""Model speech: text to 48 kHz mono int16 clips, with ``espeak-ng`` or a speech-like tone.

``espeak-ng`` runs as a bounded subprocess (no shell, text on stdin, a timeout, a cap on
its output). When it is missing or fails, :func:`tone_clip` stands in: one voiced burst
per word, which is audible, has speech-like level and rhythm, and is deterministic.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import math
import re
import shutil
import wave
import zlib
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
from numpy.typing import NDArray

logger = logging.getLogger(__name__)

SAMPLE_RATE: Final = 48000
MAX_CLIP_S: Final = 30.0
MIN_SPEED: Final = 0.25  # OpenAI's range for audio.output.speed
MAX_SPEED: Final = 1.5

ESPEAK_BINARY: Final = "espeak-ng"
ESPEAK_WPM: Final = 175  # espeak-ng's own default rate, used at speed 1.0
ESPEAK_MAX_CHARS: Final = 600
ESPEAK_TIMEOUT_S: Final = 10.0
ESPEAK_MAX_BYTES: Final = 16 * 1024 * 1024  # 30 s of 22 kHz mono s16 is ~1.3 MB
REAP_TIMEOUT_S: Final = 1.0

# The tone pattern: one burst per word, 150–250 ms by word length, 80 ms between words and
# 250 ms after , . ; : ? !, at about -14 dBFS RMS.
TONE_GAP_MS: Final = 80
TONE_PAUSE_MS: Final = 250
TONE_RMS_DBFS: Final = -14.0

Engine = Literal["auto", "espeak-ng", "tone"]


@dataclass(frozen=True)
class Clip:
    """A piece of model speech.

    Attributes:
        samples: mono int16 at :data:`SAMPLE_RATE`.
        source: what made it: ``"espeak-ng"`` or ``"tone"``.
    """

    samples: NDArray[np.int16]
    source: Literal["espeak-ng", "tone"]

    @property
    def duration_ms(self) -> int:
        return self.samples.size * 1000 // SAMPLE_RATE


def _clamp_speed(speed: float) -> float:
    if not math.isfinite(speed):
        return 1.0
    return min(MAX_SPEED, max(MIN_SPEED, speed))


def _burst(word: str, duration_s: float) -> NDArray[np.float64]:
    """One voiced "syllable": a gliding harmonic tone under a smooth envelope, unit RMS."""
    seed = zlib.crc32(word.lower().encode())  # stable across runs, unlike hash()
    f0 = 120.0 + seed % 131  # 120–250 Hz, the range of adult voices
    t = np.arange(max(1, int(duration_s * SAMPLE_RATE))) / SAMPLE_RATE
    # A falling pitch (about 10 % over the burst) sounds like a stressed syllable.
    phase = 2 * np.pi * f0 * (t - 0.05 * t * t / max(duration_s, 1e-3))
    signal = np.zeros_like(t)
    for harmonic in range(1, 7):  # a 1/k spectrum, roughly that of a glottal pulse train
        signal += np.sin(harmonic * phase) / harmonic
    attack = np.minimum(1.0, t / 0.02)
    release = np.minimum(1.0, (duration_s - t) / 0.04)
    shaped: NDArray[np.float64] = signal * np.clip(np.minimum(attack, release), 0.0, 1.0)
    rms = float(np.sqrt(np.mean(np.square(shaped))))
    return shaped / rms if rms > 0 else shaped


def tone_clip(text: str, *, speed: float = 1.0) -> Clip:
    """A deterministic, speech-like stand-in for ``text`` (see the module constants).

    Durations are divided by ``speed`` (clamped to 0.25–1.5); the clip is capped at
    :data:`MAX_CLIP_S`. Text without words gives an empty clip.
    """
    speed = _clamp_speed(speed)
    target = 32768.0 * 10 ** (TONE_RMS_DBFS / 20)
    limit = int(MAX_CLIP_S * SAMPLE_RATE)
    parts: list[NDArray[np.float64]] = []
    size = 0
    gap_ms = 0
    for token in text.split():
        word = re.sub(r"\W", "", token)
        if not word:
            continue
        gap = np.zeros(int(gap_ms / 1000 / speed * SAMPLE_RATE))
        burst = _burst(word, (0.15 + 0.01 * min(len(word), 10)) / speed) * target
        parts += [gap, burst]
        size += gap.size + burst.size
        if size >= limit:
            break
        gap_ms = TONE_PAUSE_MS if token[-1] in ",.;:?!" else TONE_GAP_MS
    if not parts:
        return Clip(np.zeros(0, dtype=np.int16), "tone")
    joined = np.concatenate(parts)[:limit]
    return Clip(np.clip(np.round(joined), -32768, 32767).astype(np.int16), "tone")


def espeak_available() -> bool:
    """Whether the ``espeak-ng`` binary is on ``PATH``."""
    return shutil.which(ESPEAK_BINARY) is not None


async def synthesize(text: str, *, speed: float = 1.0, engine: Engine = "auto") -> Clip:
    """Speak ``text`` as a :class:`Clip`.

    ``"auto"`` and ``"espeak-ng"`` run espeak-ng (text truncated to
    :data:`ESPEAK_MAX_CHARS`, at ``175 * speed`` words per minute); ``"tone"`` always uses
    :func:`tone_clip`. Any espeak-ng failure (binary missing, non-zero exit, timeout,
    output too large or not WAV) logs one warning and falls back to :func:`tone_clip`.
    Empty text gives an empty ``"tone"`` clip without running anything.

    Cancellation-safe: a cancelled call kills and reaps the subprocess.
    """
    speed = _clamp_speed(speed)
    if not text.strip():
        return Clip(np.zeros(0, dtype=np.int16), "tone")
    if engine == "tone":
        return tone_clip(text, speed=speed)
    try:
        samples = await _run_espeak(text[:ESPEAK_MAX_CHARS], speed)
    except (OSError, TimeoutError, ValueError) as exc:
        logger.warning("espeak-ng failed (%s); using the tone fallback", exc)
        return tone_clip(text, speed=speed)
    return Clip(samples[: int(MAX_CLIP_S * SAMPLE_RATE)], "espeak-ng")


async def _run_espeak(text: str, speed: float) -> NDArray[np.int16]:
    binary = shutil.which(ESPEAK_BINARY)
    if binary is None:
        raise FileNotFoundError(f"{ESPEAK_BINARY} not found on PATH")
    wpm = min(450, max(80, round(ESPEAK_WPM * speed)))
    # -b 1: the text is UTF-8. No -m: markup in the text is spoken, never interpreted.
    process = await asyncio.create_subprocess_exec(
        binary,
        "--stdin",
        "--stdout",
        "-b",
        "1",
        "-s",
        str(wpm),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(ESPEAK_TIMEOUT_S):
            output = await _exchange(process, text.encode())
            code = await process.wait()
    except TimeoutError:
        raise TimeoutError(f"no result within {ESPEAK_TIMEOUT_S}s") from None
    finally:
        await _reap(process)
    if code != 0:
        raise OSError(f"exit status {code}")
    return _decode_wav(output)


async def _reap(process: asyncio.subprocess.Process) -> None:
    """Kill the process if it still runs and wait for it and its stdout to close."""
    if process.returncode is None:
        process.kill()
    # asyncio closes the subprocess transport only once stdout reaches EOF; a pipe left
    # half-read would leak it (a ResourceWarning). After the kill the rest is at most a
    # pipe's worth; the timeout covers a grandchild that holds the pipe open.
    assert process.stdout is not None
    with contextlib.suppress(TimeoutError, OSError):
        async with asyncio.timeout(REAP_TIMEOUT_S):
            while await process.stdout.read(64 * 1024):
                pass
    await process.wait()


async def _exchange(process: asyncio.subprocess.Process, data: bytes) -> bytes:
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(data)
    try:
        await process.stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # it exited without reading its input; its status and output tell why
    finally:
        process.stdin.close()
    chunks: list[bytes] = []
    size = 0
    while chunk := await process.stdout.read(64 * 1024):
        size += len(chunk)
        if size > ESPEAK_MAX_BYTES:
            raise ValueError(f"output larger than {ESPEAK_MAX_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _decode_wav(data: bytes) -> NDArray[np.int16]:
    """WAV bytes to mono int16 at :data:`SAMPLE_RATE`.

    espeak-ng writes to a pipe, so its header claims an unknown (huge) length; frames are
    read up to what the bytes hold.
    """
    if not data:
        raise ValueError("no WAV output")
    try:
        with wave.open(io.BytesIO(data)) as reader:
            channels = reader.getnchannels()
            width = reader.getsampwidth()
            rate = reader.getframerate()
            raw = reader.readframes(len(data))
    except (wave.Error, EOFError) as exc:
        raise ValueError(f"output is not a WAV file: {exc!r}") from exc
    if rate <= 0 or channels <= 0:
        raise ValueError("WAV header without a rate or channels")
    match width:
        case 1:
            pcm = (np.frombuffer(raw, dtype=np.uint8).astype(np.float64) - 128.0) * 256.0
        case 2:
            pcm = np.frombuffer(raw, dtype="<i2").astype(np.float64)
        case 4:
            pcm = np.frombuffer(raw, dtype="<i4").astype(np.float64) / 65536.0
        case _:
            raise ValueError(f"unsupported WAV sample width {width}")
    pcm = pcm[: pcm.size - pcm.size % channels].reshape(-1, channels).mean(axis=1)
    if pcm.size == 0:
        raise ValueError("WAV without audio")
    return _resample(pcm, rate)


def _resample(pcm: NDArray[np.float64], rate: int) -> NDArray[np.int16]:
    if rate != SAMPLE_RATE:
        count = max(1, round(pcm.size * SAMPLE_RATE / rate))
        # Linear interpolation: no anti-aliasing, which is inaudible for upsampling speech.
        positions = np.arange(count) * (rate / SAMPLE_RATE)
        pcm = np.interp(positions, np.arange(pcm.size), pcm)
    return np.clip(np.round(pcm), -32768, 32767).astype(np.int16)
