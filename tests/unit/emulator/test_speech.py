"""Model speech: the tone fallback, espeak-ng, and falling back when espeak-ng fails."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from emulator.audio import (
    SAMPLE_RATE,
    EnergyVad,
    VadConfig,
    espeak_available,
    speech,
    synthesize,
    tone_clip,
)
from tests.conftest import skip_or_fail
from tests.support.audio import rms_dbfs

TEXT = "Your order forty two has shipped and should arrive on Tuesday."


def require_espeak() -> None:
    if not espeak_available():
        skip_or_fail("espeak-ng is not installed")


def test_tone_clip_is_audible_and_speech_like() -> None:
    clip = tone_clip(TEXT)
    assert clip.source == "tone"
    assert clip.samples.dtype == np.int16 and clip.samples.ndim == 1
    assert rms_dbfs(clip.samples) > -30
    words = len(TEXT.split())
    # one 150–250 ms burst per word with ~80 ms gaps
    assert words * 0.15 * 1000 < clip.duration_ms < words * 0.35 * 1000
    # the gaps between words are silent
    frames = clip.samples[: clip.samples.size // 480 * 480].reshape(-1, 480)
    levels = [rms_dbfs(frame) for frame in frames]
    assert min(levels) < -100 and max(levels) > -20


def test_tone_clip_is_deterministic_and_grows_with_words() -> None:
    assert np.array_equal(tone_clip(TEXT).samples, tone_clip(TEXT).samples)
    assert tone_clip("one two three").duration_ms > tone_clip("one").duration_ms
    assert tone_clip("one two", speed=0.5).duration_ms > tone_clip("one two").duration_ms
    assert tone_clip("one two", speed=1.5).duration_ms < tone_clip("one two").duration_ms


def test_tone_clip_of_no_words_is_empty_and_long_text_is_capped() -> None:
    assert tone_clip("").samples.size == 0
    assert tone_clip("  ... !! ").duration_ms == 0
    assert tone_clip("word " * 1000).duration_ms == speech.MAX_CLIP_S * 1000


def test_tone_clip_is_heard_by_the_vad() -> None:
    clip = tone_clip("hello there")
    events = EnergyVad(VadConfig()).feed(
        np.concatenate([clip.samples, np.zeros(SAMPLE_RATE, dtype=np.int16)]), SAMPLE_RATE
    )
    assert len(events) == 2


async def test_synthesize_empty_text_runs_nothing() -> None:
    clip = await synthesize("   ")
    assert clip.samples.size == 0


async def test_synthesize_tone_engine() -> None:
    clip = await synthesize("hello there", engine="tone")
    assert clip.source == "tone"
    assert np.array_equal(clip.samples, tone_clip("hello there").samples)


@pytest.mark.parametrize("engine", ["auto", "espeak-ng"])
async def test_synthesize_with_espeak(engine: speech.Engine) -> None:
    require_espeak()
    clip = await synthesize(TEXT, engine=engine)
    assert clip.source == "espeak-ng"
    assert clip.samples.dtype == np.int16
    assert rms_dbfs(clip.samples) > -35
    # 11 words at 175 words per minute is about 3.8 s; espeak adds short pauses.
    assert 2000 < clip.duration_ms < 7000
    faster = await synthesize(TEXT, engine=engine, speed=1.5)
    assert faster.duration_ms < clip.duration_ms * 0.85


async def test_synthesize_with_espeak_truncates_long_text() -> None:
    require_espeak()
    clip = await synthesize("a b c d e f g h i j " * 200)
    assert clip.source == "espeak-ng"
    assert clip.duration_ms <= speech.MAX_CLIP_S * 1000


def fake_binary(tmp_path: Path, script: str) -> str:
    path = tmp_path / "fake-espeak"
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.mark.parametrize(
    ("binary", "reason"),
    [
        ("espeak-ng-that-does-not-exist", "not found"),
        ("false", "exit status 1"),
        ("true", "WAV"),  # no output at all
    ],
)
@pytest.mark.parametrize("engine", ["auto", "espeak-ng"])
async def test_synthesize_falls_back_to_tone_with_one_warning(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    binary: str,
    reason: str,
    engine: speech.Engine,
) -> None:
    monkeypatch.setattr(speech, "ESPEAK_BINARY", binary)
    with caplog.at_level(logging.WARNING, logger="emulator.audio.speech"):
        clip = await synthesize("hello there", engine=engine)
    assert clip.source == "tone"
    assert np.array_equal(clip.samples, tone_clip("hello there").samples)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert reason.lower() in warnings[0].getMessage().lower()


async def test_synthesize_kills_a_hung_espeak(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setattr(speech, "ESPEAK_BINARY", fake_binary(tmp_path, "exec sleep 30"))
    monkeypatch.setattr(speech, "ESPEAK_TIMEOUT_S", 0.3)
    with caplog.at_level(logging.WARNING, logger="emulator.audio.speech"):
        clip = await synthesize("hello")
    assert clip.source == "tone"
    assert "no result within 0.3s" in caplog.text


async def test_synthesize_rejects_oversized_output(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setattr(speech, "ESPEAK_BINARY", fake_binary(tmp_path, "exec cat /dev/zero"))
    monkeypatch.setattr(speech, "ESPEAK_MAX_BYTES", 256 * 1024)
    with caplog.at_level(logging.WARNING, logger="emulator.audio.speech"):
        clip = await synthesize("hello")
    assert clip.source == "tone"
    assert "output larger than" in caplog.text


async def test_cancelling_synthesize_kills_espeak(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A cancelled synthesis leaves no process behind (it is killed and reaped)."""
    pid_file = tmp_path / "pid"
    script = f"echo $$ > {pid_file}\nexec sleep 30"
    monkeypatch.setattr(speech, "ESPEAK_BINARY", fake_binary(tmp_path, script))
    task = asyncio.create_task(synthesize("hello"))
    async with asyncio.timeout(5):
        for _ in range(250):
            if pid_file.exists() and pid_file.read_text().strip():
                break
            await asyncio.sleep(0.02)
    pid = int(pid_file.read_text())
    task.cancel()
    async with asyncio.timeout(5):
        with pytest.raises(asyncio.CancelledError):
            await task
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
